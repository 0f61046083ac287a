// Two-pass 2D selective scan (2DMamba / 2DVMamba) in the four cross-scan directions for CPUs: forward and backward,
// loaded by vision2d/ops/selective_scan_2pass_cpu.py through ctypes.
//
// The math is vision2d/ops/selective_scan_2pass_ref.py. Every tensor is contiguous, in the state type Real (float, or
// double for float64 inputs): u (batch, L, E) with L = H W pixels row-major; delta (batch, L, 4, E); A (4, E, N);
// B, C (batch, L, 4, N); D, delta_bias (4, E) or null; y (batch, L, E) when merging, else (batch, L, 4, E).
// Build: g++ -O3 -march=native -fopenmp -ffp-contract=fast -std=c++17 -shared -fPIC.
//
// Every direction runs as one raster sweep over the image's rows, fusing both passes: directions 0 and 1 sweep from
// the top-left pixel, 2 and 3 (a pair) from the bottom-right, both of a pair in the same sweep. A direction keeps a
// row of states X[j] (the column pass's running values, one per column) and a carry Y along the current row:
//   rows then columns (k even):   Y = a Y + b,  X[j] = a X[j] + Y,  h = X[j]
//   columns then rows (k odd):    X[j] = a X[j] + b,  Y = a Y + X[j],  h = Y
// A row first gets its step sizes and gates (independent per pixel, so they pipeline), then runs the recurrence. A
// vector holds kLanes consecutive channels, so y, du and ddelta need no horizontal sums. Forward tasks are (batch
// item, channel block). The adjoint is the same two-pass scan swept from the opposite corner with the next pixel's
// gates: with P[j] = a lam_X of the row below and Q = a lam_Y of the pixel to the right,
//   k even: lam_X = C dy + P[j],  lam_Y = lam_X + Q,  d b = lam_Y       k odd: lam_Y = C dy + Q,  lam_X = lam_Y + P[j],
//   d b = lam_X;  d a = lam_X X_up + lam_Y Y_left (X_up: the state row before this row, Y_left: the carry before j).
// The backward recomputes the state rows (all of them when they fit state_budget_bytes, else segments of >= sqrt(H)
// rows restarted from checkpointed rows), each row's carries once more as it reaches it, and runs the adjoint. Its
// tasks are (batch item, group of channel blocks); dB and dC sum over channels, so each group adds into its own
// slice, dA, dD and delta_bias are written per batch item, and the caller sums: results do not depend on timing.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "vector_math.h"

namespace {

constexpr int64_t kDirections = 4;
constexpr int64_t kPairDirections = 2;  // the directions swept together: {0, 1} from the top-left, {2, 3} reversed
// pixels ahead whose lines are prefetched: a channel block reads one line of each pixel, a stride the hardware
// prefetchers follow too slowly
constexpr int64_t kPrefetchDistance = 8;

template <typename Real>
struct ScanArgs {
  const Real *u, *delta, *A, *B, *C, *D, *delta_bias;
  int64_t batch, height, width, channels, state;
  bool delta_softplus, merge;

  int64_t length() const { return height * width; }
  int64_t blocks() const { return (channels + kLanes<Real> - 1) / kLanes<Real>; }
  // the storage position of raster step q of the sweep of `pair` (pair 1 runs from the last pixel)
  int64_t position(int64_t pair, int64_t q) const { return pair ? length() - 1 - q : q; }
};

// One channel block of one batch item: A log2(e) as 4 x N vectors (gates are powers of 2), D and delta_bias per
// direction and the sum of D over directions (the skip term of the merged output)
template <typename Real>
struct ChannelBlock {
  int64_t batch_index, first;
  int count;
  const Vec<Real>*A2, *D, *bias;
  Vec<Real> D_sum{};

  // buffer: 4 (N + 2) vectors
  ChannelBlock(const ScanArgs<Real>& a, int64_t b, int64_t block, Vec<Real>* buffer)
      : batch_index(b), first(block * kLanes<Real>) {
    const int64_t N = a.state, E = a.channels;
    count = int(std::min<int64_t>(kLanes<Real>, E - first));
    Vec<Real>* a2 = buffer;
    Vec<Real>* d = buffer + kDirections * N;
    Vec<Real>* bias_k = d + kDirections;
    for (int64_t k = 0; k < kDirections; ++k) {
      for (int64_t n = 0; n < N; ++n) {
        a2[k * N + n] = Vec<Real>{};
        for (int l = 0; l < count; ++l) a2[k * N + n][l] = a.A[(k * E + first + l) * N + n] * Real(kLog2e);
      }
      d[k] = a.D ? load(a.D + k * E + first, count) : Vec<Real>{};
      bias_k[k] = a.delta_bias ? load(a.delta_bias + k * E + first, count) : Vec<Real>{};
      D_sum += d[k];
    }
    A2 = a2;
    D = d;
    bias = bias_k;
  }
  // offsets of (b, p, first channel) in a (batch, L, E) tensor, of (b, p, k, first) in a (batch, L, 4, E) one
  int64_t sequence_offset(const ScanArgs<Real>& a, int64_t p) const {
    return (batch_index * a.length() + p) * a.channels + first;
  }
  int64_t direction_offset(const ScanArgs<Real>& a, int64_t p, int64_t k) const {
    return ((batch_index * a.length() + p) * kDirections + k) * a.channels + first;
  }
  // offset of (b, p, k, 0) in a (batch, L, 4, N) tensor
  int64_t state_offset(const ScanArgs<Real>& a, int64_t p, int64_t k) const {
    return ((batch_index * a.length() + p) * kDirections + k) * a.state;
  }
};

// A row's step sizes and gates, per pixel j and direction d of the pair: dt, dt u and d dt / d delta (2 W vectors
// each), gates a (2 W N); and, for the adjoint, the carries Y after each pixel (2 W N)
template <typename Real>
struct RowRecord {
  Vec<Real>*dt, *dtu, *slope, *gate, *carry;

  static int64_t vectors(int64_t W, int64_t N) { return kPairDirections * W * (3 + 2 * N); }
  RowRecord() = default;
  RowRecord(Vec<Real>* base, int64_t W, int64_t N) {
    dt = base;
    dtu = dt + kPairDirections * W;
    slope = dtu + kPairDirections * W;
    gate = slope + kPairDirections * W;
    carry = gate + kPairDirections * W * N;
  }
};

// Step sizes and gates of row i (raster steps i W .. i W + W - 1) of both directions of `pair` into r (slopes only
// when `with_slope`): independent per pixel, so computed ahead of the recurrence, whose chain they would lengthen
template <typename Real>
void row_gates(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t pair, int64_t i,
               const RowRecord<Real>& r, bool with_slope) {
  const int64_t N = a.state, W = a.width;
  for (int64_t j = 0; j < W; ++j) {
    const int64_t p = a.position(pair, i * W + j);
    if (i * W + j + kPrefetchDistance < a.length()) {  // this pixel's lines in row_scan; the next pixels' here
      const int64_t ahead = a.position(pair, i * W + j + kPrefetchDistance);
      __builtin_prefetch(a.u + blk.sequence_offset(a, ahead));
      for (int64_t d = 0; d < kPairDirections; ++d) {
        __builtin_prefetch(a.delta + blk.direction_offset(a, ahead, 2 * pair + d));
      }
      __builtin_prefetch(a.B + blk.state_offset(a, ahead, 2 * pair));
      __builtin_prefetch(a.C + blk.state_offset(a, ahead, 2 * pair));
    }
    const Vec<Real> u = load(a.u + blk.sequence_offset(a, p), blk.count);
    for (int64_t d = 0; d < kPairDirections; ++d) {
      const int64_t k = 2 * pair + d, rj = d * W + j;
      Vec<Real> dt = load(a.delta + blk.direction_offset(a, p, k), blk.count) + blk.bias[k];
      if (with_slope) r.slope[rj] = splat<Real>(1);
      if (a.delta_softplus) dt = softplus<Real>(dt, with_slope ? r.slope + rj : nullptr);
      r.dt[rj] = dt;
      r.dtu[rj] = dt * u;
      const Vec<Real>* A2 = blk.A2 + k * N;
      for (int64_t n = 0; n < N; ++n) r.gate[rj * N + n] = vexp2(dt * A2[n]);
    }
  }
}

// The recurrence over row i of both directions of `pair`, from the gates in r: updates the state rows X (2 W N
// vectors, direction-major), adds the outputs into y when given (merged, or per direction with its skip term) and
// records the carries after every pixel when `keep_carries`
template <typename Real>
void row_scan(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t pair, int64_t i,
              const RowRecord<Real>& r, Vec<Real>* X, Vec<Real>* Y, Real* y, bool keep_carries) {
  const int64_t N = a.state, W = a.width;
  std::fill(Y, Y + kPairDirections * N, Vec<Real>{});
  for (int64_t j = 0; j < W; ++j) {
    const int64_t p = a.position(pair, i * W + j);
    Vec<Real> merged{};
    for (int64_t d = 0; d < kPairDirections; ++d) {
      const int64_t k = 2 * pair + d, rj = d * W + j;
      const Vec<Real> dtu = r.dtu[rj];
      const Vec<Real>* gate = r.gate + rj * N;
      const Real* b = a.B + blk.state_offset(a, p, k);
      const Real* c = a.C + blk.state_offset(a, p, k);
      Vec<Real>* x = X + rj * N;
      Vec<Real>* carry = Y + d * N;
      Vec<Real> acc{};
      for (int64_t n = 0; n < N; ++n) {
        if (k % 2 == 0) {  // rows then columns
          carry[n] = gate[n] * carry[n] + dtu * b[n];
          x[n] = gate[n] * x[n] + carry[n];
          acc += c[n] * x[n];
        } else {  // columns then rows
          x[n] = gate[n] * x[n] + dtu * b[n];
          carry[n] = gate[n] * carry[n] + x[n];
          acc += c[n] * carry[n];
        }
      }
      if (keep_carries) std::copy(carry, carry + N, r.carry + rj * N);
      if (!y) continue;
      if (a.merge) {
        merged += acc;
      } else {
        const Vec<Real> u = load(a.u + blk.sequence_offset(a, p), blk.count);
        store(y + blk.direction_offset(a, p, k), acc + blk.D[k] * u, blk.count);
      }
    }
    if (y && a.merge) {  // the first sweep writes the skip term sum_k D_k u, the second adds to it
      Real* yp = y + blk.sequence_offset(a, p);
      const Vec<Real> before = pair == 0 ? blk.D_sum * load(a.u + blk.sequence_offset(a, p), blk.count)
                                         : load(yp, blk.count);
      store(yp, before + merged, blk.count);
    }
  }
}

template <typename Real>
int forward(const ScanArgs<Real>& a, Real* y, int num_threads) {
  const int64_t N = a.state, W = a.width, tasks = a.batch * a.blocks();
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, tasks)));
  // block, state rows, carries, row record
  const int64_t per_thread = kDirections * (N + 2) + kPairDirections * (W + 1) * N + RowRecord<Real>::vectors(W, N);
  std::vector<Vec<Real>> scratch;
  try {
    scratch.resize(per_thread * threads);
  } catch (const std::bad_alloc&) {
    return 1;
  }
#pragma omp parallel num_threads(threads)
  {
    const FlushDenormals flush;
    Vec<Real>* block_buffer = scratch.data() + omp_get_thread_num() * per_thread;
    Vec<Real>* X = block_buffer + kDirections * (N + 2);
    Vec<Real>* Y = X + kPairDirections * W * N;
    const RowRecord<Real> record(Y + kPairDirections * N, W, N);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const ChannelBlock<Real> blk(a, task / a.blocks(), task % a.blocks(), block_buffer);
      for (int64_t pair = 0; pair < 2; ++pair) {
        std::fill(X, X + kPairDirections * W * N, Vec<Real>{});
        for (int64_t i = 0; i < a.height; ++i) {
          row_gates(a, blk, pair, i, record, false);
          row_scan(a, blk, pair, i, record, X, Y, y, false);
        }
      }
    }
  }
  return 0;
}

template <typename Real>
struct Grads {
  Real *du, *ddelta, *dA, *dB, *dC, *dD, *ddelta_bias;  // dA, dD, ddelta_bias per batch item; dB, dC per group
};

// A thread's backward scratch: 4 (N + 2) vectors of block parameters; 4 N of dA sums, 4 of dD and 4 of delta_bias
// sums; the adjoint rows P (2 W N) and carries Q (2 N); checkpointed state rows (segments - 1) 2 W N; the segment's
// state rows (segment + 1) 2 W N (the first is the row before it); a state row and carries for the recomputed row
// (2 W N + 2 N); its record; N lane-sum rows
template <typename Real>
struct BackwardScratch {
  Vec<Real>*block, *dA, *dD, *dbias, *P, *Q, *checkpoints, *rows, *X, *Y, *lane_rows;
  RowRecord<Real> record;

  static int64_t vectors(int64_t W, int64_t N, int64_t segment, int64_t segments) {
    const int64_t row = kPairDirections * W * N;
    return 2 * kDirections * (N + 2) + row + 2 * N + (segments - 1) * row + (segment + 1) * row + row + 2 * N +
           RowRecord<Real>::vectors(W, N) + N;
  }
  BackwardScratch(Vec<Real>* base, int64_t W, int64_t N, int64_t segment, int64_t segments) {
    const int64_t row = kPairDirections * W * N;
    block = base;
    dA = block + kDirections * (N + 2);
    dD = dA + kDirections * N;
    dbias = dD + kDirections;
    P = dbias + kDirections;
    Q = P + row;
    checkpoints = Q + 2 * N;
    rows = checkpoints + (segments - 1) * row;
    X = rows + (segment + 1) * row;
    Y = X + row;
    record = RowRecord<Real>(Y + 2 * N, W, N);
    lane_rows = record.dt + RowRecord<Real>::vectors(W, N);
  }
};

// The adjoint of row i of `pair`: X_up and X hold the state rows before and after row i (2 W N each), s.record the
// row's recomputed sweep; updates the adjoint rows s.P, writes ddelta and adds du, dA, dB, dC, delta_bias sums of the
// row's pixels (dB, dC: the group's (batch, L, 4, N) slice)
template <typename Real>
void adjoint_row(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t pair, int64_t i, const Real* dy,
                 const Vec<Real>* X_up, const Vec<Real>* X, BackwardScratch<Real>& s, const Grads<Real>& g, Real* dB,
                 Real* dC) {
  const int64_t N = a.state, W = a.width;
  const RowRecord<Real>& r = s.record;
  std::fill(s.Q, s.Q + kPairDirections * N, Vec<Real>{});
  for (int64_t j = W - 1; j >= 0; --j) {
    const int64_t p = a.position(pair, i * W + j);
    if (i * W + j >= kPrefetchDistance) {  // the gradients' lines of the pixels ahead (in reverse raster order)
      const int64_t ahead = a.position(pair, i * W + j - kPrefetchDistance);
      const int64_t ahead_sequence = blk.sequence_offset(a, ahead);
      __builtin_prefetch(g.du + ahead_sequence, 1);
      for (int64_t d = 0; d < kPairDirections; ++d) {
        const int64_t ahead_direction = blk.direction_offset(a, ahead, 2 * pair + d);
        __builtin_prefetch(dy + (a.merge ? ahead_sequence : ahead_direction));
        __builtin_prefetch(g.ddelta + ahead_direction, 1);
      }
    }
    const int64_t sequence_offset = blk.sequence_offset(a, p);
    const Vec<Real> u = load(a.u + sequence_offset, blk.count);
    Vec<Real> du{};
    for (int64_t d = 0; d < kPairDirections; ++d) {
      const int64_t k = 2 * pair + d, rj = d * W + j;
      const bool rows_first = k % 2 == 0;
      const int64_t direction_offset = blk.direction_offset(a, p, k);
      const Vec<Real> dy_k = load(dy + (a.merge ? sequence_offset : direction_offset), blk.count);
      const Vec<Real> dt = r.dt[rj], dtu = r.dtu[rj];
      const Real* b = a.B + blk.state_offset(a, p, k);
      const Real* c = a.C + blk.state_offset(a, p, k);
      const Vec<Real>* A2 = blk.A2 + k * N;
      const Vec<Real>* carry = r.carry + rj * N;  // Y after this pixel; before it: the previous record, 0 at j = 0
      Vec<Real>* P = s.P + rj * N;
      Vec<Real>* Q = s.Q + d * N;
      Vec<Real>* dA = s.dA + k * N;
      Vec<Real> sum_b{}, sum_a{};  // over n: lam_b B, d(exponent) A / ln2
      for (int64_t n = 0; n < N; ++n) {
        const Vec<Real> gate = r.gate[rj * N + n];
        Vec<Real> lam_x, lam_y;
        if (rows_first) {
          lam_x = dy_k * c[n] + P[n];
          lam_y = lam_x + Q[n];
        } else {
          lam_y = dy_k * c[n] + Q[n];
          lam_x = lam_y + P[n];
        }
        const Vec<Real> lam_b = rows_first ? lam_y : lam_x;
        Vec<Real> d_gate = lam_x * X_up[rj * N + n];
        if (j > 0) d_gate += lam_y * carry[n - N];
        const Vec<Real> d_exponent = d_gate * gate;  // gradient w.r.t. dt A
        P[n] = gate * lam_x;
        Q[n] = gate * lam_y;
        sum_b += lam_b * b[n];
        sum_a += d_exponent * A2[n];
        dA[n] += d_exponent * dt;
        s.lane_rows[n] = lam_b * dtu;
      }
      add_lane_sums<Real>(s.lane_rows, N, dB + blk.state_offset(a, p, k));
      for (int64_t n = 0; n < N; ++n) s.lane_rows[n] = (rows_first ? X[rj * N + n] : carry[n]) * dy_k;
      add_lane_sums<Real>(s.lane_rows, N, dC + blk.state_offset(a, p, k));
      du += sum_b * dt;
      const Vec<Real> ddelta = (Real(kLn2) * sum_a + sum_b * u) * r.slope[rj];
      store(g.ddelta + direction_offset, ddelta, blk.count);
      s.dbias[k] += ddelta;
    }
    Real* du_p = g.du + sequence_offset;
    store(du_p, load(du_p, blk.count) + du, blk.count);
  }
}

// The backward of one channel block: skip terms, then per pair the checkpointed state rows and the segments from the
// last row
template <typename Real>
void backward_block(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, const Real* dy, int64_t segment,
                    int64_t segments, BackwardScratch<Real>& s, const Grads<Real>& g, Real* dB, Real* dC) {
  const int64_t N = a.state, H = a.height, W = a.width, E = a.channels, b = blk.batch_index, K = kDirections;
  const int64_t row = kPairDirections * W * N;
  Real* no_output = nullptr;
  std::fill(s.dA, s.dA + K * N + 2 * K, Vec<Real>{});  // dA, dD, dbias
  for (int64_t p = 0; p < a.length(); ++p) {  // du starts as the skip term's gradient, sum_k D_k dy_k
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
  for (int64_t pair = 0; pair < 2; ++pair) {
    std::fill(s.P, s.P + row, Vec<Real>{});
    if (segments > 1) {  // state rows at the end of every segment but the last
      std::fill(s.X, s.X + row, Vec<Real>{});
      for (int64_t i = 0; i + 1 < segments; ++i) {
        for (int64_t r = i * segment; r < (i + 1) * segment; ++r) {
          row_gates(a, blk, pair, r, s.record, false);
          row_scan(a, blk, pair, r, s.record, s.X, s.Y, no_output, false);
        }
        std::copy(s.X, s.X + row, s.checkpoints + i * row);
      }
    }
    for (int64_t i = segments - 1; i >= 0; --i) {
      const int64_t r0 = i * segment, r1 = std::min(H, r0 + segment);
      if (i == 0) {
        std::fill(s.rows, s.rows + row, Vec<Real>{});
      } else {
        std::copy(s.checkpoints + (i - 1) * row, s.checkpoints + i * row, s.rows);
      }
      for (int64_t r = r0; r < r1; ++r) {  // rows[r - r0 + 1]: the state rows after row r
        Vec<Real>* after = s.rows + (r - r0 + 1) * row;
        std::copy(after - row, after, after);
        row_gates(a, blk, pair, r, s.record, false);
        row_scan(a, blk, pair, r, s.record, after, s.Y, no_output, false);
      }
      for (int64_t r = r1 - 1; r >= r0; --r) {  // each row swept once more, recording its carries, then its adjoint
        const Vec<Real>* before = s.rows + (r - r0) * row;
        std::copy(before, before + row, s.X);
        row_gates(a, blk, pair, r, s.record, true);
        row_scan(a, blk, pair, r, s.record, s.X, s.Y, no_output, true);
        adjoint_row(a, blk, pair, r, dy, before, before + row, s, g, dB, dC);
      }
    }
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
  const int64_t N = a.state, H = a.height, W = a.width, blocks = a.blocks(), tasks = a.batch * groups;
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, tasks)));
  // rows whose states are recomputed at once: all when they fit the budget, else segments of >= sqrt(H) rows
  // restarted from state rows checkpointed by a first sweep
  const int64_t row_bytes = int64_t(sizeof(Vec<Real>)) * kPairDirections * std::max<int64_t>(W, 1) * N;
  const int64_t fit = state_budget_bytes / std::max<int64_t>(row_bytes, 1);
  const int64_t segment = std::max<int64_t>(1, std::min(H, std::max(fit, int64_t(std::ceil(std::sqrt(double(H)))))));
  const int64_t segments = (H + segment - 1) / segment;
  const int64_t per_thread = BackwardScratch<Real>::vectors(W, N, segment, segments);
  std::vector<Vec<Real>> scratch;
  try {
    scratch.resize(per_thread * threads);
  } catch (const std::bad_alloc&) {
    return 1;
  }
#pragma omp parallel num_threads(threads)
  {
    const FlushDenormals flush;
    BackwardScratch<Real> s(scratch.data() + omp_get_thread_num() * per_thread, W, N, segment, segments);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / groups, group = task % groups;
      Real* dB = g.dB + group * a.batch * a.length() * kDirections * N;
      Real* dC = g.dC + group * a.batch * a.length() * kDirections * N;
      for (int64_t block = blocks * group / groups; block < blocks * (group + 1) / groups; ++block) {
        const ChannelBlock<Real> blk(a, b, block, s.block);
        backward_block(a, blk, dy, segment, segments, s, g, dB, dC);
      }
    }
  }
  return 0;
}

template <typename Real>
ScanArgs<Real> make_args(const Real* u, const Real* delta, const Real* A, const Real* B, const Real* C, const Real* D,
                         const Real* delta_bias, int64_t batch, int64_t height, int64_t width, int64_t channels,
                         int64_t state, int delta_softplus, int merge) {
  return ScanArgs<Real>{u, delta, A, B, C, D, delta_bias, batch, height, width, channels, state, delta_softplus != 0,
                        merge != 0};
}

}  // namespace

// C entry points: 0 on success, 1 when scratch memory could not be allocated. The backward adds dB / dC into
// (groups, batch, L, 4, N) slices (zeroed by the caller) and writes dA (batch, 4, E, N) and dD, ddelta_bias
// (batch, 4, E) per batch item.
#define SELECTIVE_SCAN_2PASS_ENTRY_POINTS(Real, suffix)                                                               \
  extern "C" int selective_scan_2pass_forward_##suffix(                                                                \
      const Real* u, const Real* delta, const Real* A, const Real* B, const Real* C, const Real* D,                    \
      const Real* delta_bias, Real* y, int64_t batch, int64_t height, int64_t width, int64_t channels, int64_t state,  \
      int delta_softplus, int merge, int num_threads) {                                                                \
    return forward(make_args(u, delta, A, B, C, D, delta_bias, batch, height, width, channels, state, delta_softplus,  \
                             merge),                                                                                   \
                   y, num_threads);                                                                                    \
  }                                                                                                                    \
  extern "C" int selective_scan_2pass_backward_##suffix(                                                               \
      const Real* dy, const Real* u, const Real* delta, const Real* A, const Real* B, const Real* C, const Real* D,    \
      const Real* delta_bias, Real* du, Real* ddelta, Real* dA, Real* dB, Real* dC, Real* dD, Real* ddelta_bias,       \
      int64_t batch, int64_t height, int64_t width, int64_t channels, int64_t state, int delta_softplus, int merge,    \
      int64_t groups, int64_t state_budget_bytes, int num_threads) {                                                  \
    return backward(make_args(u, delta, A, B, C, D, delta_bias, batch, height, width, channels, state, delta_softplus, \
                              merge),                                                                                  \
                    dy, Grads<Real>{du, ddelta, dA, dB, dC, dD, ddelta_bias}, groups, state_budget_bytes,              \
                    num_threads);                                                                                      \
  }

SELECTIVE_SCAN_2PASS_ENTRY_POINTS(float, f32)
SELECTIVE_SCAN_2PASS_ENTRY_POINTS(double, f64)
