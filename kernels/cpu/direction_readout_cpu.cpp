// LocalMamba's direction readout of an unmerged K-direction scan output y (batch, L, K, E), for CPUs, loaded by
// vision2d/ops/direction_readout_cpu.py through ctypes; math in vision2d/ops/direction_readout_ref.py:
//   out[b, l, c] = LayerNorm(sum_k gate[b, k, c] y[b, l, k, :])[c] * silu(z[b, l, c])
// Every tensor is contiguous in the type Real (float, or double for float64 inputs), but for y's batch stride
// (y_batch_stride >= L K E: the first L pixels of a longer, padded scan output): gate (batch, K, E), z and out
// (batch, L, E), norm weights and biases (E). LayerNorm statistics are two-pass (mean, then the mean square of the
// deviations) over a row held in cache. Build: g++ -O3 -march=native -fopenmp -ffp-contract=fast -std=c++17 -shared
// -fPIC.
//
// Tasks are bands of pixels of one batch item; each pixel's gated sum is normalised and gated while in cache and
// written once.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "vector_math.h"

namespace {

// values below which a call runs on one thread
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

template <typename Real>
int64_t blocks_of(int64_t channels) {
  return (channels + kLanes<Real> - 1) / kLanes<Real>;
}

template <typename Real>
inline int count_of(int64_t channels, int64_t block) {
  return int(std::min<int64_t>(kLanes<Real>, channels - block * kLanes<Real>));
}

// bands of pixels per batch item: a few per thread at batch 1
int64_t bands_for(int threads, int64_t batch, int64_t length) {
  return std::clamp<int64_t>((4 * threads + batch - 1) / batch, 1, std::max<int64_t>(1, length));
}

template <typename Real>
int readout(const Real* y, int64_t y_batch_stride, const Real* gate, const Real* norm_weight, const Real* norm_bias,
            Real eps, const Real* z, Real* out, int64_t batch, int64_t length, int64_t K, int64_t E, int num_threads) {
  const int threads = batch * length * K * E < kMinParallelWork ? 1 : std::max(1, num_threads);
  const int64_t bands = bands_for(threads, batch, length), band_pixels = (length + bands - 1) / bands;
  const int64_t tasks = batch * bands, blocks = blocks_of<Real>(E);
  const Vec<Real> one = splat<Real>(1);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / bands, begin = task % bands * band_pixels, end = std::min(length, begin + band_pixels);
    const Real* g = gate + b * K * E;
    for (int64_t l = begin; l < end; ++l) {
      const Real* rows = y + b * y_batch_stride + l * K * E;
      Real* target = out + (b * length + l) * E;
      for (int64_t i = 0; i < blocks; ++i) {  // the gated sum, stored, then normalised in place (in cache)
        const int count = count_of<Real>(E, i);
        const int64_t c = i * kLanes<Real>;
        Vec<Real> sum{};
        for (int64_t k = 0; k < K; ++k) sum += load(g + k * E + c, count) * load(rows + k * E + c, count);
        store(target + c, sum, count);
      }
      Real mean, rstd;
      row_mean_rstd(target, E, eps, &mean, &rstd);
      const Real* gate_z = z + (b * length + l) * E;
      for (int64_t i = 0; i < blocks; ++i) {
        const int count = count_of<Real>(E, i);
        const int64_t c = i * kLanes<Real>;
        Vec<Real> v = (load(target + c, count) - mean) * rstd;
        if (norm_weight) v *= load(norm_weight + c, count);
        if (norm_bias) v += load(norm_bias + c, count);
        const Vec<Real> zc = load(gate_z + c, count);
        store(target + c, v * zc / (one + vexp2(zc * Real(-kLog2e))), count);  // * silu(z)
      }
    }
  }
  return 0;
}

}  // namespace

extern "C" {

#define DEFINE_DIRECTION_ATTENTION(SUFFIX, REAL)                                                                   \
  int direction_readout_##SUFFIX(const REAL* y, int64_t y_batch_stride, const REAL* gate, const REAL* norm_weight, \
                                 const REAL* norm_bias, double eps, const REAL* z, REAL* out, int64_t batch,       \
                                 int64_t length, int64_t K, int64_t E, int num_threads) {                          \
    return readout<REAL>(y, y_batch_stride, gate, norm_weight, norm_bias, REAL(eps), z, out, batch, length, K, E,  \
                         num_threads);                                                                             \
  }

DEFINE_DIRECTION_ATTENTION(f32, float)
DEFINE_DIRECTION_ATTENTION(f64, double)

}  // extern "C"
