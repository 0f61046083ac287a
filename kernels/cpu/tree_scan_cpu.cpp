// GrootV tree scan for CPUs: the tree build (minimum spanning tree + breadth-first order) and both propagation
// passes, forward and backward; loaded by vision2d/ops/tree_scan_cpu.py through ctypes.
//
// The math, the tie rules and the layouts are those of vision2d/ops/tree_scan_ref.py: x, decay, y (B, L, D)
// vertex-major and contiguous in Real (float or double); order, parent (B, L) int64; edge weights (B, E) float32 in
// `grid_edges` order. Build: g++ -O3 -march=native -fopenmp -ffp-contract=fast -std=c++17 -shared -fPIC.
//
// The tree build computes the edge weights row by row in parallel, then runs one batch item per OpenMP task; the
// passes run one (batch item, block of channels) per task, each a sequential sweep over the vertices in breadth-first
// order (forward: leaves to root, then root to leaves, in place in y). The selective forward also computes its inputs
// (softplus of delta, decays, dt B x) in the same task. Every task writes only its own channels, so results do not
// depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "vector_math.h"

namespace {

struct DisjointSets {
  std::vector<int64_t> parent, rank;
  explicit DisjointSets(int64_t count) : parent(count), rank(count, 0) {
    for (int64_t i = 0; i < count; ++i) parent[i] = i;
  }
  int64_t find(int64_t i) {
    int64_t root = i;
    while (parent[root] != root) root = parent[root];
    while (parent[i] != root) {  // full path compression
      int64_t next = parent[i];
      parent[i] = root;
      i = next;
    }
    return root;
  }
  void unite(int64_t a, int64_t b) {  // union by rank; a's root wins a tie
    a = find(a);
    b = find(b);
    if (rank[a] < rank[b]) {
      parent[a] = b;
    } else if (rank[a] > rank[b]) {
      parent[b] = a;
    } else {
      parent[b] = a;
      rank[a] += 1;
    }
  }
};

// Vertical edges first, then horizontal, each row-major (grid_edges).
void grid_edges(int64_t height, int64_t width, std::vector<int64_t>& ends) {
  ends.clear();
  for (int64_t h = 0; h + 1 < height; ++h)
    for (int64_t w = 0; w < width; ++w) {
      ends.push_back(h * width + w);
      ends.push_back((h + 1) * width + w);
    }
  for (int64_t h = 0; h < height; ++h)
    for (int64_t w = 0; w + 1 < width; ++w) {
      ends.push_back(h * width + w);
      ends.push_back(h * width + w + 1);
    }
}

// Boruvka: tree edges (pairs) in the order they are added; ties go to the lowest edge index. Each round reads the
// sets' representatives from `component` (refreshed after the round's unions; finds never move a root, so the
// unions are those of a find per edge end) and scans only the edges still joining two sets, in index order.
void boruvka(const std::vector<int64_t>& ends, const float* weights, int64_t count, std::vector<int64_t>& tree) {
  const int64_t edges = static_cast<int64_t>(ends.size()) / 2;
  DisjointSets sets(count);
  std::vector<int64_t> cheapest(count, -1), component(count), live(edges);
  for (int64_t v = 0; v < count; ++v) component[v] = v;
  for (int64_t i = 0; i < edges; ++i) live[i] = i;
  tree.clear();
  int64_t components = count;
  while (components > 1) {
    int64_t kept = 0;
    for (const int64_t i : live) {
      const int64_t a = component[ends[2 * i]], b = component[ends[2 * i + 1]];
      if (a == b) continue;
      live[kept++] = i;
      if (cheapest[a] == -1 || weights[cheapest[a]] > weights[i]) cheapest[a] = i;
      if (cheapest[b] == -1 || weights[cheapest[b]] > weights[i]) cheapest[b] = i;
    }
    live.resize(kept);
    for (int64_t s = 0; s < count; ++s) {
      const int64_t pick = cheapest[s];
      if (pick == -1) continue;
      cheapest[s] = -1;
      const int64_t a = ends[2 * pick], b = ends[2 * pick + 1];
      if (sets.find(a) == sets.find(b)) continue;
      tree.push_back(a);
      tree.push_back(b);
      sets.unite(a, b);
      components -= 1;
    }
    for (int64_t v = 0; v < count; ++v) component[v] = sets.find(v);
  }
}

// Breadth-first order from vertex 0; children in the order their tree edges were added.
void breadth_first(const std::vector<int64_t>& tree, int64_t count, int64_t* order, int64_t* parent) {
  std::vector<int64_t> degree(count + 1, 0), neighbours(tree.size());
  for (int64_t end : tree) degree[end + 1] += 1;
  for (int64_t v = 0; v < count; ++v) degree[v + 1] += degree[v];  // now the start of v's neighbour list
  std::vector<int64_t> filled(degree.begin(), degree.end() - 1);
  for (std::size_t i = 0; i < tree.size(); i += 2) {
    neighbours[filled[tree[i]]++] = tree[i + 1];
    neighbours[filled[tree[i + 1]]++] = tree[i];
  }
  order[0] = 0;
  parent[0] = 0;
  int64_t queued = 1;
  for (int64_t i = 0; i < queued; ++i) {
    const int64_t v = order[i];
    for (int64_t j = degree[v]; j < degree[v + 1]; ++j) {
      const int64_t n = neighbours[j];
      if (n == parent[v]) continue;  // the root's parent is itself, never its neighbour
      parent[n] = v;
      order[queued++] = n;
    }
  }
}

// Edge weights exp(-cosine similarity) of `grid_edges` from a channels-last guide, computed in double and rounded to
// float: cos = <a, b> / (max(|a|, 1e-8) max(|b|, 1e-8)), as tree_scan_ref.edge_weights.
template <typename Real>
inline Vec<double> load_double(const Real* p) {  // kLanes<double> values widened to double
  typedef Real Part __attribute__((vector_size(kLanes<double> * sizeof(Real))));
  Part part;
  std::memcpy(&part, p, sizeof(part));
  return __builtin_convertvector(part, Vec<double>);
}

template <typename Real>
double dot(const Real* a, const Real* b, int64_t n) {
  constexpr int64_t L = kLanes<double>;
  Vec<double> acc0{}, acc1{};
  int64_t c = 0;
  for (; c + 2 * L <= n; c += 2 * L) {
    acc0 += load_double(a + c) * load_double(b + c);
    acc1 += load_double(a + c + L) * load_double(b + c + L);
  }
  if (c + L <= n) {
    acc0 += load_double(a + c) * load_double(b + c);
    c += L;
  }
  acc0 += acc1;
  double sum = 0;
  for (int l = 0; l < L; ++l) sum += acc0[l];
  for (; c < n; ++c) sum += double(a[c]) * double(b[c]);
  return sum;
}

inline float edge_weight(double dot_ab, double norm_a, double norm_b) {
  return static_cast<float>(std::exp(-dot_ab / (std::max(norm_a, 1e-8) * std::max(norm_b, 1e-8))));
}

// The weights of the edges whose first end is in row h: the vertical edge to row h + 1 and the horizontal ones.
template <typename Real>
void row_edge_weights(const Real* guide, const double* norms, int64_t h, int64_t height, int64_t width,
                      int64_t channels, float* weights) {
  const Real* row = guide + h * width * channels;
  if (h + 1 < height)
    for (int64_t w = 0; w < width; ++w) {
      const int64_t v = h * width + w;
      weights[v] = edge_weight(dot(row + w * channels, row + (width + w) * channels, channels), norms[v],
                               norms[v + width]);
    }
  float* horizontal = weights + (height - 1) * width + h * (width - 1);
  for (int64_t w = 0; w + 1 < width; ++w) {
    const int64_t v = h * width + w;
    horizontal[w] = edge_weight(dot(row + w * channels, row + (w + 1) * channels, channels), norms[v], norms[v + 1]);
  }
}

// Weights (rows of all batch items in parallel), then one tree per batch item.
template <typename Real>
int build_trees(const Real* guide, int64_t batch, int64_t height, int64_t width, int64_t channels, int64_t* order,
                int64_t* parent, int threads) {
  const int64_t count = height * width;
  if (count == 0 || batch == 0) return 0;
  const int64_t edges = (height - 1) * width + height * (width - 1);
  std::vector<double> norms;
  std::vector<float> weights;
  try {
    norms.resize(batch * count);
    weights.resize(batch * edges);
  } catch (const std::bad_alloc&) {
    return 1;
  }
  int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
  {
#pragma omp for schedule(static)
    for (int64_t v = 0; v < batch * count; ++v) {
      const Real* pixel = guide + v * channels;
      norms[v] = std::sqrt(dot(pixel, pixel, channels));
    }
#pragma omp for schedule(static)
    for (int64_t row = 0; row < batch * height; ++row) {
      const int64_t b = row / height;
      row_edge_weights(guide + b * count * channels, norms.data() + b * count, row % height, height, width, channels,
                       weights.data() + b * edges);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) {
      try {
        std::vector<int64_t> ends, tree;
        grid_edges(height, width, ends);
        boruvka(ends, weights.data() + b * edges, count, tree);
        breadth_first(tree, count, order + b * count, parent + b * count);
      } catch (const std::bad_alloc&) {
        failed = 1;
      }
    }
  }
  return failed;
}

// A task is one batch item and a block of at most kBlock consecutive channels: rows are vertices (stride D), and
// every step updates the block's channels of one vertex, a contiguous run the compiler vectorises. Blocks narrow (to
// 16 channels at least) until there are 4 tasks per thread, so that batch 1 keeps every thread busy; each channel's
// arithmetic is the same whatever the block, so results do not depend on the thread count.
constexpr int64_t kBlock = 64;

inline int64_t block_width(int64_t batch, int64_t channels, int threads) {
  int64_t width = kBlock;
  while (width > 16 && batch * ((channels + width - 1) / width) < 4 * int64_t(threads)) width /= 2;
  return width;
}

template <typename Real>
struct Rows {  // the block's channels of a (B, L, D) tensor's batch item
  Real* base;
  int64_t stride;
  Real* operator[](int64_t v) const { return base + v * stride; }
};

// Software prefetch of the rows a sweep reaches kAhead vertices later: breadth-first order jumps across the map, so
// the hardware prefetcher cannot follow it.
constexpr int64_t kAhead = 8;

template <typename Real>
inline void prefetch_row(const Real* row, int64_t width) {
  for (int64_t k = 0; k < width; k += 64 / sizeof(Real)) __builtin_prefetch(row + k);
}

// up[parent(v)] += w[v] up[v] in reverse breadth-first order: the leaves-to-root sums, in place
template <typename Real>
void accumulate_to_root(Rows<const Real> w, const int64_t* order, const int64_t* parent, int64_t count,
                        int64_t width, Rows<Real> up) {
  for (int64_t i = count - 1; i > 0; --i) {
    if (i > kAhead) {
      const int64_t ahead = order[i - kAhead];
      prefetch_row(up[ahead], width);
      prefetch_row(w[ahead], width);
      prefetch_row(up[parent[ahead]], width);
    }
    const int64_t v = order[i];
    Real* __restrict__ to = up[parent[v]];
    const Real* __restrict__ from = up[v];
    const Real* __restrict__ wv = w[v];
    for (int64_t k = 0; k < width; ++k) to[k] += wv[k] * from[k];
  }
}

template <typename Real>
void leaves_to_root(Rows<const Real> x, Rows<const Real> w, const int64_t* order, const int64_t* parent,
                    int64_t count, int64_t width, Rows<Real> up) {
  for (int64_t v = 0; v < count; ++v)
    for (int64_t k = 0; k < width; ++k) up[v][k] = x[v][k];
  accumulate_to_root(w, order, parent, count, width, up);
}

// y[root] = up[root]; y[v] = (1 - w[v]^2) up[v] + w[v] y[parent(v)]. `up` and `y` may be the same rows.
template <typename Real>
void root_to_leaves(Rows<const Real> up, Rows<const Real> w, const int64_t* order, const int64_t* parent,
                    int64_t count, int64_t width, Rows<Real> y) {
  if (count == 0) return;
  for (int64_t k = 0; k < width; ++k) y[order[0]][k] = up[order[0]][k];
  for (int64_t i = 1; i < count; ++i) {
    if (i + kAhead < count) {
      const int64_t ahead = order[i + kAhead];
      prefetch_row(up[ahead], width);
      prefetch_row(w[ahead], width);
      prefetch_row(y[ahead], width);
    }
    const int64_t v = order[i];
    const Real* wv = w[v];
    const Real* upv = up[v];
    const Real* yp = y[parent[v]];
    Real* yv = y[v];
    for (int64_t k = 0; k < width; ++k) yv[k] = (Real(1) - wv[k] * wv[k]) * upv[k] + wv[k] * yp[k];
  }
}

template <typename Real>
Rows<Real> rows(Real* t, int64_t b, int64_t d0, int64_t count, int64_t channels) {
  return Rows<Real>{t + b * count * channels + d0, channels};
}

template <typename Real>
int forward(const Real* x, const Real* w, const int64_t* order, const int64_t* parent, Real* y, int64_t batch,
            int64_t count, int64_t channels, int threads) {
  const int64_t block = block_width(batch, channels, threads), blocks = (channels + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t task = 0; task < batch * blocks; ++task) {
    const int64_t b = task / blocks, d0 = (task % blocks) * block;
    const int64_t width = std::min(block, channels - d0);
    const int64_t *order_b = order + b * count, *parent_b = parent + b * count;
    Rows<Real> out = rows(y, b, d0, count, channels);
    Rows<const Real> out_const{out.base, out.stride};
    leaves_to_root(rows(x, b, d0, count, channels), rows(w, b, d0, count, channels), order_b, parent_b, count,
                   width, out);
    root_to_leaves(out_const, rows(w, b, d0, count, channels), order_b, parent_b, count, width, out);
  }
  return 0;
}

// The selective tree scan: dt = softplus(delta + bias), decay = exp(dt A) and u = dt B x per vertex and channel (B one
// value per vertex), computed vertex by vertex over contiguous rows (u into y, the decays into scratch), then both
// passes over u with those decays.
template <typename Real>
void selective_inputs(const Real* x, const Real* delta, const Real* a_log2e, Real scale, const Real* bias,
                      int64_t channels, Real* u, Real* decay) {
  constexpr int L = kLanes<Real>;
  for (int64_t k = 0; k < channels; k += L) {
    const int n = static_cast<int>(std::min<int64_t>(L, channels - k));
    const Vec<Real> dt = softplus<Real>(load(delta + k, n) + load(bias + k, n), nullptr);
    store(decay + k, vexp2(dt * load(a_log2e + k, n)), n);
    store(u + k, dt * scale * load(x + k, n), n);
  }
}

template <typename Real>
int selective_forward(const Real* x, const Real* delta, const Real* A, const Real* B, const Real* bias,
                      const int64_t* order, const int64_t* parent, Real* y, int64_t batch, int64_t count,
                      int64_t channels, int threads) {
  const int64_t block = block_width(batch, channels, threads), blocks = (channels + block - 1) / block;
  std::vector<Real> a_log2e(channels), bias_or_zero(channels, Real(0));
  for (int64_t d = 0; d < channels; ++d) a_log2e[d] = A[d] * Real(kLog2e);
  if (bias != nullptr) std::copy(bias, bias + channels, bias_or_zero.begin());
  Real* decay = new (std::nothrow) Real[batch * count * channels];
  if (decay == nullptr) return 1;
#pragma omp parallel num_threads(threads)
  {
    FlushDenormals flush;
#pragma omp for schedule(static)
    for (int64_t v = 0; v < batch * count; ++v)
      selective_inputs(x + v * channels, delta + v * channels, a_log2e.data(), B[v], bias_or_zero.data(), channels,
                       y + v * channels, decay + v * channels);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < batch * blocks; ++task) {
      const int64_t b = task / blocks, d0 = (task % blocks) * block;
      const int64_t width = std::min(block, channels - d0);
      const int64_t *order_b = order + b * count, *parent_b = parent + b * count;
      Rows<Real> up = rows(y, b, d0, count, channels);
      Rows<const Real> w = rows<const Real>(decay, b, d0, count, channels), up_c{up.base, up.stride};
      accumulate_to_root(w, order_b, parent_b, count, width, up);
      root_to_leaves(up_c, w, order_b, parent_b, count, width, up);
    }
  }
  delete[] decay;
  return 0;
}

// GrootV's read-out of one vertex's D channels: out = LN2(LN1(h) * c + skip * x) * silu(z), LN_i with weight, bias
// and eps_i over the channels (biased variance, two passes).
template <typename Real>
struct Readout {
  const Real *skip, *w1, *b1, *w2, *b2;
  double eps1, eps2;
};

template <typename Real>
void normalise(const Real* in, int64_t channels, double eps, Real* mean, Real* inv_std) {
  constexpr int L = kLanes<Real>;
  Vec<Real> sum{}, squares{};
  for (int64_t k = 0; k < channels; k += L) sum += load(in + k, static_cast<int>(std::min<int64_t>(L, channels - k)));
  const Real m = hsum<Real>(sum) / Real(channels);
  for (int64_t k = 0; k < channels; k += L) {
    const int n = static_cast<int>(std::min<int64_t>(L, channels - k));
    Vec<Real> centred = load(in + k, n) - m;
    for (int l = n; l < L; ++l) centred[l] = 0;  // lanes past the last channel
    squares += centred * centred;
  }
  *mean = m;
  *inv_std = Real(1 / std::sqrt(double(hsum<Real>(squares)) / channels + eps));
}

template <typename Real>
void readout_row(const Real* h, const Real* x, const Real* z, Real c, const Readout<Real>& r, int64_t channels,
                 Real* out) {
  constexpr int L = kLanes<Real>;
  Real mean, inv_std;
  normalise(h, channels, r.eps1, &mean, &inv_std);
  for (int64_t k = 0; k < channels; k += L) {
    const int n = static_cast<int>(std::min<int64_t>(L, channels - k));
    const Vec<Real> normed = (load(h + k, n) - mean) * inv_std * load(r.w1 + k, n) + load(r.b1 + k, n);
    store(out + k, normed * c + load(r.skip + k, n) * load(x + k, n), n);
  }
  normalise(out, channels, r.eps2, &mean, &inv_std);
  const Vec<Real> one = splat<Real>(1);
  for (int64_t k = 0; k < channels; k += L) {
    const int n = static_cast<int>(std::min<int64_t>(L, channels - k));
    const Vec<Real> zk = load(z + k, n);
    const Vec<Real> gate = zk / (one + vexp2(-zk * Real(kLog2e)));
    store(out + k, ((load(out + k, n) - mean) * inv_std * load(r.w2 + k, n) + load(r.b2 + k, n)) * gate, n);
  }
}

// rows: B * L vertices; h, x, out (rows, D) contiguous, z rows `z_stride` apart, c one value per row.
template <typename Real>
int readout(const Real* h, const Real* x, const Real* z, int64_t z_stride, const Real* c, const Readout<Real>& r,
            Real* out, int64_t rows, int64_t channels, int threads) {
#pragma omp parallel num_threads(threads)
  {
    FlushDenormals flush;
#pragma omp for schedule(static)
    for (int64_t v = 0; v < rows; ++v)
      readout_row(h + v * channels, x + v * channels, z + v * z_stride, c[v], r, channels, out + v * channels);
  }
  return 0;
}

// dx = the same filter applied to dy (it is symmetric). For a non-root c with parent p:
// ddecay[c] = up_x[c] (dx[p] - w[c] up_dy[c]) + up_dy[c] (y[p] - w[c] up_x[c]); the root's is 0.
template <typename Real>
int backward(const Real* dy, const Real* x, const Real* w, const int64_t* order, const int64_t* parent,
             const Real* y, Real* dx, Real* dw, int64_t batch, int64_t count, int64_t channels, int threads) {
  const int64_t block = block_width(batch, channels, threads), blocks = (channels + block - 1) / block;
  int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
  {
    // per thread: the block's leaves-to-root sums of x and dy, rows of kBlock
    Real* scratch = new (std::nothrow) Real[2 * (count > 0 ? count : 1) * kBlock];
    if (scratch == nullptr) {
      failed = 1;
    } else {
      Rows<Real> up_x{scratch, kBlock}, up_dy{scratch + count * kBlock, kBlock};
      Rows<const Real> up_x_c{up_x.base, kBlock}, up_dy_c{up_dy.base, kBlock};
#pragma omp for schedule(static)
      for (int64_t task = 0; task < batch * blocks; ++task) {
        const int64_t b = task / blocks, d0 = (task % blocks) * block;
        const int64_t width = std::min(block, channels - d0);
        const int64_t *order_b = order + b * count, *parent_b = parent + b * count;
        Rows<const Real> wr = rows(w, b, d0, count, channels), yr = rows(y, b, d0, count, channels);
        Rows<Real> dxr = rows(dx, b, d0, count, channels), dwr = rows(dw, b, d0, count, channels);
        Rows<const Real> dxr_c{dxr.base, dxr.stride};
        leaves_to_root(rows(x, b, d0, count, channels), wr, order_b, parent_b, count, width, up_x);
        leaves_to_root(rows(dy, b, d0, count, channels), wr, order_b, parent_b, count, width, up_dy);
        root_to_leaves(up_dy_c, wr, order_b, parent_b, count, width, dxr);
        if (count > 0)
          for (int64_t k = 0; k < width; ++k) dwr[order_b[0]][k] = Real(0);
        for (int64_t i = 1; i < count; ++i) {
          const int64_t c = order_b[i], p = parent_b[c];
          const Real *wc = wr[c], *uxc = up_x_c[c], *udc = up_dy_c[c], *dxp = dxr_c[p], *yp = yr[p];
          Real* dwc = dwr[c];
          for (int64_t k = 0; k < width; ++k)
            dwc[k] = uxc[k] * (dxp[k] - wc[k] * udc[k]) + udc[k] * (yp[k] - wc[k] * uxc[k]);
        }
      }
    }
    delete[] scratch;
  }
  return failed;
}

}  // namespace

extern "C" {

// 0 when each row of order (B, L) is a permutation of 0..L-1 starting at the root 0, whose parent is itself, and every
// other vertex's parent in parent (B, L) comes before it in order; else the rule broken first (1, 2, 3: the keys of
// tree_scan_ref.TREE_ERRORS); -1 when out of memory.
int tree_check(const int64_t* order, const int64_t* parent, int64_t batch, int64_t count) {
  std::vector<int64_t> position;
  try {
    position.resize(count);
  } catch (const std::bad_alloc&) {
    return -1;
  }
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t *order_b = order + b * count, *parent_b = parent + b * count;
    std::fill(position.begin(), position.end(), -1);
    if (count > 0 && order_b[0] != 0) return 1;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t v = order_b[i];
      if (v < 0 || v >= count || position[v] != -1) return 1;
      position[v] = i;
    }
    if (count > 0 && parent_b[0] != 0) return 2;
    for (int64_t v = 0; v < count; ++v)
      if (parent_b[v] < 0 || parent_b[v] >= count) return 2;
    for (int64_t v = 1; v < count; ++v)
      if (position[parent_b[v]] >= position[v]) return 3;
  }
  return 0;
}

// guide (B, H, W, C) channels-last, float or double; writes order, parent (B, H*W) int64.
int tree_build_f32(const float* guide, int64_t batch, int64_t height, int64_t width, int64_t channels, int64_t* order,
                   int64_t* parent, int threads) {
  return build_trees(guide, batch, height, width, channels, order, parent, threads);
}

int tree_build_f64(const double* guide, int64_t batch, int64_t height, int64_t width, int64_t channels,
                   int64_t* order, int64_t* parent, int threads) {
  return build_trees(guide, batch, height, width, channels, order, parent, threads);
}

int tree_scan_forward_f32(const float* x, const float* w, const int64_t* order, const int64_t* parent, float* y,
                          int64_t batch, int64_t count, int64_t channels, int threads) {
  return forward(x, w, order, parent, y, batch, count, channels, threads);
}

int tree_scan_forward_f64(const double* x, const double* w, const int64_t* order, const int64_t* parent, double* y,
                          int64_t batch, int64_t count, int64_t channels, int threads) {
  return forward(x, w, order, parent, y, batch, count, channels, threads);
}

int tree_scan_backward_f32(const float* dy, const float* x, const float* w, const int64_t* order,
                           const int64_t* parent, const float* y, float* dx, float* dw, int64_t batch,
                           int64_t count, int64_t channels, int threads) {
  return backward(dy, x, w, order, parent, y, dx, dw, batch, count, channels, threads);
}

int tree_scan_backward_f64(const double* dy, const double* x, const double* w, const int64_t* order,
                           const int64_t* parent, const double* y, double* dx, double* dw, int64_t batch,
                           int64_t count, int64_t channels, int threads) {
  return backward(dy, x, w, order, parent, y, dx, dw, batch, count, channels, threads);
}

int tree_scan_selective_forward_f32(const float* x, const float* delta, const float* A, const float* B,
                                    const float* bias, const int64_t* order, const int64_t* parent, float* y,
                                    int64_t batch, int64_t count, int64_t channels, int threads) {
  return selective_forward(x, delta, A, B, bias, order, parent, y, batch, count, channels, threads);
}

int tree_scan_selective_forward_f64(const double* x, const double* delta, const double* A, const double* B,
                                    const double* bias, const int64_t* order, const int64_t* parent, double* y,
                                    int64_t batch, int64_t count, int64_t channels, int threads) {
  return selective_forward(x, delta, A, B, bias, order, parent, y, batch, count, channels, threads);
}

#define TREE_SCAN_READOUT(suffix, Real)                                                                              \
  int tree_scan_readout_##suffix(const Real* h, const Real* x, const Real* z, int64_t z_stride, const Real* c,        \
                                 const Real* skip, const Real* w1, const Real* b1, double eps1, const Real* w2,      \
                                 const Real* b2, double eps2, Real* out, int64_t rows, int64_t channels,             \
                                 int threads) {                                                                     \
    const Readout<Real> r{skip, w1, b1, w2, b2, eps1, eps2};                                                         \
    return readout(h, x, z, z_stride, c, r, out, rows, channels, threads);                                          \
  }
TREE_SCAN_READOUT(f32, float)
TREE_SCAN_READOUT(f64, double)
#undef TREE_SCAN_READOUT

}  // extern "C"
