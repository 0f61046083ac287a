// Spatial-Mamba's ops for CPUs, loaded by vision2d/ops/state_scan_cpu.py and vision2d/ops/state_fusion_cpu.py
// through ctypes:
//   state scan         the 1D selective scan (one direction) returning every hidden state (forward and backward);
//                      math in state_scan_ref.py
//   state fusion       depthwise k x k cross-correlation over border-replicated input (forward and backward); math in
//                      state_fusion_ref.py
//   state scan fusion  the forward of both with the C read-out, D skip, LayerNorm and SiLU gate, the states held in a
//                      buffer of one channel block's states; math in state_scan_fusion.py (its backward composes the
//                      above)
// Every tensor is contiguous and channels-last, in the state type Real (float, or double for float64 inputs):
// u, delta (batch, L, E); A (E, N); B (batch, L, N); delta_bias (E) or null; states h (batch, L, N, E); fusion input
// and output (batch, H, W, C); fusion weight transposed to (k * k, C). Build: g++ -O3 -march=native -fopenmp
// -ffp-contract=fast -std=c++17 -shared -fPIC.
//
// A vector holds kLanes consecutive channels. The scan runs tasks (batch item, channel block) that own their slices
// of h, du and ddelta; dB (a sum over channels) goes to one slice per channel block and dA / ddelta_bias to one per
// batch item, summed by the caller, so results do not depend on timing. The fusion forward runs tasks (batch item,
// row) over the taps that are non-zero in some channel (the merged 11x11 kernel of Spatial-Mamba has 25 of 121); its
// backward runs tasks (batch item, channel block) that scatter into their own channels of dx and write dweight per
// batch item.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "vector_math.h"

namespace {

struct ScanShape {
  int64_t batch, length, channels, state;
  bool delta_softplus;
  template <typename Real>
  int64_t blocks() const {
    return (channels + kLanes<Real> - 1) / kLanes<Real>;
  }
};

// One channel block's constants: A log2(e) and A as N vectors each, and delta_bias
template <typename Real>
struct ScanBlock {
  int64_t b, first;
  int count;
  std::vector<Vec<Real>> A2, A;
  Vec<Real> bias{};

  ScanBlock(const ScanShape& s, int64_t task, const Real* a, const Real* delta_bias)
      : b(task / s.blocks<Real>()), first(task % s.blocks<Real>() * kLanes<Real>), A2(s.state), A(s.state) {
    count = int(std::min<int64_t>(kLanes<Real>, s.channels - first));
    for (int64_t n = 0; n < s.state; ++n) {
      for (int l = 0; l < count; ++l) A[n][l] = a[(first + l) * s.state + n];
      A2[n] = A[n] * Real(kLog2e);
    }
    if (delta_bias) bias = load(delta_bias + first, count);
  }
  // offset of (b, t, first) in a (batch, L, E) tensor and of (b, t, n, first) in a (batch, L, N, E) tensor
  int64_t sequence_offset(const ScanShape& s, int64_t t) const { return (b * s.length + t) * s.channels + first; }
  int64_t state_offset(const ScanShape& s, int64_t t, int64_t n) const {
    return ((b * s.length + t) * s.state + n) * s.channels + first;
  }
};

int threads_for(int num_threads, int64_t tasks) {
  return int(std::max<int64_t>(1, std::min<int64_t>(num_threads, tasks)));
}

// Steps and pixels handled together: their exp / softplus polynomials and tap sums are independent chains that the
// CPU interleaves (one chain at a time leaves it waiting on each chain's latency)
constexpr int kGroup = 4;

// One channel block's scan from h = 0 over its L steps: emit(t, n, h_t[n]) for every state
template <typename Real, typename Emit>
inline void scan_block(const ScanShape& s, const ScanBlock<Real>& blk, const Real* u, const Real* delta, const Real* B,
                       Vec<Real>* state, Emit emit) {
  const int64_t N = s.state;
  for (int64_t n = 0; n < N; ++n) state[n] = Vec<Real>{};
  for (int64_t first = 0; first < s.length; first += kGroup) {
    const int steps = int(std::min<int64_t>(kGroup, s.length - first));
    Vec<Real> dt[kGroup], dtu[kGroup], gate[kGroup];
    for (int q = 0; q < kGroup; ++q) {
      const int64_t offset = blk.sequence_offset(s, first + std::min(q, steps - 1));  // the tail repeats a step
      dt[q] = load(delta + offset, blk.count) + blk.bias;
      if (s.delta_softplus) dt[q] = softplus<Real>(dt[q], nullptr);
      dtu[q] = dt[q] * load(u + offset, blk.count);
    }
    for (int64_t n = 0; n < N; ++n) {
      for (int q = 0; q < kGroup; ++q) gate[q] = vexp2(dt[q] * blk.A2[n]);
      Vec<Real> h = state[n];
      for (int q = 0; q < steps; ++q) {
        h = gate[q] * h + dtu[q] * B[(blk.b * s.length + first + q) * N + n];
        emit(first + q, n, h);
      }
      state[n] = h;
    }
  }
}

template <typename Real>
int scan_forward(const ScanShape& s, const Real* u, const Real* delta, const Real* A, const Real* B,
                 const Real* delta_bias, Real* h, int num_threads) {
  const int64_t tasks = s.batch * s.blocks<Real>();
#pragma omp parallel for num_threads(threads_for(num_threads, tasks)) schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const FlushDenormals flush;
    const ScanBlock<Real> blk(s, task, A, delta_bias);
    std::vector<Vec<Real>> state(s.state);
    scan_block(s, blk, u, delta, B, state.data(),
               [&](int64_t t, int64_t n, Vec<Real> h_t) { store(h + blk.state_offset(s, t, n), h_t, blk.count); });
  }
  return 0;
}

// Adjoint sweep from the last step with the forward's states h: lam_t = dh_t + exp(dt_{t+1} A) lam_{t+1}. Writes
// du, ddelta; dA (batch, N, E) and ddelta_bias (batch, E) per batch item; dB into slice `block` of
// (blocks, batch, L, N).
template <typename Real>
int scan_backward(const ScanShape& s, const Real* dh, const Real* u, const Real* delta, const Real* A, const Real* B,
                  const Real* delta_bias, const Real* h, Real* du, Real* ddelta, Real* dA, Real* dB, Real* dbias,
                  int num_threads) {
  const int64_t tasks = s.batch * s.blocks<Real>(), N = s.state, L = s.length, E = s.channels;
#pragma omp parallel for num_threads(threads_for(num_threads, tasks)) schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const FlushDenormals flush;
    const ScanBlock<Real> blk(s, task, A, delta_bias);
    const int64_t block = task % s.blocks<Real>();
    std::vector<Vec<Real>> lam(N), next_gate(N), dA_sum(N);
    Vec<Real> dbias_sum{};
    for (int64_t t = L - 1; t >= 0; --t) {
      const int64_t offset = blk.sequence_offset(s, t);
      const Vec<Real> raw = load(delta + offset, blk.count) + blk.bias, uv = load(u + offset, blk.count);
      Vec<Real> slope = splat<Real>(1), dt = raw;
      if (s.delta_softplus) dt = softplus<Real>(raw, &slope);
      const Vec<Real> dtu = dt * uv;
      const Real* Bt = B + (blk.b * L + t) * N;
      Real* dBt = dB + ((block * s.batch + blk.b) * L + t) * N;
      Vec<Real> ddt{}, lam_b{};
      for (int64_t n = 0; n < N; ++n) {
        // lanes past the block's end load dh = 0, so their lam and every sum over them stay 0
        lam[n] = load(dh + blk.state_offset(s, t, n), blk.count) + next_gate[n] * lam[n];
        const Vec<Real> gate = vexp2(dt * blk.A2[n]);
        const Vec<Real> h_prev = t > 0 ? load(h + blk.state_offset(s, t - 1, n), blk.count) : Vec<Real>{};
        const Vec<Real> d_exponent = lam[n] * h_prev * gate;
        ddt += d_exponent * blk.A[n];
        dA_sum[n] += d_exponent * dt;
        lam_b += lam[n] * Bt[n];
        dBt[n] = hsum<Real>(lam[n] * dtu);
        next_gate[n] = gate;
      }
      const Vec<Real> dd = (ddt + lam_b * uv) * slope;
      dbias_sum += dd;
      store(du + offset, lam_b * dt, blk.count);
      store(ddelta + offset, dd, blk.count);
    }
    for (int64_t n = 0; n < N; ++n) store(dA + (blk.b * N + n) * E + blk.first, dA_sum[n], blk.count);
    if (dbias) store(dbias + blk.b * E + blk.first, dbias_sum, blk.count);
  }
  return 0;
}

struct FusionShape {
  int64_t batch, height, width, channels, kernel;
  int64_t pad() const { return kernel / 2; }
  int64_t taps() const { return kernel * kernel; }
  int64_t row(int64_t i, int64_t a) const { return std::clamp<int64_t>(i + a - pad(), 0, height - 1); }
  int64_t col(int64_t j, int64_t d) const { return std::clamp<int64_t>(j + d - pad(), 0, width - 1); }
  int64_t offset(int64_t b, int64_t i, int64_t j) const { return ((b * height + i) * width + j) * channels; }
};

// taps (a * k + d) whose weight is non-zero in some channel
template <typename Real>
std::vector<int64_t> active_taps(const FusionShape& s, const Real* weight) {
  std::vector<int64_t> taps;
  for (int64_t tap = 0; tap < s.taps(); ++tap) {
    const Real* w = weight + tap * s.channels;
    int nonzero = 0;  // (no early exit: the loop vectorises)
    for (int64_t c = 0; c < s.channels; ++c) nonzero |= w[c] != Real(0);
    if (nonzero) taps.push_back(tap);
  }
  return taps;
}

template <typename Real>
int fusion_forward(const FusionShape& s, const Real* x, const Real* weight, Real* out, int num_threads) {
  std::vector<int64_t> taps;
  try {
    taps = active_taps(s, weight);
  } catch (const std::bad_alloc&) {
    return 1;
  }
  const int64_t tasks = s.batch * s.height, C = s.channels, T = int64_t(taps.size());
#pragma omp parallel for num_threads(threads_for(num_threads, tasks)) schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / s.height, i = task % s.height;
    // each tap's source pixel for every column of the row (clamped once), then channel block by channel block with
    // the block's tap weights held in a small array
    std::vector<const Real*> sources(s.width * T);
    std::vector<Vec<Real>> w(T);
    for (int64_t t = 0; t < T; ++t) {
      const Real* row = x + s.offset(b, s.row(i, taps[t] / s.kernel), 0);
      for (int64_t j = 0; j < s.width; ++j) sources[j * T + t] = row + s.col(j, taps[t] % s.kernel) * C;
    }
    for (int64_t first = 0; first < C; first += kLanes<Real>) {
      const int count = int(std::min<int64_t>(kLanes<Real>, C - first));
      for (int64_t t = 0; t < T; ++t) w[t] = load(weight + taps[t] * C + first, count);
      for (int64_t j = 0; j < s.width; ++j) {
        const Real* const* source = sources.data() + j * T;
        Vec<Real> acc{};
        for (int64_t t = 0; t < T; ++t) acc += w[t] * load(source[t] + first, count);
        store(out + s.offset(b, i, j) + first, acc, count);
      }
    }
  }
  return 0;
}

// dx = the adjoint (a scatter onto the clamped source pixels) and dweight (batch, k * k, C) per batch item
template <typename Real>
int fusion_backward(const FusionShape& s, const Real* dout, const Real* x, const Real* weight, Real* dx,
                    Real* dweight, int num_threads) {
  std::vector<int64_t> taps;
  try {
    taps = active_taps(s, weight);
  } catch (const std::bad_alloc&) {
    return 1;
  }
  const int64_t C = s.channels, blocks = (C + kLanes<Real> - 1) / kLanes<Real>, tasks = s.batch * blocks;
  const int64_t K = s.kernel, T = int64_t(taps.size());
#pragma omp parallel for num_threads(threads_for(num_threads, tasks)) schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / blocks, first = task % blocks * kLanes<Real>;
    const int count = int(std::min<int64_t>(kLanes<Real>, C - first));
    std::vector<Vec<Real>> dw(s.taps()), w(T);
    for (int64_t t = 0; t < T; ++t) w[t] = load(weight + taps[t] * C + first, count);
    for (int64_t i = 0; i < s.height; ++i)
      for (int64_t j = 0; j < s.width; ++j) store(dx + s.offset(b, i, j) + first, Vec<Real>{}, count);
    for (int64_t i = 0; i < s.height; ++i) {
      for (int64_t j = 0; j < s.width; ++j) {
        const Vec<Real> g = load(dout + s.offset(b, i, j) + first, count);
        for (int64_t a = 0; a < K; ++a) {
          const int64_t r = s.row(i, a);
          for (int64_t d = 0; d < K; ++d)
            dw[a * K + d] += g * load(x + s.offset(b, r, s.col(j, d)) + first, count);
        }
        for (int64_t t = 0; t < T; ++t) {
          Real* target = dx + s.offset(b, s.row(i, taps[t] / K), s.col(j, taps[t] % K)) + first;
          store(target, load(target, count) + w[t] * g, count);
        }
      }
    }
    for (int64_t tap = 0; tap < s.taps(); ++tap) store(dweight + (b * s.taps() + tap) * C + first, dw[tap], count);
  }
  return 0;
}


// Spatial-Mamba's SSM core in two passes: y = sum_n C[n] fusion(h[n]) + D u, then optionally LayerNorm over the
// channels (norm_weight / norm_bias may be null: 1 / 0) and the gate out = y * silu(gate).
// Image by image, pass 1 (tasks: channel blocks) scans a block's states into the thread's buffer (L x N vectors, the
// only copy of them: it stays in cache, and neither h nor the fused states reach memory), fuses them pixel by pixel
// with the block's tap weights held in a small array, reads them out by C, adds D u and stores y in `out`; pass 2
// (tasks: pixels) normalises and gates every pixel's channels in place while the image's y is in cache. Both passes
// split across threads at batch 1. `f` is the (batch, H, W, E) map of the sequence.
template <typename Real>
struct CoreParams {
  const Real *D, *norm_weight, *norm_bias, *gate;
  Real eps;
  bool norm;
};

// y[q] += c[q] sum over taps of w[t] * states[rows[t] + cols[q][t]] for kGroup pixels q of a row (state n's offset
// added to states); cols[q] holds pixel q's T source columns
template <typename Real>
inline void fuse_pixels(const Vec<Real>* w, const Vec<Real>* states, const int64_t* rows,
                        const int64_t* const* cols, int64_t T, const Real* c, Vec<Real>* y) {
  Vec<Real> acc[kGroup];
  for (int q = 0; q < kGroup; ++q) acc[q] = Vec<Real>{};
  for (int64_t t = 0; t < T; ++t)
    for (int q = 0; q < kGroup; ++q) acc[q] += w[t] * states[rows[t] + cols[q][t]];
  for (int q = 0; q < kGroup; ++q) y[q] += acc[q] * c[q];
}

template <typename Real>
int scan_fusion_forward(const ScanShape& s, const FusionShape& f, const Real* u, const Real* delta, const Real* A,
                        const Real* B, const Real* C, const Real* delta_bias, const Real* weight,
                        const CoreParams<Real>& p, Real* out, int num_threads) {
  const int64_t N = s.state, L = s.length, H = f.height, W = f.width, K = f.kernel, E = s.channels;
  const int64_t blocks = s.blocks<Real>();
  constexpr int lanes = kLanes<Real>;
  const int threads = threads_for(num_threads, std::max(blocks, L));
  std::vector<int64_t> taps, source_cols, source_rows;
  std::vector<Vec<Real>> params, scratch;
  int64_t T = 0, per_thread = 0;
  try {
    taps = active_taps(f, weight);
    T = int64_t(taps.size());
    per_thread = L * N + N + T;  // the block's states, the scan's state, the block's tap weights
    source_cols.resize(W * T);
    source_rows.resize(H * T);
    params.resize(2 * blocks);
    scratch.resize(threads * per_thread);
  } catch (const std::bad_alloc&) {
    return 1;
  }
  auto count = [&](int64_t blk) { return int(std::min<int64_t>(lanes, E - blk * lanes)); };
  // the norm's weight and bias per channel block (zero on padded lanes)
  Vec<Real>* const gamma = params.data();
  Vec<Real>* const beta = gamma + blocks;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    gamma[blk] = p.norm_weight ? load(p.norm_weight + blk * lanes, count(blk)) : splat<Real>(1);
    beta[blk] = p.norm_bias ? load(p.norm_bias + blk * lanes, count(blk)) : Vec<Real>{};
  }
  // the clamped source pixel of every (row, tap) and (column, tap), as offsets in a block's states buffer
  for (int64_t i = 0; i < H; ++i)
    for (int64_t t = 0; t < T; ++t) source_rows[i * T + t] = f.row(i, taps[t] / K) * W * N;
  for (int64_t j = 0; j < W; ++j)
    for (int64_t t = 0; t < T; ++t) source_cols[j * T + t] = f.col(j, taps[t] % K) * N;
#pragma omp parallel num_threads(threads)
  {
    const FlushDenormals flush;
    Vec<Real>* const states = scratch.data() + omp_get_thread_num() * per_thread;
    Vec<Real>* const state = states + L * N;
    Vec<Real>* const w = state + N;
    for (int64_t b = 0; b < s.batch; ++b) {  // image by image: its y stays in cache for pass 2
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const ScanBlock<Real> sb(s, b * blocks + blk, A, delta_bias);
        scan_block(s, sb, u, delta, B, state,
                   [&](int64_t t, int64_t n, Vec<Real> h_t) { states[t * N + n] = h_t; });
        for (int64_t t = 0; t < T; ++t) w[t] = load(weight + taps[t] * E + sb.first, sb.count);
        const Vec<Real> d = p.D ? load(p.D + sb.first, sb.count) : Vec<Real>{};
        for (int64_t i = 0; i < H; ++i) {
          const int64_t* const rows = source_rows.data() + i * T;
          for (int64_t j = 0; j < W; j += kGroup) {
            const int G = int(std::min<int64_t>(kGroup, W - j));  // a row's tail repeats its last pixel
            const int64_t pixel = b * L + i * W + j;
            const int64_t* cols[kGroup];
            Vec<Real> y[kGroup];
            Real c[kGroup];
            for (int q = 0; q < kGroup; ++q) {
              const int64_t column = std::min(q, G - 1);
              cols[q] = source_cols.data() + (j + column) * T;
              y[q] = p.D ? d * load(u + (pixel + column) * E + sb.first, sb.count) : Vec<Real>{};
            }
            for (int64_t n = 0; n < N; ++n) {
              for (int q = 0; q < kGroup; ++q) c[q] = C[(pixel + std::min(q, G - 1)) * N + n];
              fuse_pixels(w, states + n, rows, cols, T, c, y);
            }
            for (int q = 0; q < G; ++q) store(out + (pixel + q) * E + sb.first, y[q], sb.count);
          }
        }
      }  // (implicit barrier: the image's y is complete)
      if (!p.norm && !p.gate) continue;
#pragma omp for schedule(static)
      for (int64_t pixel = b * L; pixel < (b + 1) * L; ++pixel) {
        Real* const o = out + pixel * E;
        Real mean = 0, rstd = 1;
        if (p.norm) row_mean_rstd(o, E, p.eps, &mean, &rstd);  // LayerNorm's mean and biased variance
        for (int64_t blk = 0; blk < blocks; ++blk) {
          Vec<Real> v = load(o + blk * lanes, count(blk));
          if (p.norm) v = (v - mean) * rstd * gamma[blk] + beta[blk];
          if (p.gate) {  // v * silu(z) = v * z / (1 + exp(-z))
            const Vec<Real> z = load(p.gate + pixel * E + blk * lanes, count(blk));
            v = v * z / (Real(1) + vexp2(z * Real(-kLog2e)));
          }
          store(o + blk * lanes, v, count(blk));
        }
      }  // (implicit barrier)
    }
  }
  return 0;
}

}  // namespace

// C entry points: 0 on success, 1 when scratch memory could not be allocated.
#define STATE_FUSION_ENTRY_POINTS(Real, suffix)                                                                      \
  extern "C" int state_scan_forward_##suffix(const Real* u, const Real* delta, const Real* A, const Real* B,         \
                                             const Real* delta_bias, Real* h, int64_t batch, int64_t length,          \
                                             int64_t channels, int64_t state, int delta_softplus, int num_threads) {  \
    return scan_forward(ScanShape{batch, length, channels, state, delta_softplus != 0}, u, delta, A, B, delta_bias,  \
                        h, num_threads);                                                                              \
  }                                                                                                                   \
  extern "C" int state_scan_backward_##suffix(const Real* dh, const Real* u, const Real* delta, const Real* A,       \
                                              const Real* B, const Real* delta_bias, const Real* h, Real* du,         \
                                              Real* ddelta, Real* dA, Real* dB, Real* ddelta_bias, int64_t batch,     \
                                              int64_t length, int64_t channels, int64_t state, int delta_softplus,    \
                                              int num_threads) {                                                      \
    return scan_backward(ScanShape{batch, length, channels, state, delta_softplus != 0}, dh, u, delta, A, B,         \
                         delta_bias, h, du, ddelta, dA, dB, ddelta_bias, num_threads);                                \
  }                                                                                                                   \
  extern "C" int state_fusion_forward_##suffix(const Real* x, const Real* weight, Real* out, int64_t batch,          \
                                               int64_t height, int64_t width, int64_t channels, int64_t kernel,       \
                                               int num_threads) {                                                     \
    return fusion_forward(FusionShape{batch, height, width, channels, kernel}, x, weight, out, num_threads);         \
  }                                                                                                                   \
  extern "C" int state_fusion_backward_##suffix(const Real* dout, const Real* x, const Real* weight, Real* dx,       \
                                                Real* dweight, int64_t batch, int64_t height, int64_t width,          \
                                                int64_t channels, int64_t kernel, int num_threads) {                  \
    return fusion_backward(FusionShape{batch, height, width, channels, kernel}, dout, x, weight, dx, dweight,        \
                           num_threads);                                                                              \
  }                                                                                                                   \
  extern "C" int state_scan_fusion_forward_##suffix(                                                                 \
      const Real* u, const Real* delta, const Real* A, const Real* B, const Real* C, const Real* D,                  \
      const Real* delta_bias, const Real* weight, const Real* norm_weight, const Real* norm_bias, double norm_eps,    \
      int norm, const Real* gate, Real* out, int64_t batch, int64_t height, int64_t width, int64_t channels,         \
      int64_t state, int64_t kernel, int delta_softplus, int num_threads) {                                          \
    return scan_fusion_forward(ScanShape{batch, height * width, channels, state, delta_softplus != 0},              \
                               FusionShape{batch, height, width, channels, kernel}, u, delta, A, B, C, delta_bias,    \
                               weight, CoreParams<Real>{D, norm_weight, norm_bias, gate, Real(norm_eps), norm != 0}, \
                               out, num_threads);                                                                     \
  }

STATE_FUSION_ENTRY_POINTS(float, f32)
STATE_FUSION_ENTRY_POINTS(double, f64)
