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
// A vector holds kLanes consecutive channels. The weights are first laid out as one vector per channel block and tap.
// Tasks are output rows (split into groups of channel blocks when rows are few); a row runs pixel by pixel and, within
// a pixel, channel block by channel block, so the input is read along its contiguous channels (a task per channel
// block strided through the map by C and ran at the memory's latency); each output pixel sums its taps in registers
// and is stored once. Small maps run on one thread (a parallel region costs more than their few thousand vector
// operations).
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
  x = clamp(x, -4.0f, 4.0f);
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

// Output row i of batch item b for channel blocks [block_begin, block_end): pixel by pixel (kPixels at a time in the
// interior), channel block by channel block within a pixel, so the input is read along its contiguous channels.
// wt: the weights as (blocks, k * k) vectors, biases (blocks) vectors. Full: every block has kLanes channels.
template <typename Real, int K, bool Full>
void conv_row(const ConvShape& s, const Real* x, const Vec<Real>* wt, const Vec<Real>* biases, Real* out, int64_t b,
              int64_t i, int64_t block_begin, int64_t block_end, int activation, bool residual) {
  constexpr int lanes = kLanes<Real>;
  const int k = K > 0 ? K : int(s.kernel), taps = k * k;
  const int64_t H = s.height, W = s.width, C = s.channels, p = s.pad(), st = s.stride, Wo = s.out_width();
  // columns j whose taps are all inside the row: j st - p >= 0 and j st - p + k <= W
  const int64_t inner_begin = std::min(Wo, (p + st - 1) / st);
  const int64_t inner_end = W - k + p < 0 ? inner_begin : std::clamp<int64_t>((W - k + p) / st + 1, inner_begin, Wo);
  const Real* image = x + b * H * W * C;
  const int64_t top = i * st - p;  // input row of tap row a = 0
  const int a0 = int(std::max<int64_t>(0, -top)), a1 = int(std::min<int64_t>(k, H - top));
  Real* target = out + (b * s.out_height() + i) * Wo * C;
  auto count_of = [&](int64_t block) { return Full ? lanes : int(std::min<int64_t>(lanes, C - block * lanes)); };
  auto finish = [&](int64_t j, int64_t c, int count, Vec<Real> acc) {
    if (residual) acc += load(image + (i * W + j) * C + c, count);
    store(target + j * C + c, activate<Real>(acc, activation), count);
  };
  auto edge_pixel = [&](int64_t j) {
    const int64_t left = j * st - p;  // input column of tap column d = 0
    const int d0 = int(std::max<int64_t>(0, -left)), d1 = int(std::min<int64_t>(k, W - left));
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t c = block * lanes;
      const int count = count_of(block);
      const Vec<Real>* w = wt + block * taps;
      Vec<Real> acc = biases[block];
      for (int a = a0; a < a1; ++a) {
        const Real* source = image + ((top + a) * W + left) * C + c;
        for (int d = d0; d < d1; ++d) acc += w[a * k + d] * load(source + d * C, count);
      }
      finish(j, c, count, acc);
    }
  };
  int64_t j = 0;
  for (; j < inner_begin; ++j) edge_pixel(j);
  for (; j + kPixels <= inner_end; j += kPixels) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t c = block * lanes;
      const int count = count_of(block);
      const Vec<Real>* w = wt + block * taps;
      Vec<Real> acc[kPixels];
      for (int q = 0; q < kPixels; ++q) acc[q] = biases[block];
      for (int a = a0; a < a1; ++a) {
        const Real* source = image + ((top + a) * W + j * st - p) * C + c;
        for (int d = 0; d < k; ++d) {
          const Vec<Real> tap = w[a * k + d];
          for (int q = 0; q < kPixels; ++q) acc[q] += tap * load(source + (q * st + d) * C, count);
        }
      }
      for (int q = 0; q < kPixels; ++q) finish(j + q, c, count, acc[q]);
    }
  }
  for (; j < Wo; ++j) edge_pixel(j);
}

template <typename Real>
int conv_forward(const ConvShape& s, const Real* x, const Real* weight, const Real* bias, Real* out, int activation,
                 bool residual, int num_threads) {
  constexpr int lanes = kLanes<Real>;
  const int64_t C = s.channels, taps = s.kernel * s.kernel, Ho = s.out_height(), Wo = s.out_width();
  const int64_t blocks = (C + lanes - 1) / lanes, rows = s.batch * Ho;
  const int64_t work = rows * Wo * C * taps;
  const int threads = work < kMinParallelWork ? 1 : std::max(1, num_threads);
  // tasks: output rows, split into groups of channel blocks when there are few rows, so every thread has a few
  const int64_t groups = std::clamp<int64_t>((4 * threads + rows - 1) / rows, 1, blocks);
  const int64_t group_blocks = (blocks + groups - 1) / groups, tasks = rows * groups;
  std::vector<Vec<Real>> wt, biases;
  try {
    wt.resize(blocks * taps);
    biases.resize(blocks);
  } catch (const std::bad_alloc&) {
    return 1;
  }
  const bool full = C % lanes == 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {  // (C, k * k) -> (blocks, k * k) vectors of channels
      const int64_t first = block * lanes;
      const int count = int(std::min<int64_t>(lanes, C - first));
      for (int64_t t = 0; t < taps; ++t) {
        Vec<Real> v{};
        for (int l = 0; l < count; ++l) v[l] = weight[(first + l) * taps + t];
        wt[block * taps + t] = v;
      }
      biases[block] = bias ? load(bias + first, count) : Vec<Real>{};
    }
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t row = task / groups, group = task % groups;
      const int64_t b = row / Ho, i = row % Ho;
      const int64_t block_begin = group * group_blocks, block_end = std::min(blocks, block_begin + group_blocks);
      if (block_begin >= block_end) continue;
      switch (s.kernel * 2 + full) {
#define CASE(K)                                                                                                   \
  case 2 * K + 1:                                                                                                 \
    conv_row<Real, K, true>(s, x, wt.data(), biases.data(), out, b, i, block_begin, block_end, activation,        \
                            residual);                                                                            \
    break;                                                                                                        \
  case 2 * K:                                                                                                     \
    conv_row<Real, K, false>(s, x, wt.data(), biases.data(), out, b, i, block_begin, block_end, activation,       \
                             residual);                                                                           \
    break;
        CASE(3)
        CASE(5)
        CASE(7)
#undef CASE
        default:
          conv_row<Real, 0, false>(s, x, wt.data(), biases.data(), out, b, i, block_begin, block_end, activation,
                                   residual);
      }
    }
  }
  return 0;
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
