// Depthwise k x k convolution of channels-last maps for CPUs, loaded by vision2d/ops/depthwise_conv_cpu.py through
// ctypes; math in vision2d/ops/depthwise_conv_ref.py:
//   out[b, i, j, c] = act(bias[c] + sum_{a, d < k} weight[c, a, d] x[b, s i + a - p, s j + d - p, c]
//                         (+ x[b, i, j, c] if residual)),
// p = k // 2, zero padding, stride s, act none / ReLU / SiLU / GELU (exact, erf). x (batch, H, W, C), out
// (batch, Ho, Wo, C) with Ho = (H - 1) / s + 1, weight (C, k, k) (nn.Conv2d's (C, 1, k, k)), bias (C) or null, all
// contiguous in the type Real (float, or double for float64 inputs). Only the forward is native: the backward (the
// caller's) recomputes the pre-activation with it. Build: g++ -O3 -march=native -fopenmp -ffp-contract=fast -std=c++17
// -shared -fPIC.
//
// A vector holds kLanes consecutive channels. Tasks (batch item, channel block, band of output rows) hold the block's
// k * k tap weights in a small array; each output pixel sums its taps in registers and is stored once, so the map is
// read once per tap from cache and written once. Small maps run on one thread (a parallel region costs more than
// their few thousand vector operations).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "vector_math.h"

namespace {

enum Activation { kNone = 0, kRelu = 1, kSilu = 2, kGelu = 3 };

// multiply-adds below which a call runs on one thread
constexpr int64_t kMinParallelWork = int64_t(1) << 17;

struct ConvShape {
  int64_t batch, height, width, channels, kernel, stride;
  int64_t pad() const { return kernel / 2; }
  int64_t out_height() const { return (height - 1) / stride + 1; }
  int64_t out_width() const { return (width - 1) / stride + 1; }
};

// erf(x) for float: x P(x^2) / Q(x^2) on x clamped to [-4, 4] (erf is +-1 in float beyond), 4e-7 absolute error
inline Vec<float> verf(Vec<float> x) {
  const Vec<float> lo = splat(-4.0f), hi = splat(4.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const Vec<float> x2 = x * x;
  Vec<float> p = splat(-2.72614225801306e-10f);
  for (const float c : {2.77068142495902e-08f, -2.10102402082508e-06f, -5.69250639462346e-05f,
                        -7.34990630326855e-04f, -2.95459980854025e-03f, -1.60960333262415e-02f})
    p = p * x2 + c;
  Vec<float> q = splat(-1.45660718464996e-05f);
  for (const float c : {-2.13374055278905e-04f, -1.68282697438203e-03f, -7.37332916720468e-03f,
                        -1.42647390514189e-02f})
    q = q * x2 + c;
  return x * p / q;
}

inline Vec<double> verf(Vec<double> x) {
  for (int l = 0; l < kLanes<double>; ++l) x[l] = std::erf(x[l]);
  return x;
}

template <typename Real>
inline Vec<Real> activate(Vec<Real> z, int activation) {
  const Vec<Real> zero{}, one = splat<Real>(1);
  switch (activation) {
    case kRelu:
      return z > zero ? z : zero;
    case kSilu:  // z / (1 + exp(-z)); exp(-z) saturates at 2^127 for z < -88, where z / 2^127 is 0 in float
      return z / (one + vexp2(z * Real(-kLog2e)));
    case kGelu:
      return Real(0.5) * z * (one + verf(z * Real(0.70710678118654752440)));
    default:
      return z;
  }
}

// Output pixels of a row summed together in the interior: their tap sums are independent chains that the CPU
// interleaves (one pixel at a time waits on the multiply-add latency at every tap)
constexpr int kPixels = 4;

// One task: output rows [row_begin, row_end) of batch item b for the channels [first, first + count); Full: count is
// kLanes (plain vector loads and stores)
template <typename Real, int K, bool Full>
void conv_rows(const ConvShape& s, const Real* x, const Vec<Real>* w, Vec<Real> bias, Real* out, int64_t b,
               int64_t row_begin, int64_t row_end, int64_t first, int count, int activation, bool residual) {
  const int k = K > 0 ? K : int(s.kernel);
  if (Full) count = kLanes<Real>;
  const int64_t H = s.height, W = s.width, C = s.channels, p = s.pad(), st = s.stride, Wo = s.out_width();
  // columns j whose taps are all inside the row: j st - p >= 0 and j st - p + k <= W
  const int64_t inner_begin = std::min(Wo, (p + st - 1) / st);
  const int64_t inner_end = W - k + p < 0 ? inner_begin : std::clamp<int64_t>((W - k + p) / st + 1, inner_begin, Wo);
  const Real* image = x + b * H * W * C + first;
  for (int64_t i = row_begin; i < row_end; ++i) {
    const int64_t top = i * st - p;  // input row of tap row a = 0
    const int a0 = int(std::max<int64_t>(0, -top)), a1 = int(std::min<int64_t>(k, H - top));
    Real* target = out + (b * s.out_height() + i) * Wo * C + first;
    auto finish = [&](int64_t j, Vec<Real> acc) {
      if (residual) acc += load(image + (i * W + j) * C, count);
      store(target + j * C, activate<Real>(acc, activation), count);
    };
    auto edge_pixel = [&](int64_t j) {
      const int64_t left = j * st - p;  // input column of tap column d = 0
      const int d0 = int(std::max<int64_t>(0, -left)), d1 = int(std::min<int64_t>(k, W - left));
      Vec<Real> acc = bias;
      for (int a = a0; a < a1; ++a) {
        const Real* source = image + ((top + a) * W + left) * C;
        for (int d = d0; d < d1; ++d) acc += w[a * k + d] * load(source + d * C, count);
      }
      finish(j, acc);
    };
    int64_t j = 0;
    for (; j < inner_begin; ++j) edge_pixel(j);
    for (; j + kPixels <= inner_end; j += kPixels) {
      Vec<Real> acc[kPixels];
      for (int q = 0; q < kPixels; ++q) acc[q] = bias;
      for (int a = a0; a < a1; ++a) {
        const Real* source = image + ((top + a) * W + j * st - p) * C;
        for (int d = 0; d < k; ++d) {
          const Vec<Real> tap = w[a * k + d];
          for (int q = 0; q < kPixels; ++q) acc[q] += tap * load(source + (q * st + d) * C, count);
        }
      }
      for (int q = 0; q < kPixels; ++q) finish(j + q, acc[q]);
    }
    for (; j < Wo; ++j) edge_pixel(j);
  }
}

template <typename Real>
int conv_forward(const ConvShape& s, const Real* x, const Real* weight, const Real* bias, Real* out, int activation,
                 bool residual, int num_threads) {
  constexpr int lanes = kLanes<Real>;
  const int64_t C = s.channels, taps = s.kernel * s.kernel, Ho = s.out_height(), Wo = s.out_width();
  const int64_t blocks = (C + lanes - 1) / lanes;
  const int64_t work = s.batch * Ho * Wo * C * taps;
  const int threads = work < kMinParallelWork ? 1 : std::max(1, num_threads);
  // bands of rows so that every thread has a few tasks at batch 1
  const int64_t bands = std::clamp<int64_t>((4 * threads + s.batch * blocks - 1) / (s.batch * blocks), 1, Ho);
  const int64_t band_rows = (Ho + bands - 1) / bands, tasks = s.batch * blocks * bands;
  int failed = 0;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t band = task % bands, block = task / bands % blocks, b = task / bands / blocks;
    const int64_t first = block * lanes, row_begin = band * band_rows, row_end = std::min(Ho, row_begin + band_rows);
    const int count = int(std::min<int64_t>(lanes, C - first));
    if (row_begin >= row_end) continue;
    Vec<Real> small[49];
    std::vector<Vec<Real>> large;
    Vec<Real>* w = small;
    if (taps > 49) {
      try {
        large.resize(taps);
      } catch (const std::bad_alloc&) {
#pragma omp atomic write
        failed = 1;
        continue;
      }
      w = large.data();
    }
    for (int64_t t = 0; t < taps; ++t) {  // tap t of the block's channels (weight is (C, k * k))
      w[t] = Vec<Real>{};
      for (int l = 0; l < count; ++l) w[t][l] = weight[(first + l) * taps + t];
    }
    const Vec<Real> b_vec = bias ? load(bias + first, count) : Vec<Real>{};
    const bool full = count == lanes;
    switch (s.kernel * 2 + full) {
#define CASE(K)                                                                                               \
  case 2 * K + 1:                                                                                             \
    conv_rows<Real, K, true>(s, x, w, b_vec, out, b, row_begin, row_end, first, count, activation, residual);  \
    break;                                                                                                    \
  case 2 * K:                                                                                                 \
    conv_rows<Real, K, false>(s, x, w, b_vec, out, b, row_begin, row_end, first, count, activation, residual); \
    break;
      CASE(3)
      CASE(5)
      CASE(7)
#undef CASE
      default:
        conv_rows<Real, 0, false>(s, x, w, b_vec, out, b, row_begin, row_end, first, count, activation, residual);
    }
  }
  return failed;
}

}  // namespace

extern "C" {

#define DEFINE_DEPTHWISE_CONV(SUFFIX, REAL)                                                                        \
  int depthwise_conv_forward_##SUFFIX(const REAL* x, const REAL* weight, const REAL* bias, REAL* out,             \
                                      int64_t batch, int64_t height, int64_t width, int64_t channels,             \
                                      int64_t kernel, int64_t stride, int activation, int residual,               \
                                      int num_threads) {                                                          \
    const ConvShape s{batch, height, width, channels, kernel, stride};                                           \
    return conv_forward<REAL>(s, x, weight, bias, out, activation, residual != 0, num_threads);                   \
  }

DEFINE_DEPTHWISE_CONV(f32, float)
DEFINE_DEPTHWISE_CONV(f64, double)

}  // extern "C"
