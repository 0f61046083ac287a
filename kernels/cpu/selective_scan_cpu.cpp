// 1D selective scan (Mamba's S6) with K scan directions for CPUs: forward and backward, loaded by
// vision2d/ops/selective_scan_cpu.py through ctypes.
//
// The math is vision2d/ops/selective_scan_ref.py. Every tensor is contiguous, in the state type Real (float, or double
// for float64 inputs): u (batch, L, E); delta (batch, L, K, E); A (K, E, N); B, C (batch, L, K, N); D, delta_bias
// (K, E) or null; order int64 (K, L), row k a permutation of 0..L-1; y (batch, L, E) when merging, else
// (batch, L, K, E). The forward also takes a delta projection (K, E, R) (each direction's dt_proj weight; copied as
// rows (K, R, E), so that a vector of channels is contiguous): delta is then the low-rank (batch, L, K, R) input,
// projected as the step sizes are computed (the (batch, L, K, E) delta is never stored); the backward takes the
// projected delta. The forward's per-pixel inputs (u, delta, B, C) may hold L / s positions (periodic inputs: the
// sequence is s copies of them, read at position mod L / s; the backward takes them repeated).
// Build: g++ -O3 -march=native -fopenmp -ffp-contract=fast -std=c++17 -shared -fPIC.
//
// A vector holds kLanes consecutive channels (channels-last: contiguous at every position), so y, du and ddelta need
// no horizontal sums. The forward runs tasks (batch item, tile of up to kMaxWidth channel blocks, and the direction
// when outputs are not merged); a task scans its directions step by step (N x width independent recurrences per
// direction in flight, one position lookup per direction and step for the whole tile), keeps their N x width state
// vectors each and writes or adds the outputs into its own channels of y, so merging needs no synchronisation. The
// backward runs tasks (batch item, group of channel blocks): it recomputes a block's states (all of them when they
// fit state_budget_bytes, else segments of >= sqrt(L) steps restarted from checkpointed states) and runs the adjoint
// sweep from the last step. dB and dC sum over channels: each group adds into its own slice, dA, dD and delta_bias
// are written per batch item; the caller sums the slices, so results do not depend on timing.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "vector_math.h"

namespace {

constexpr int64_t kChunk = 16;  // forward steps whose step sizes are computed together
// steps ahead whose lines are prefetched: scan orders other than the storage order (columns of an image) jump by
// whole rows, which the hardware prefetchers do not follow
constexpr int64_t kPrefetchDistance = 8;
// channel blocks a forward task scans together: 64 floats (4 AVX-512 vectors, 8 AVX2 ones; with AVX2, 8 took 0.907x
// the time of 4 on 1 thread, 0.958x on 2)
constexpr int kMaxWidth = 4 * 64 / kVectorBytes;
// degree of the gates' 2^x polynomial (vexp2; 5: 1.9e-7 relative error in float): a gate per state update is most of
// the kernel's arithmetic (degree 6: 8% more time)
constexpr int kGateDegree = 5;

template <typename Real>
struct ScanArgs {
  const Real *u, *delta, *A, *B, *C, *D, *delta_bias;
  const int64_t* order;
  int64_t batch, length, directions, channels, state;
  bool delta_softplus, merge;
  const Real* delta_proj = nullptr;  // rows (K, R, E) or null
  int64_t rank = 0;                  // R
  int64_t stored_directions = directions;  // K of the per-pixel tensors' layout (`directions`: those scanned)
  // periodic inputs: step t of direction k reads the per-pixel inputs (u, delta, B, C; `period` positions per batch
  // item) at input_order[k, t] = order[k, t] mod period and writes y (`length` positions) at order[k, t]
  const int64_t* input_order = order;
  int64_t period = length;

  // the arguments of direction k alone: its parameters, order row and per-pixel inputs (offsets keep the K layout)
  ScanArgs direction(int64_t k) const {
    ScanArgs d = *this;
    d.directions = 1;
    d.order += k * length;
    d.input_order += k * length;
    d.A += k * channels * state;
    if (D) d.D += k * channels;
    if (delta_bias) d.delta_bias += k * channels;
    if (delta_proj) d.delta_proj += k * rank * channels;
    d.delta += k * (delta_proj ? rank : channels);
    d.B += k * state;
    d.C += k * state;
    return d;
  }

  int64_t blocks() const { return (channels + kLanes<Real> - 1) / kLanes<Real>; }
  int64_t position(int64_t k, int64_t t) const { return order[k * length + t]; }  // of y
  int64_t input_position(int64_t k, int64_t t) const { return input_order[k * length + t]; }  // of u, delta, B, C
  // offsets of (b, p, first channel) in a (batch, L, E) tensor and of (b, p, k, first) in a (batch, L, K, E) tensor
  // (y, and the backward's gradients), of (b, q, first) in u and of (b, q, k, 0) in B and C ((batch, period, K, N))
  int64_t sequence_offset(int64_t b, int64_t p, int64_t first) const { return (b * length + p) * channels + first; }
  int64_t direction_offset(int64_t b, int64_t p, int64_t k, int64_t first) const {
    return ((b * length + p) * stored_directions + k) * channels + first;
  }
  int64_t input_offset(int64_t b, int64_t q, int64_t first) const { return (b * period + q) * channels + first; }
  int64_t state_offset(int64_t b, int64_t q, int64_t k) const {
    return ((b * period + q) * stored_directions + k) * state;
  }
  // offset of the step size's first input: delta[b, q, k, first], or the low-rank delta[b, q, k, 0]
  int64_t delta_offset(int64_t b, int64_t q, int64_t k, int64_t first) const {
    return ((b * period + q) * stored_directions + k) * (delta_proj ? rank : channels) + (delta_proj ? 0 : first);
  }
};

// A tile of `width` consecutive channel blocks of one batch item (the forward runs several at once for more
// independent work per step; the backward one): A log2(e) (gates are powers of 2), D and delta_bias per direction,
// and the sum of D over directions (the skip term of the merged output). Every block is full but the last, which has
// `count` channels. Per-block vectors are stored block-minor: A2[(k N + n) width + j], D[k width + j].
template <typename Real>
struct ChannelBlock {
  int64_t batch_index, first;
  int width, count;
  const Vec<Real>*A2, *D, *bias, *D_sum;

  static int64_t vectors(int64_t K, int64_t N, int width) { return (K * (N + 2) + 1) * width; }
  // buffer: vectors(K, N, width)
  ChannelBlock(const ScanArgs<Real>& a, int64_t b, int64_t block, int blocks, Vec<Real>* buffer)
      : batch_index(b), first(block * kLanes<Real>), width(blocks) {
    const int64_t K = a.directions, N = a.state, E = a.channels;
    count = int(std::min<int64_t>(kLanes<Real>, E - first - (width - 1) * kLanes<Real>));
    Vec<Real>* a2 = buffer;
    Vec<Real>* d = a2 + K * N * width;
    Vec<Real>* bias_k = d + K * width;
    Vec<Real>* d_sum = bias_k + K * width;
    for (int j = 0; j < width; ++j) {
      const int64_t first_j = first + j * kLanes<Real>;
      const int count_j = channels(j);
      d_sum[j] = Vec<Real>{};
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t n = 0; n < N; ++n) {
          Vec<Real>& v = a2[(k * N + n) * width + j];
          v = Vec<Real>{};
          for (int l = 0; l < count_j; ++l) v[l] = a.A[(k * E + first_j + l) * N + n] * Real(kLog2e);
        }
        d[k * width + j] = a.D ? load(a.D + k * E + first_j, count_j) : Vec<Real>{};
        bias_k[k * width + j] = a.delta_bias ? load(a.delta_bias + k * E + first_j, count_j) : Vec<Real>{};
        d_sum[j] += d[k * width + j];
      }
    }
    A2 = a2;
    D = d;
    bias = bias_k;
    D_sum = d_sum;
  }
  int channels(int j) const { return j + 1 < width ? kLanes<Real> : count; }  // of block j
  // offsets of block j's first channel
  int64_t sequence_offset(const ScanArgs<Real>& a, int64_t p, int j = 0) const {
    return a.sequence_offset(batch_index, p, first + j * kLanes<Real>);
  }
  int64_t direction_offset(const ScanArgs<Real>& a, int64_t p, int64_t k, int j = 0) const {
    return a.direction_offset(batch_index, p, k, first + j * kLanes<Real>);
  }
  int64_t input_offset(const ScanArgs<Real>& a, int64_t q, int j = 0) const {
    return a.input_offset(batch_index, q, first + j * kLanes<Real>);
  }
  const Real* B(const ScanArgs<Real>& a, int64_t q, int64_t k) const {
    return a.B + a.state_offset(batch_index, q, k);
  }
  const Real* C(const ScanArgs<Real>& a, int64_t q, int64_t k) const {
    return a.C + a.state_offset(batch_index, q, k);
  }
  int64_t delta_offset(const ScanArgs<Real>& a, int64_t q, int64_t k, int j = 0) const {
    return a.delta_offset(batch_index, q, k, first + j * kLanes<Real>);
  }
};

// The raw step sizes of steps [t0, t1) of direction k for every block of the tile, entry ((t - t0) K + k) width + j
// of dt: delta + bias, or with a delta projection (then t1 - t0 <= kChunk) sum_r delta[b, p, k, r]
// delta_proj[k, r, channels] + bias. The projection copies the chunk's low-rank inputs as rows (R, kChunk) into
// `lows` (kChunk R reals), then runs kProjectedSteps steps at a time for each block: their sums, a weight row and a
// broadcast input stay in registers (AVX2's 16: 8 steps; with AVX2, 16 sums read through 16 input pointers spilled
// sums and pointers, 1.10x / 1.07x the time for the MSVMamba-T / LocalMamba-T stage scans on 1 thread; AVX-512's 32
// registers hold 16). Rows past t1 are computed from step t0's input and not stored.
constexpr int kProjectedSteps = kVectorBytes == 64 ? 16 : 8;
static_assert(kChunk % kProjectedSteps == 0, "whole groups of projected steps per chunk");

// sums[q] += lows[q] w_r for the kProjectedSteps steps q of a group
template <typename Real>
inline void project_row(Vec<Real>* sums, Vec<Real> w_r, const Real* lows) {
#pragma GCC unroll 16
  for (int q = 0; q < kProjectedSteps; ++q) sums[q] += lows[q] * w_r;
}

template <typename Real>
void raw_step_sizes(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t k, int64_t t0, int64_t t1,
                    Vec<Real>* dt, Real* lows) {
  const int64_t K = a.directions, steps = t1 - t0;
  const int width = blk.width;
  if (!a.delta_proj) {
    for (int64_t i = 0; i < steps; ++i) {
      if (t0 + i + kPrefetchDistance < a.length) {
        const int64_t ahead = a.input_position(k, t0 + i + kPrefetchDistance);
        for (int j = 0; j < width; ++j) __builtin_prefetch(a.delta + blk.delta_offset(a, ahead, k, j));
      }
      const int64_t q = a.input_position(k, t0 + i);
      for (int j = 0; j < width; ++j) {
        dt[(i * K + k) * width + j] =
            load(a.delta + blk.delta_offset(a, q, k, j), blk.channels(j)) + blk.bias[k * width + j];
      }
    }
    return;
  }
  const int64_t R = a.rank;
  for (int64_t i = 0; i < kChunk; ++i) {
    const Real* low = a.delta + blk.delta_offset(a, a.input_position(k, t0 + (i < steps ? i : 0)), k);
    for (int64_t r = 0; r < R; ++r) lows[r * kChunk + i] = low[r];
    if (t0 + i + kChunk < a.length) {
      __builtin_prefetch(a.delta + blk.delta_offset(a, a.input_position(k, t0 + i + kChunk), k));
    }
  }
  for (int j = 0; j < width; ++j) {
    const int count = blk.channels(j);
    const Real* w = a.delta_proj + k * R * a.channels + blk.first + j * kLanes<Real>;
    for (int64_t i0 = 0; i0 < steps; i0 += kProjectedSteps) {
      Vec<Real> sums[kProjectedSteps];
      for (int q = 0; q < kProjectedSteps; ++q) sums[q] = blk.bias[k * width + j];
      const Real* group = lows + i0;
      if (count == kLanes<Real>) {  // a full block's weight rows by plain loads
        for (int64_t r = 0; r < R; ++r) {
          project_row<Real>(sums, load(w + r * a.channels, kLanes<Real>), group + r * kChunk);
        }
      } else {
        for (int64_t r = 0; r < R; ++r) project_row<Real>(sums, load(w + r * a.channels, count), group + r * kChunk);
      }
      for (int q = 0; q < kProjectedSteps && i0 + q < steps; ++q) dt[((i0 + q) * K + k) * width + j] = sums[q];
    }
  }
}

// Step sizes of steps [t0, t1) of every direction and block, entry ((t - t0) K + k) width + j: dt = softplus(delta +
// bias) (or without softplus), dt u and, when `slope` is given, d dt / d delta; `lows`: raw_step_sizes' buffer (null
// without a delta projection). Computed ahead of the recurrence, so that the independent softplus evaluations
// pipeline instead of lengthening its dependency chain.
template <typename Real>
void step_sizes(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t t0, int64_t t1, Vec<Real>* dt,
                Vec<Real>* dtu, Vec<Real>* slope, Real* lows) {
  const int64_t K = a.directions, vectors = (t1 - t0) * K * blk.width;
  for (int64_t k = 0; k < K; ++k) raw_step_sizes(a, blk, k, t0, t1, dt, lows);
  // one flat pass over the chunk's vectors: independent softplus chains that the compiler interleaves
  if (a.delta_softplus && slope) {
    for (int64_t i = 0; i < vectors; ++i) dt[i] = softplus<Real>(dt[i], slope + i);
  } else if (a.delta_softplus) {
#pragma GCC unroll 4
    for (int64_t i = 0; i < vectors; ++i) dt[i] = softplus<Real>(dt[i], nullptr);
  } else if (slope) {
    std::fill(slope, slope + vectors, splat<Real>(1));
  }
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      if (t + kPrefetchDistance < a.length) {
        const int64_t ahead = a.input_position(k, t + kPrefetchDistance);
        for (int j = 0; j < blk.width; ++j) __builtin_prefetch(a.u + blk.input_offset(a, ahead, j));
      }
      const int64_t q = a.input_position(k, t);
      for (int j = 0; j < blk.width; ++j, ++dt, ++dtu) {
        *dtu = *dt * load(a.u + blk.input_offset(a, q, j), blk.channels(j));
      }
    }
  }
}

// Advances the states h (K N width vectors) over steps [t0, t1) whose step sizes are in dt / dtu (from
// `step_sizes`); stores each step's states into `states` (K N width vectors per step) when given, and the output into
// y when given. Width (the tile's blocks) is a compile-time constant, so that a step's Width read-outs are
// independent sums kept in registers and the blocks' updates of one state interleave.
template <typename Real, int Width>
void advance_tile(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t t0, int64_t t1, const Vec<Real>* dt,
                  const Vec<Real>* dtu, Vec<Real>* h, Vec<Real>* states, Real* y) {
  const int64_t K = a.directions, N = a.state;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t k = 0; k < K; ++k, dt += Width, dtu += Width) {
      const int64_t p = a.position(k, t), q = a.input_position(k, t);
      if (t + kPrefetchDistance < a.length) {
        const int64_t ahead = a.position(k, t + kPrefetchDistance);
        const int64_t input_ahead = a.input_position(k, t + kPrefetchDistance);
        for (int64_t n = 0; n < N; n += kLanes<Real>) {  // B and C: one line per 64 bytes of N
          __builtin_prefetch(blk.B(a, input_ahead, k) + n);
          __builtin_prefetch(blk.C(a, input_ahead, k) + n);
        }
        for (int j = 0; y && j < Width; ++j) {
          __builtin_prefetch(y + (a.merge ? blk.sequence_offset(a, ahead, j) : blk.direction_offset(a, ahead, k, j)),
                             1);
        }
      }
      const Real* b = blk.B(a, q, k);
      const Real* c = blk.C(a, q, k);
      const Vec<Real>* A2 = blk.A2 + k * N * Width;
      Vec<Real>* hk = h + k * N * Width;
      Vec<Real> step_dt[Width], step_dtu[Width], acc[Width];
      for (int j = 0; j < Width; ++j) {
        step_dt[j] = dt[j];
        step_dtu[j] = dtu[j];
        acc[j] = Vec<Real>{};
      }
      for (int64_t n = 0; n < N; ++n) {
        const Real b_n = b[n], c_n = c[n];
        for (int j = 0; j < Width; ++j) {
          Vec<Real>& hn = hk[n * Width + j];
          hn = vexp2<kGateDegree>(step_dt[j] * A2[n * Width + j]) * hn + step_dtu[j] * b_n;
          acc[j] += c_n * hn;
        }
      }
      if (y) {
        for (int j = 0; j < Width; ++j) {
          const int count = blk.channels(j);
          if (a.merge && K > 1) {  // added to the skip term and the other directions' outputs
            Real* yp = y + blk.sequence_offset(a, p, j);
            store(yp, load(yp, count) + acc[j], count);
          } else if (a.merge) {  // one direction: y = its output plus the skip term, stored once
            const Vec<Real> u = load(a.u + blk.input_offset(a, q, j), count);
            store(y + blk.sequence_offset(a, p, j), acc[j] + blk.D_sum[j] * u, count);
          } else {
            const Vec<Real> u = load(a.u + blk.input_offset(a, q, j), count);
            store(y + blk.direction_offset(a, p, k, j), acc[j] + blk.D[k * Width + j] * u, count);
          }
        }
      }
      if (states) states = std::copy(hk, hk + N * Width, states);
    }
  }
}

// advance_tile for the tile's width, one instance per width 1..kMaxWidth
template <typename Real, int Width = kMaxWidth>
void advance(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t t0, int64_t t1, const Vec<Real>* dt,
             const Vec<Real>* dtu, Vec<Real>* h, Vec<Real>* states, Real* y) {
  if constexpr (Width > 1) {
    if (blk.width < Width) return advance<Real, Width - 1>(a, blk, t0, t1, dt, dtu, h, states, y);
  }
  advance_tile<Real, Width>(a, blk, t0, t1, dt, dtu, h, states, y);
}

// The delta projection weight (K, E, R) as rows (K, R, E): kLanes x kLanes blocks transposed in registers
template <typename Real>
void projection_rows(const Real* weight, int64_t K, int64_t E, int64_t R, Real* rows) {
  constexpr int lanes = kLanes<Real>;
  Vec<Real> v[lanes];
  for (int64_t k = 0; k < K; ++k, weight += E * R, rows += R * E) {
    for (int64_t e0 = 0; e0 < E; e0 += lanes) {
      const int channels = int(std::min<int64_t>(lanes, E - e0));
      for (int64_t r0 = 0; r0 < R; r0 += lanes) {
        const int ranks = int(std::min<int64_t>(lanes, R - r0));
        for (int i = 0; i < lanes; ++i) v[i] = i < channels ? load(weight + (e0 + i) * R + r0, ranks) : Vec<Real>{};
        transpose<Real>(v);
        for (int i = 0; i < ranks; ++i) store(rows + (r0 + i) * E + e0, v[i], channels);
      }
    }
  }
}

template <typename Real>
int forward(const ScanArgs<Real>& all, Real* y, int num_threads) {
  // an unmerged output gives every direction its own tasks (each writes its own slice of y): more, smaller tasks
  // for the threads to share at batch 1. Merged directions add into the same y: a task scans them all.
  const int64_t split = !all.merge && all.directions > 1 ? all.directions : 1;
  const int64_t K = all.directions / split, N = all.state, L = all.length, blocks = all.blocks();
  // tiles of up to kMaxWidth blocks per item (batch index and direction), as many as keep every thread busy (a
  // multiple of the threads an item needs)
  const int64_t items = all.batch * split;
  const int64_t per_item = std::max<int64_t>(1, (num_threads + items - 1) / std::max<int64_t>(1, items));
  int64_t tiles = std::max(per_item, (blocks + kMaxWidth - 1) / kMaxWidth);
  tiles = std::min(blocks, (tiles + per_item - 1) / per_item * per_item);
  const int width = int(std::max<int64_t>(1, (blocks + tiles - 1) / std::max<int64_t>(1, tiles)));
  tiles = (blocks + width - 1) / width;
  const int64_t tasks = items * tiles;
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, tasks)));
  const int64_t tile_vectors = ChannelBlock<Real>::vectors(K, N, width);
  // tile, states, step sizes, a chunk's low-rank inputs
  const int64_t low_vectors = (all.rank * kChunk + kLanes<Real> - 1) / kLanes<Real>;
  const int64_t per_thread = tile_vectors + (K * N + 2 * kChunk * K) * width + low_vectors;
  std::vector<Vec<Real>> scratch;
  try {
    scratch.resize(per_thread * threads);
  } catch (const std::bad_alloc&) {
    return 1;
  }
#pragma omp parallel num_threads(threads)
  {
    const FlushDenormals flush;
    Vec<Real>* tile_buffer = scratch.data() + omp_get_thread_num() * per_thread;
    Vec<Real>* h = tile_buffer + tile_vectors;
    Vec<Real>* dt = h + K * N * width;
    Vec<Real>* dtu = dt + kChunk * K * width;
    Real* lows = reinterpret_cast<Real*>(dtu + kChunk * K * width);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t item = task / tiles, k = item % split, first_block = (task % tiles) * width;
      const ScanArgs<Real> a = split > 1 ? all.direction(k) : all;
      Real* y_a = split > 1 ? y + k * all.channels : y;  // y[b, p, k] is the direction's y[b, p, 0]
      const ChannelBlock<Real> blk(a, item / split, first_block, int(std::min<int64_t>(width, blocks - first_block)),
                                   tile_buffer);
      if (a.merge && a.directions != 1) {  // y starts as the skip term, sum_k D_k u (one direction stores both at once)
        for (int64_t p = 0; p < L; ++p) {
          const int64_t q = p % a.period;
          for (int j = 0; j < blk.width; ++j) {
            const Vec<Real> u = load(a.u + blk.input_offset(a, q, j), blk.channels(j));
            store(y_a + blk.sequence_offset(a, p, j), blk.D_sum[j] * u, blk.channels(j));
          }
        }
      }
      std::fill(h, h + K * N * blk.width, Vec<Real>{});
      for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
        const int64_t t1 = std::min(L, t0 + kChunk);
        step_sizes(a, blk, t0, t1, dt, dtu, static_cast<Vec<Real>*>(nullptr), lows);
        advance(a, blk, t0, t1, dt, dtu, h, static_cast<Vec<Real>*>(nullptr), y_a);
      }
    }
  }
  return 0;
}

// forward() with the delta projection weight (K, E, R) of rank R, or null: the weight is copied as rows first
template <typename Real>
int forward(ScanArgs<Real> args, const Real* delta_proj, int64_t rank, Real* y, int num_threads) {
  std::vector<Real> rows;
  if (delta_proj) {
    try {
      rows.resize(args.directions * rank * args.channels);
    } catch (const std::bad_alloc&) {
      return 1;
    }
    projection_rows(delta_proj, args.directions, args.channels, rank, rows.data());
    args.delta_proj = rows.data();
    args.rank = rank;
  }
  return forward(args, y, num_threads);
}

template <typename Real>
struct Grads {
  Real *du, *ddelta, *dA, *dB, *dC, *dD, *ddelta_bias;  // dA, dD, ddelta_bias per batch item; dB, dC per group
};

// Lane sums of each step's products lam dt u and h dy (2 N rows: its dB and dC entries, N consecutive reals each).
// With N >= kLanes a step's rows go straight to their entries, one transposed sum per kLanes rows; a smaller N keeps
// the rows of several steps with their destinations and flushes them kLanes rows at a time.
template <typename Real>
struct LaneSums {
  Vec<Real>* rows;  // capacity rows
  Real** destinations;
  int64_t capacity, state, count = 0;

  Vec<Real>* step_rows() { return rows + count; }
  void commit(Real* dB, Real* dC) {
    if (state >= kLanes<Real>) {
      add_lane_sums(rows, state, dB);
      add_lane_sums(rows + state, state, dC);
      return;
    }
    for (int64_t n = 0; n < state; ++n) {
      destinations[count + n] = dB + n;
      destinations[count + state + n] = dC + n;
    }
    count += 2 * state;
    if (count + 2 * state > capacity) flush();
  }
  void flush() {
    constexpr int lanes = kLanes<Real>;
    int64_t r = 0;
    for (; r + lanes <= count; r += lanes) {
      const Vec<Real> sums = transposed_sums<Real>(rows + r);
      for (int l = 0; l < lanes; ++l) *destinations[r + l] += sums[l];
    }
    for (; r < count; ++r) *destinations[r] += hsum<Real>(rows[r]);
    count = 0;
  }
};

// A thread's backward scratch for one block (a tile of width 1): its parameters, K N vectors of adjoint carried to
// the previous step, K N of dA sums, K of dD and delta_bias sums; K N of running states; checkpointed states
// (segments - 1) K N; the segment's states (segment + 1) K N (the first row holds the states before it), its step
// sizes, dt u and slopes, 3 segment K; and 2 kLanes K N rows of lane sums
template <typename Real>
struct BackwardScratch {
  Vec<Real>*block, *carry, *dA, *dD, *dbias, *h, *checkpoints, *states, *dt, *dtu, *slope;
  LaneSums<Real> sums;

  static int64_t vectors(int64_t K, int64_t N, int64_t segment, int64_t segments) {
    return ChannelBlock<Real>::vectors(K, N, 1) + 3 * K * N + 2 * K + (segments - 1) * K * N + (segment + 1) * K * N +
           3 * segment * K + 2 * kLanes<Real> * K * N;
  }
  BackwardScratch(Vec<Real>* base, Real** destinations, int64_t K, int64_t N, int64_t segment, int64_t segments) {
    block = base;
    carry = block + ChannelBlock<Real>::vectors(K, N, 1);
    dA = carry + K * N;
    dD = dA + K * N;
    dbias = dD + K;
    h = dbias + K;
    checkpoints = h + K * N;
    states = checkpoints + (segments - 1) * K * N;
    dt = states + (segment + 1) * K * N;
    dtu = dt + segment * K;
    slope = dtu + segment * K;
    sums.rows = slope + segment * K;
    sums.destinations = destinations;
    sums.capacity = 2 * kLanes<Real> * K * N;
    sums.state = N;
  }
};

// Adjoint of steps [t1 - 1 .. t0] of one block; s.states holds the states before t0 and after each step, s.dt / dtu /
// slope the step sizes; `dB`, `dC`: where the block's batch item's dB / dC sums go
template <typename Real>
void adjoint_segment(const ScanArgs<Real>& args, const ChannelBlock<Real>& blk, int64_t t0, int64_t t1,
                     const Real* dy, BackwardScratch<Real>& s, const Grads<Real>& g, Real* dB, Real* dC) {
  // local copies: stores through the destination pointers could otherwise alias their pointer fields
  const ScanArgs<Real> a = args;
  LaneSums<Real> sums = s.sums;
  const int64_t K = a.directions, N = a.state;
  for (int64_t t = t1 - 1; t >= t0; --t) {
    for (int64_t k = 0; k < K; ++k) {
      if (t >= kPrefetchDistance) {
        const int64_t ahead = a.position(k, t - kPrefetchDistance);
        const int64_t ahead_sequence = blk.sequence_offset(a, ahead);
        __builtin_prefetch(dy + (a.merge ? ahead_sequence : blk.direction_offset(a, ahead, k)));
        __builtin_prefetch(a.u + ahead_sequence);
        __builtin_prefetch(g.du + ahead_sequence, 1);
        __builtin_prefetch(g.ddelta + blk.direction_offset(a, ahead, k), 1);
        for (int64_t n = 0; n < N; n += kLanes<Real>) {  // B, C and their gradients: one line per 64 bytes of N
          __builtin_prefetch(blk.B(a, ahead, k) + n);
          __builtin_prefetch(blk.C(a, ahead, k) + n);
          __builtin_prefetch(dB + a.state_offset(0, ahead, k) + n, 1);
          __builtin_prefetch(dC + a.state_offset(0, ahead, k) + n, 1);
        }
      }
      const int64_t p = a.position(k, t), i = (t - t0) * K + k;
      const int64_t direction_offset = blk.direction_offset(a, p, k), sequence_offset = blk.sequence_offset(a, p);
      const Vec<Real> dy_k = load(dy + (a.merge ? sequence_offset : direction_offset), blk.count);
      const Vec<Real> dt = s.dt[i], dtu = s.dtu[i];
      const Vec<Real>* h = s.states + (t - t0 + 1) * K * N + k * N;
      const Vec<Real>* h_prev = h - K * N;
      const Vec<Real>* A2 = blk.A2 + k * N;
      const Real* b = blk.B(a, p, k);
      const Real* c = blk.C(a, p, k);
      Vec<Real>* carry = s.carry + k * N;
      Vec<Real>* dA = s.dA + k * N;
      Real* dB_p = dB + a.state_offset(0, p, k);
      Real* dC_p = dC + a.state_offset(0, p, k);
      Vec<Real>* products = sums.step_rows();
      Vec<Real> sum_b{}, sum_a{};  // over n: lam b, d(exponent) A / ln2
      for (int64_t n = 0; n < N; ++n) {
        const Vec<Real> lam = dy_k * c[n] + carry[n];
        const Vec<Real> gate = vexp2<kGateDegree>(dt * A2[n]);
        const Vec<Real> d_exponent = lam * gate * h_prev[n];  // gradient w.r.t. dt A
        carry[n] = gate * lam;
        sum_b += lam * b[n];
        sum_a += d_exponent * A2[n];
        dA[n] += d_exponent * dt;
        products[n] = lam * dtu;
        products[N + n] = h[n] * dy_k;
      }
      sums.commit(dB_p, dC_p);
      Real* du = g.du + sequence_offset;
      store(du, load(du, blk.count) + sum_b * dt, blk.count);
      const Vec<Real> u = load(a.u + sequence_offset, blk.count);
      const Vec<Real> ddelta = (Real(kLn2) * sum_a + sum_b * u) * s.slope[i];
      store(g.ddelta + direction_offset, ddelta, blk.count);
      s.dbias[k] += ddelta;
    }
  }
  sums.flush();
}

// The backward of one channel block: skip terms, checkpoints, then the segments from the last
template <typename Real>
void backward_block(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, const Real* dy, int64_t segment,
                    int64_t segments, BackwardScratch<Real>& s, const Grads<Real>& g, Real* dB, Real* dC) {
  const int64_t K = a.directions, N = a.state, L = a.length, E = a.channels, b = blk.batch_index;
  std::fill(s.carry, s.carry + 2 * K * N + 2 * K, Vec<Real>{});  // carry, dA, dD, dbias
  for (int64_t p = 0; p < L; ++p) {  // du starts as the skip term's gradient, sum_k D_k dy_k
    const int64_t offset = blk.sequence_offset(a, p);
    const Vec<Real> u = load(a.u + offset, blk.count);
    Vec<Real> du{};
    for (int64_t k = 0; k < K; ++k) {
      const Vec<Real> dy_k = load(dy + (a.merge ? offset : blk.direction_offset(a, p, k)), blk.count);
      du += blk.D[k] * dy_k;
      s.dD[k] += dy_k * u;
    }
    store(g.du + offset, du, blk.count);
  }
  if (segments > 1) {  // states at the end of every segment but the last
    Vec<Real>* h = s.h;
    std::fill(h, h + K * N, Vec<Real>{});
    for (int64_t i = 0; i + 1 < segments; ++i) {
      step_sizes(a, blk, i * segment, (i + 1) * segment, s.dt, s.dtu, static_cast<Vec<Real>*>(nullptr),
                 static_cast<Real*>(nullptr));
      advance(a, blk, i * segment, (i + 1) * segment, s.dt, s.dtu, h, static_cast<Vec<Real>*>(nullptr),
              static_cast<Real*>(nullptr));
      std::copy(h, h + K * N, s.checkpoints + i * K * N);
    }
  }
  for (int64_t i = segments - 1; i >= 0; --i) {
    const int64_t t0 = i * segment, t1 = std::min(L, t0 + segment);
    if (i == 0) {
      std::fill(s.states, s.states + K * N, Vec<Real>{});
    } else {
      std::copy(s.checkpoints + (i - 1) * K * N, s.checkpoints + i * K * N, s.states);
    }
    step_sizes(a, blk, t0, t1, s.dt, s.dtu, s.slope, static_cast<Real*>(nullptr));
    std::copy(s.states, s.states + K * N, s.h);
    advance(a, blk, t0, t1, s.dt, s.dtu, s.h, s.states + K * N, static_cast<Real*>(nullptr));
    adjoint_segment(a, blk, t0, t1, dy, s, g, dB, dC);
  }
  for (int64_t k = 0; k < K; ++k) {
    for (int l = 0; l < blk.count; ++l) {
      const int64_t ke = (b * K + k) * E + blk.first + l;
      for (int64_t n = 0; n < N; ++n) g.dA[ke * N + n] = s.dA[k * N + n][l];
      if (g.dD) g.dD[ke] = s.dD[k][l];
      if (g.ddelta_bias) g.ddelta_bias[ke] = s.dbias[k][l];
    }
  }
}

template <typename Real>
int backward(const ScanArgs<Real>& a, const Real* dy, const Grads<Real>& g, int64_t groups,
             int64_t state_budget_bytes, int num_threads) {
  const int64_t K = a.directions, N = a.state, L = a.length, blocks = a.blocks(), tasks = a.batch * groups;
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, tasks)));
  // steps whose states are recomputed at once: all when they fit the budget, else segments of >= sqrt(L) steps
  // restarted from states checkpointed by a first forward pass
  const int64_t step_bytes = int64_t(sizeof(Vec<Real>)) * std::max<int64_t>(1, K * (N + 3));
  const int64_t fit = state_budget_bytes / step_bytes;
  const int64_t segment = std::max<int64_t>(1, std::min(L, std::max(fit, int64_t(std::ceil(std::sqrt(double(L)))))));
  const int64_t segments = (L + segment - 1) / segment;
  const int64_t per_thread = BackwardScratch<Real>::vectors(K, N, segment, segments);
  const int64_t lane_rows = 2 * kLanes<Real> * K * N;
  std::vector<Vec<Real>> scratch;
  std::vector<Real*> destinations;
  try {
    scratch.resize(per_thread * threads);
    destinations.resize(lane_rows * threads);
  } catch (const std::bad_alloc&) {
    return 1;
  }
#pragma omp parallel num_threads(threads)
  {
    const FlushDenormals flush;
    const int thread = omp_get_thread_num();
    BackwardScratch<Real> s(scratch.data() + thread * per_thread, destinations.data() + thread * lane_rows, K, N,
                            segment, segments);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / groups, group = task % groups;
      Real* dB = g.dB + (group * a.batch + b) * L * K * N;
      Real* dC = g.dC + (group * a.batch + b) * L * K * N;
      for (int64_t block = blocks * group / groups; block < blocks * (group + 1) / groups; ++block) {
        const ChannelBlock<Real> blk(a, b, block, 1, s.block);
        backward_block(a, blk, dy, segment, segments, s, g, dB, dC);
      }
    }
  }
  return 0;
}

template <typename Real>
ScanArgs<Real> make_args(const Real* u, const Real* delta, const Real* A, const Real* B, const Real* C, const Real* D,
                         const Real* delta_bias, const int64_t* order, int64_t batch, int64_t length,
                         int64_t directions, int64_t channels, int64_t state, int delta_softplus, int merge) {
  return ScanArgs<Real>{u,     delta,  A,          B,        C,     D, delta_bias, order, batch,
                        length, directions, channels, state, delta_softplus != 0, merge != 0};
}

}  // namespace

// 1 when every row of order (K, L) is a permutation of 0..L-1, else 0 (the kernels read y, du, ... at these positions)
extern "C" int selective_scan_orders_are_permutations(const int64_t* order, int64_t directions, int64_t length) {
  std::vector<char> seen(length);
  for (int64_t k = 0; k < directions; ++k, order += length) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t t = 0; t < length; ++t) {
      if (order[t] < 0 || order[t] >= length || seen[order[t]]) return 0;
      seen[order[t]] = 1;
    }
  }
  return 1;
}

// C entry points: 0 on success, 1 when scratch memory could not be allocated. The forward's delta_proj (K, E, R) may
// be null (then delta is (batch, L, K, E) and rank is ignored); its per-pixel inputs have `period` positions per batch
// item (period divides length), read at input_order (K, length) = order mod period (order itself when period ==
// length). The backward takes period == length and adds dB / dC into
// (groups, batch, L, K, N) slices (zeroed by the caller) and writes dA (batch, K, E, N) and dD, ddelta_bias
// (batch, K, E) per batch item.
#define SELECTIVE_SCAN_ENTRY_POINTS(Real, suffix)                                                                    \
  extern "C" int selective_scan_forward_##suffix(const Real* u, const Real* delta, const Real* A, const Real* B,     \
                                                 const Real* C, const Real* D, const Real* delta_bias,                \
                                                 const Real* delta_proj, int64_t rank, const int64_t* order,          \
                                                 const int64_t* input_order, int64_t period, Real* y, int64_t batch,  \
                                                 int64_t length, int64_t directions, int64_t channels, int64_t state, \
                                                 int delta_softplus, int merge, int num_threads) {                    \
    ScanArgs<Real> args = make_args(u, delta, A, B, C, D, delta_bias, order, batch, length, directions, channels,     \
                                    state, delta_softplus, merge);                                                    \
    args.input_order = input_order;                                                                                   \
    args.period = period;                                                                                             \
    return forward(args, delta_proj, rank, y, num_threads);                                                           \
  }                                                                                                                   \
  extern "C" int selective_scan_backward_##suffix(                                                                    \
      const Real* dy, const Real* u, const Real* delta, const Real* A, const Real* B, const Real* C, const Real* D,   \
      const Real* delta_bias, const int64_t* order, Real* du, Real* ddelta, Real* dA, Real* dB, Real* dC, Real* dD,   \
      Real* ddelta_bias, int64_t batch, int64_t length, int64_t directions, int64_t channels, int64_t state,          \
      int delta_softplus, int merge, int64_t groups, int64_t state_budget_bytes, int num_threads) {                   \
    return backward(make_args(u, delta, A, B, C, D, delta_bias, order, batch, length, directions, channels, state,   \
                              delta_softplus, merge),                                                                 \
                    dy, Grads<Real>{du, ddelta, dA, dB, dC, dD, ddelta_bias}, groups, state_budget_bytes,             \
                    num_threads);                                                                                     \
  }

SELECTIVE_SCAN_ENTRY_POINTS(float, f32)
SELECTIVE_SCAN_ENTRY_POINTS(double, f64)
