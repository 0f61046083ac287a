// Mamba2D 2D selective scan for CPUs: forward and backward, loaded by vision2d/ops/scan2d_cpu.py through ctypes.
//
// The math is vision2d/ops/scan2d_ref.py. Every tensor is contiguous and channels-last, in the state type Real
// (float, or double for float64 inputs): u, delta_t, delta_l (B, H, W, E); A_t, A_l (E, N); B_t, B_l, C (B, H, W, N);
// D (E,) or null. Build: g++ -O3 -march=native -fopenmp -ffp-contract=fast -std=c++17 -shared -fPIC.
//
// Work is split into tasks (batch item, block of kLanes consecutive channels) run by OpenMP threads. A vector holds
// the kLanes channels of a block, so y, du and the delta gradients need no horizontal sums. A task scans its image
// row by row keeping one row of state, (W + 1) x N vectors (column -1 is a zero pad), and never stores more.
// The backward recomputes the task's states (all rows, or segments of rows restarted from checkpointed rows when all
// would exceed state_budget_bytes per thread) and runs the adjoint sweep from the bottom-right corner. dB/dC sum over
// channel blocks and dA/dD over pixels too: each thread accumulates its own, and sums shared between threads are
// reduced in thread order, so results do not depend on timing.
#include <omp.h>
#include <algorithm>
#include <memory>
#include <new>
#include <vector>

#include "vector_math.h"

namespace {

template <typename Real>
struct ScanArgs {
  const Real *u, *delta_t, *delta_l, *A_t, *A_l, *B_t, *B_l, *C, *D;
  int64_t batch, height, width, channels, state;
  bool delta_softplus, reverse;

  int64_t blocks() const { return (channels + kLanes<Real> - 1) / kLanes<Real>; }
  // memory index within an image of the pixel the scan visits at row i, column j
  int64_t pixel(int64_t i, int64_t j) const {
    const int64_t q = i * width + j;
    return reverse ? height * width - 1 - q : q;
  }
};

// The neighbours whose updates make a pixel's state: the left one on row 0, the top one on column 0 below it, both
// weighted 1/2 elsewhere. The weight is folded into the gate, w exp(delta A) = 2^(delta A log2(e) + log2(w)), and
// into the inputs.
enum Neighbours { kLeftOnly, kTopOnly, kBoth };

template <typename Real, Neighbours kFrom>
struct Weighting {
  static constexpr bool left = kFrom != kTopOnly, top = kFrom != kLeftOnly;
  static constexpr Real weight = kFrom == kBoth ? Real(0.5) : Real(1);
  static constexpr Real log2_weight = kFrom == kBoth ? Real(-1) : Real(0);
};

// The inputs of one pixel for one channel block; the deltas (after softplus) and slopes come from `row_deltas`
template <typename Real>
struct PixelInputs {
  Vec<Real> u, dt, dl, slope_t, slope_l;

  PixelInputs(const ScanArgs<Real>& a, int64_t offset, int count, const Vec<Real>* deltas)
      : u(load(a.u + offset, count)), dt(deltas[0]), dl(deltas[1]), slope_t(deltas[2]), slope_l(deltas[3]) {}
};

// One channel block of one image: its channels, A log2(e) transposed to (N, kLanes) vectors (gates are powers of 2), D
template <typename Real>
struct ChannelBlock {
  int64_t batch_index, first;
  int count;
  const Vec<Real>* A_t;  // A_t log2(e)
  const Vec<Real>* A_l;  // A_l log2(e)
  Vec<Real> D;

  ChannelBlock(const ScanArgs<Real>& a, int64_t task, Vec<Real>* a_buffer) {
    batch_index = task / a.blocks();
    first = (task % a.blocks()) * kLanes<Real>;
    count = int(std::min<int64_t>(kLanes<Real>, a.channels - first));
    for (int64_t n = 0; n < a.state; ++n) {
      a_buffer[n] = a_buffer[a.state + n] = Vec<Real>{};
      for (int l = 0; l < count; ++l) {
        a_buffer[n][l] = a.A_t[(first + l) * a.state + n] * Real(kLog2e);
        a_buffer[a.state + n][l] = a.A_l[(first + l) * a.state + n] * Real(kLog2e);
      }
    }
    A_t = a_buffer;
    A_l = a_buffer + a.state;
    D = a.D ? load(a.D + first, count) : Vec<Real>{};
  }
  int64_t offset(const ScanArgs<Real>& a, int64_t q) const {  // of pixel q's first channel in a (B, H, W, E) tensor
    return (batch_index * a.height * a.width + q) * a.channels + first;
  }
  int64_t state_offset(const ScanArgs<Real>& a, int64_t q) const {  // of pixel q in a (B, H, W, N) tensor
    return (batch_index * a.height * a.width + q) * a.state;
  }
};

// Step sizes of row i of a block, 4 vectors per pixel in scan order: delta_t and delta_l after softplus and, when
// asked for, their slopes (d softplus / d delta). Done for the whole row first, so that the independent softplus
// evaluations pipeline instead of lengthening each pixel's dependency chain.
template <typename Real>
void row_deltas(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t i, bool with_slopes,
                Vec<Real>* out) {
  for (int64_t j = 0; j < a.width; ++j, out += 4) {
    const int64_t offset = blk.offset(a, a.pixel(i, j));
    out[0] = load(a.delta_t + offset, blk.count);
    out[1] = load(a.delta_l + offset, blk.count);
    out[2] = out[3] = splat<Real>(1);
    if (a.delta_softplus) {
      out[0] = softplus<Real>(out[0], with_slopes ? &out[2] : nullptr);
      out[1] = softplus<Real>(out[1], with_slopes ? &out[3] : nullptr);
    }
  }
}

// State of one pixel: h[n] from the left state h_left[n] and the top state h_up[n]; adds sum_n C h to y
template <typename Real, Neighbours kFrom>
inline void scan_pixel(const ChannelBlock<Real>& blk, int64_t N, const PixelInputs<Real>& in, const Real* b_t,
                       const Real* b_l, const Real* c, const Vec<Real>* h_left, const Vec<Real>* h_up, Vec<Real>* h,
                       Vec<Real>& y) {
  typedef Weighting<Real, kFrom> W;
  const Vec<Real> dtu = W::weight * in.dt * in.u, dlu = W::weight * in.dl * in.u;
  for (int64_t n = 0; n < N; ++n) {
    Vec<Real> hn{};
    if (W::left) hn = vexp2(in.dl * blk.A_l[n] + W::log2_weight) * h_left[n] + dlu * b_l[n];
    if (W::top) hn = vexp2(in.dt * blk.A_t[n] + W::log2_weight) * h_up[n] + (dtu * b_t[n] + hn);
    h[n] = hn;
    y += c[n] * hn;
  }
}

// Scan row i of a block: `prev` holds row i - 1 (ignored for i = 0), `out` gets row i; both (W + 1) x N vectors
// with a zero column -1, and they may alias. Writes y when given. `deltas`: 4W vectors of scratch.
template <typename Real>
void scan_row(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t i, const Vec<Real>* prev,
              Vec<Real>* out, Real* y, Vec<Real>* deltas) {
  const int64_t N = a.state;
  row_deltas(a, blk, i, false, deltas);
  for (int64_t j = 0; j < a.width; ++j) {
    const int64_t q = a.pixel(i, j), offset = blk.offset(a, q);
    const PixelInputs<Real> in(a, offset, blk.count, deltas + 4 * j);
    const Real* b_t = a.B_t + blk.state_offset(a, q);
    const Real* b_l = a.B_l + blk.state_offset(a, q);
    const Real* c = a.C + blk.state_offset(a, q);
    const Vec<Real>* h_left = out + j * N;
    const Vec<Real>* h_up = prev + (j + 1) * N;
    Vec<Real>* h = out + (j + 1) * N;
    Vec<Real> acc = blk.D * in.u;
    if (i == 0) {
      scan_pixel<Real, kLeftOnly>(blk, N, in, b_t, b_l, c, h_left, h_up, h, acc);
    } else if (j == 0) {
      scan_pixel<Real, kTopOnly>(blk, N, in, b_t, b_l, c, h_left, h_up, h, acc);
    } else {
      scan_pixel<Real, kBoth>(blk, N, in, b_t, b_l, c, h_left, h_up, h, acc);
    }
    if (y) store(y + offset, acc, blk.count);
  }
}

template <typename Real>
struct Grads {
  Real *du, *ddelta_t, *ddelta_l, *dA_t, *dA_l, *dB_t, *dB_l, *dC, *dD;
};

// Where a task adds its image's dB_t, dB_l, dC, each (H, W, N): the outputs when its thread owns the whole image,
// else that thread's spill buffer
template <typename Real>
struct ImageSums {
  Real *dB_t, *dB_l, *dC;
};

// A task's adjoint sweep: the adjoint passed left (N) and up (W x N; entry j holds what row i + 1 passes to (i, j)
// until (i, j) replaces it with what it passes to (i - 1, j)), its dA sums (N each) and dD sum, 3N vectors of
// per-pixel products whose lane sums are dB_t, dB_l, dC, and the row's deltas (4W)
template <typename Real>
struct Adjoint {
  Vec<Real> *to_left, *to_up, *dA_t, *dA_l, *products, *deltas;
  Vec<Real> dD;
};

// Adjoint of one pixel (i, j) of a block: its states h, h_left, h_up; writes du, ddelta, adds to dB/dC and dA/dD
template <typename Real, Neighbours kFrom>
inline void adjoint_pixel(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t q, const Real* dy,
                          const Vec<Real>* deltas, const Vec<Real>* h, const Vec<Real>* h_left,
                          const Vec<Real>* h_up, Vec<Real>* to_up, Adjoint<Real>& adj, const Grads<Real>& g,
                          const ImageSums<Real>& sums) {
  typedef Weighting<Real, kFrom> W;
  const int64_t N = a.state, offset = blk.offset(a, q);
  const PixelInputs<Real> in(a, offset, blk.count, deltas);
  const Vec<Real> dy_p = load(dy + offset, blk.count);
  const Real* b_t = a.B_t + blk.state_offset(a, q);
  const Real* b_l = a.B_l + blk.state_offset(a, q);
  const Real* c = a.C + blk.state_offset(a, q);
  const Vec<Real> dtu = W::weight * in.dt * in.u, dlu = W::weight * in.dl * in.u;
  Vec<Real>* dB_t_products = adj.products;
  Vec<Real>* dB_l_products = adj.products + N;
  Vec<Real>* dC_products = adj.products + 2 * N;
  Vec<Real> sum_bt{}, sum_bl{}, sum_at{}, sum_al{};  // over n: lam b_t, lam b_l, da_t A_t / ln2, da_l A_l / ln2
  for (int64_t n = 0; n < N; ++n) {
    const Vec<Real> lam = dy_p * c[n] + (adj.to_left[n] + to_up[n]);
    if (W::left) {
      const Vec<Real> passed = vexp2(in.dl * blk.A_l[n] + W::log2_weight) * lam;  // w_l a_l lam
      const Vec<Real> da_l = passed * h_left[n];  // gradient w.r.t. the exponent delta_l A_l (natural base)
      adj.to_left[n] = passed;
      sum_bl += lam * b_l[n];
      sum_al += da_l * blk.A_l[n];
      adj.dA_l[n] += da_l * in.dl;
      dB_l_products[n] = lam * dlu;
    }
    if (W::top) {
      const Vec<Real> passed = vexp2(in.dt * blk.A_t[n] + W::log2_weight) * lam;
      const Vec<Real> da_t = passed * h_up[n];
      to_up[n] = passed;
      sum_bt += lam * b_t[n];
      sum_at += da_t * blk.A_t[n];
      adj.dA_t[n] += da_t * in.dt;
      dB_t_products[n] = lam * dtu;
    }
    dC_products[n] = h[n] * dy_p;
  }
  if (W::left) add_lane_sums(dB_l_products, N, sums.dB_l + q * N);
  if (W::top) add_lane_sums(dB_t_products, N, sums.dB_t + q * N);
  add_lane_sums(dC_products, N, sums.dC + q * N);
  store(g.du + offset, W::weight * (in.dl * sum_bl + in.dt * sum_bt) + blk.D * dy_p, blk.count);
  store(g.ddelta_l + offset, (Real(kLn2) * sum_al + W::weight * in.u * sum_bl) * in.slope_l, blk.count);
  store(g.ddelta_t + offset, (Real(kLn2) * sum_at + W::weight * in.u * sum_bt) * in.slope_t, blk.count);
  adj.dD += dy_p * in.u;
}

// Adjoint sweep over row i of a block, right to left; `h_row`, `h_up_row`: states of rows i and i - 1 (with the
// zero column -1)
template <typename Real>
void adjoint_row(const ScanArgs<Real>& a, const ChannelBlock<Real>& blk, int64_t i, const Real* dy,
                 const Vec<Real>* h_row, const Vec<Real>* h_up_row, Adjoint<Real>& adj, const Grads<Real>& g,
                 const ImageSums<Real>& sums) {
  const int64_t N = a.state;
  std::fill(adj.to_left, adj.to_left + N, Vec<Real>{});
  row_deltas(a, blk, i, true, adj.deltas);
  for (int64_t j = a.width - 1; j >= 0; --j) {
    const int64_t q = a.pixel(i, j);
    const Vec<Real>* h = h_row + (j + 1) * N;
    const Vec<Real>* h_left = h_row + j * N;
    const Vec<Real>* h_up = h_up_row + (j + 1) * N;
    Vec<Real>* to_up = adj.to_up + j * N;
    if (i == 0) {
      adjoint_pixel<Real, kLeftOnly>(a, blk, q, dy, adj.deltas + 4 * j, h, h_left, h_up, to_up, adj, g, sums);
    } else if (j == 0) {
      adjoint_pixel<Real, kTopOnly>(a, blk, q, dy, adj.deltas + 4 * j, h, h_left, h_up, to_up, adj, g, sums);
    } else {
      adjoint_pixel<Real, kBoth>(a, blk, q, dy, adj.deltas + 4 * j, h, h_left, h_up, to_up, adj, g, sums);
    }
  }
}

// Split of `tasks` over `threads`: thread k runs tasks [begin(k), begin(k + 1))
inline int64_t task_begin(int64_t tasks, int threads, int k) { return tasks * k / threads; }

template <typename Real>
int forward(const ScanArgs<Real>& a, Real* y, int num_threads) {
  const int64_t tasks = a.batch * a.blocks();
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, tasks)));
  const int64_t per_thread = (a.width + 1) * a.state + 2 * a.state + 4 * a.width;  // state row, A, deltas
  std::vector<Vec<Real>> scratch;
  try {
    scratch.resize(per_thread * threads);
  } catch (const std::bad_alloc&) {
    return 1;
  }
#pragma omp parallel num_threads(threads)
  {
    const FlushDenormals flush;
    Vec<Real>* row = scratch.data() + omp_get_thread_num() * per_thread;
    Vec<Real>* a_buffer = row + (a.width + 1) * a.state;
    Vec<Real>* deltas = a_buffer + 2 * a.state;
    // tasks are independent: hand them out as threads come free
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const ChannelBlock<Real> blk(a, task, a_buffer);
      std::fill(row, row + (a.width + 1) * a.state, Vec<Real>{});
      for (int64_t i = 0; i < a.height; ++i) scan_row(a, blk, i, row, row, y, deltas);
    }
  }
  return 0;
}

template <typename Real>
int backward(const ScanArgs<Real>& a, const Real* dy, const Grads<Real>& g, int64_t state_budget_bytes,
             int num_threads) {
  const int64_t N = a.state, E = a.channels, H = a.height, W = a.width, pixels = H * W;
  const int64_t blocks = a.blocks(), tasks = a.batch * blocks;
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, tasks)));
  // rows of states recomputed at once: all of them when they fit the budget, else segments of >= sqrt(H) rows
  // restarted from rows checkpointed by a first forward pass
  const int64_t row_vecs = (W + 1) * N;
  const int64_t fit = row_vecs > 0 ? state_budget_bytes / int64_t(sizeof(Vec<Real>) * row_vecs) : H;
  const int64_t segment = std::min(H, std::max(fit, int64_t(std::ceil(std::sqrt(double(H))))));
  const int64_t segments = (H + segment - 1) / segment;
  const int64_t per_thread = 8 * N + W * N + 4 * W + (segment + segments) * row_vecs;  // vectors
  const int64_t spill_size = 3 * pixels * N;  // dB_t, dB_l, dC of one image
  const int64_t partial_size = 2 * E * N + E;  // dA_t, dA_l, dD
  std::vector<Vec<Real>> scratch;
  std::unique_ptr<Real[]> spill;  // per thread, dB/dC of its first and its last image when it shares them
  std::vector<Real> partial;
  try {
    scratch.resize(per_thread * threads);
    spill.reset(new Real[2 * spill_size * threads]);
    partial.assign(partial_size * threads, Real(0));
  } catch (const std::bad_alloc&) {
    return 1;
  }
  int team_size = threads;
#pragma omp parallel num_threads(threads)
  {
    const FlushDenormals flush;
    const int k = omp_get_thread_num(), team = omp_get_num_threads();
    if (k == 0) team_size = team;
    const int64_t begin = task_begin(tasks, team, k), end = task_begin(tasks, team, k + 1);
    Vec<Real>* a_buffer = scratch.data() + k * per_thread;  // A_t and A_l of the block
    Adjoint<Real> adj;
    adj.to_left = a_buffer + 2 * N;
    adj.dA_t = adj.to_left + N;
    adj.dA_l = adj.dA_t + N;
    adj.products = adj.dA_l + N;
    adj.to_up = adj.products + 3 * N;
    adj.deltas = adj.to_up + W * N;
    Vec<Real>* states = adj.deltas + 4 * W;  // segment + 1 rows: the row above the segment, then its rows
    Vec<Real>* checkpoints = states + (segment + 1) * row_vecs;  // the row above each segment but the first
    Real* partial_k = partial.data() + k * partial_size;
    for (int64_t task = begin; task < end; ++task) {
      const ChannelBlock<Real> blk(a, task, a_buffer);
      const int64_t b = blk.batch_index;
      const bool owned = begin <= b * blocks && (b + 1) * blocks <= end;
      Real* sums = owned ? nullptr : spill.get() + (2 * k + (b == begin / blocks ? 0 : 1)) * spill_size;
      const ImageSums<Real> image_sums{owned ? g.dB_t + b * pixels * N : sums,
                                       owned ? g.dB_l + b * pixels * N : sums + pixels * N,
                                       owned ? g.dC + b * pixels * N : sums + 2 * pixels * N};
      if (task == begin || task % blocks == 0) {  // the thread's first task on image b
        for (Real* image : {image_sums.dB_t, image_sums.dB_l, image_sums.dC}) std::fill(image, image + pixels * N, 0);
      }
      std::fill(adj.dA_t, adj.dA_t + 2 * N, Vec<Real>{});
      std::fill(adj.to_up, adj.to_up + W * N, Vec<Real>{});
      adj.dD = Vec<Real>{};
      if (segments > 1) {
        std::fill(states, states + row_vecs, Vec<Real>{});
        for (int64_t i = 0; i < (segments - 1) * segment; ++i) {
          scan_row<Real>(a, blk, i, states, states, nullptr, adj.deltas);
          if ((i + 1) % segment == 0) {
            std::copy(states, states + row_vecs, checkpoints + ((i + 1) / segment - 1) * row_vecs);
          }
        }
      }
      for (int64_t s = segments - 1; s >= 0; --s) {
        const int64_t first_row = s * segment, last_row = std::min(H, first_row + segment);
        if (s == 0) {
          std::fill(states, states + row_vecs, Vec<Real>{});
        } else {
          std::copy(checkpoints + (s - 1) * row_vecs, checkpoints + s * row_vecs, states);
        }
        for (int64_t i = first_row; i < last_row; ++i) {
          Vec<Real>* row = states + (i - first_row + 1) * row_vecs;
          std::fill(row, row + N, Vec<Real>{});
          scan_row<Real>(a, blk, i, row - row_vecs, row, nullptr, adj.deltas);
        }
        for (int64_t i = last_row - 1; i >= first_row; --i) {
          const Vec<Real>* row = states + (i - first_row + 1) * row_vecs;
          adjoint_row(a, blk, i, dy, row, row - row_vecs, adj, g, image_sums);
        }
      }
      for (int l = 0; l < blk.count; ++l) {
        const int64_t e = blk.first + l;
        for (int64_t n = 0; n < N; ++n) {
          partial_k[e * N + n] += adj.dA_t[n][l];
          partial_k[E * N + e * N + n] += adj.dA_l[n][l];
        }
        partial_k[2 * E * N + e] += adj.dD[l];
      }
    }
  }
  // reduce in thread order: dA/dD from every thread, dB/dC of the images threads share
  int64_t zeroed_through = -1;  // shared images come in increasing order
  std::fill(g.dA_t, g.dA_t + E * N, Real(0));
  std::fill(g.dA_l, g.dA_l + E * N, Real(0));
  if (g.dD) std::fill(g.dD, g.dD + E, Real(0));
  for (int k = 0; k < team_size; ++k) {
    const Real* p = partial.data() + k * partial_size;
    for (int64_t x = 0; x < E * N; ++x) {
      g.dA_t[x] += p[x];
      g.dA_l[x] += p[E * N + x];
    }
    if (g.dD)
      for (int64_t e = 0; e < E; ++e) g.dD[e] += p[2 * E * N + e];
    const int64_t begin = task_begin(tasks, team_size, k), end = task_begin(tasks, team_size, k + 1);
    if (begin == end) continue;
    const int64_t images[2] = {begin / blocks, (end - 1) / blocks};  // the first and the last image of thread k
    for (int slot = 0; slot < (images[1] > images[0] ? 2 : 1); ++slot) {
      const int64_t b = images[slot];
      if (begin <= b * blocks && (b + 1) * blocks <= end) continue;  // owned: written in place
      if (b > zeroed_through) {
        for (Real* out : {g.dB_t, g.dB_l, g.dC}) std::fill(out + b * pixels * N, out + (b + 1) * pixels * N, 0);
        zeroed_through = b;
      }
      const Real* sums = spill.get() + (2 * k + slot) * spill_size;
      for (int64_t x = 0; x < pixels * N; ++x) {
        g.dB_t[b * pixels * N + x] += sums[x];
        g.dB_l[b * pixels * N + x] += sums[pixels * N + x];
        g.dC[b * pixels * N + x] += sums[2 * pixels * N + x];
      }
    }
  }
  return 0;
}

template <typename Real>
ScanArgs<Real> make_args(const Real* u, const Real* delta_t, const Real* delta_l, const Real* A_t, const Real* A_l,
                         const Real* B_t, const Real* B_l, const Real* C, const Real* D, int64_t batch, int64_t height,
                         int64_t width, int64_t channels, int64_t state, int delta_softplus, int reverse) {
  return ScanArgs<Real>{u,     delta_t, delta_l, A_t,   A_l,           B_t,           B_l,         C, D,
                        batch, height,  width,   channels, state, delta_softplus != 0, reverse != 0};
}

}  // namespace

// C entry points: 0 on success, 1 when scratch memory could not be allocated.
#define SCAN2D_ENTRY_POINTS(Real, suffix)                                                                            \
  extern "C" int scan2d_forward_##suffix(const Real* u, const Real* delta_t, const Real* delta_l, const Real* A_t,   \
                                         const Real* A_l, const Real* B_t, const Real* B_l, const Real* C,           \
                                         const Real* D, Real* y, int64_t batch, int64_t height, int64_t width,       \
                                         int64_t channels, int64_t state, int delta_softplus, int reverse,           \
                                         int num_threads) {                                                          \
    return forward(make_args(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, batch, height, width, channels, state,  \
                             delta_softplus, reverse),                                                               \
                   y, num_threads);                                                                                  \
  }                                                                                                                  \
  extern "C" int scan2d_backward_##suffix(                                                                           \
      const Real* dy, const Real* u, const Real* delta_t, const Real* delta_l, const Real* A_t, const Real* A_l,     \
      const Real* B_t, const Real* B_l, const Real* C, const Real* D, Real* du, Real* ddelta_t, Real* ddelta_l,      \
      Real* dA_t, Real* dA_l, Real* dB_t, Real* dB_l, Real* dC, Real* dD, int64_t batch, int64_t height,            \
      int64_t width, int64_t channels, int64_t state, int delta_softplus, int reverse, int64_t state_budget_bytes,  \
      int num_threads) {                                                                                             \
    return backward(make_args(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, batch, height, width, channels, state, \
                              delta_softplus, reverse),                                                              \
                    dy, Grads<Real>{du, ddelta_t, ddelta_l, dA_t, dA_l, dB_t, dB_l, dC, dD}, state_budget_bytes,     \
                    num_threads);                                                                                    \
  }

SCAN2D_ENTRY_POINTS(float, f32)
SCAN2D_ENTRY_POINTS(double, f64)
