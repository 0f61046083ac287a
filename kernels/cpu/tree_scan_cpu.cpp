// GrootV tree scan for CPUs: the tree build (minimum spanning tree + breadth-first order) and both propagation
// passes, forward and backward; loaded by vision2d/ops/tree_scan_cpu.py through ctypes.
//
// The math, the tie rules and the layouts are those of vision2d/ops/tree_scan_ref.py: x, decay, y (B, D, L)
// contiguous in Real (float or double); order, parent (B, L) int64; edge weights (B, E) float32 in `grid_edges`
// order. Build: g++ -O3 -march=native -fopenmp -ffp-contract=fast -std=c++17 -shared -fPIC.
//
// The tree build runs one batch item per OpenMP task; the passes run one (batch item, channel) row per task, each a
// sequential sweep over the vertices in breadth-first order (forward: leaves to root, then root to leaves, in place
// in y). Every task writes only its own rows, so results do not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

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

// Boruvka: tree edges (pairs) in the order they are added; ties go to the lowest edge index.
void boruvka(const std::vector<int64_t>& ends, const float* weights, int64_t count, std::vector<int64_t>& tree) {
  const int64_t edges = static_cast<int64_t>(ends.size()) / 2;
  DisjointSets sets(count);
  std::vector<int64_t> cheapest(count);
  tree.clear();
  int64_t components = count;
  while (components > 1) {
    std::fill(cheapest.begin(), cheapest.end(), -1);
    for (int64_t i = 0; i < edges; ++i) {
      const int64_t a = sets.find(ends[2 * i]), b = sets.find(ends[2 * i + 1]);
      if (a == b) continue;
      if (cheapest[a] == -1 || weights[cheapest[a]] > weights[i]) cheapest[a] = i;
      if (cheapest[b] == -1 || weights[cheapest[b]] > weights[i]) cheapest[b] = i;
    }
    for (int64_t s = 0; s < count; ++s) {
      const int64_t pick = cheapest[s];
      if (pick == -1) continue;
      const int64_t a = ends[2 * pick], b = ends[2 * pick + 1];
      if (sets.find(a) == sets.find(b)) continue;
      tree.push_back(a);
      tree.push_back(b);
      sets.unite(a, b);
      components -= 1;
    }
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

template <typename Real>
void leaves_to_root(const Real* x, const Real* w, const int64_t* order, const int64_t* parent, int64_t count,
                    Real* up) {
  for (int64_t v = 0; v < count; ++v) up[v] = x[v];
  for (int64_t i = count - 1; i > 0; --i) {
    const int64_t v = order[i];
    up[parent[v]] += w[v] * up[v];
  }
}

// y[root] = up[root]; y[v] = (1 - w[v]^2) up[v] + w[v] y[parent(v)]. `up` and `y` may alias.
template <typename Real>
void root_to_leaves(const Real* up, const Real* w, const int64_t* order, const int64_t* parent, int64_t count,
                    Real* y) {
  if (count == 0) return;
  y[order[0]] = up[order[0]];
  for (int64_t i = 1; i < count; ++i) {
    const int64_t v = order[i];
    const Real wv = w[v];
    y[v] = (Real(1) - wv * wv) * up[v] + wv * y[parent[v]];
  }
}

template <typename Real>
int forward(const Real* x, const Real* w, const int64_t* order, const int64_t* parent, Real* y, int64_t batch,
            int64_t channels, int64_t count, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t row = 0; row < batch * channels; ++row) {
    const int64_t b = row / channels, offset = row * count;
    leaves_to_root(x + offset, w + offset, order + b * count, parent + b * count, count, y + offset);
    root_to_leaves(y + offset, w + offset, order + b * count, parent + b * count, count, y + offset);
  }
  return 0;
}

// dx = the same filter applied to dy (it is symmetric). For a non-root c with parent p:
// ddecay[c] = up_x[c] (dx[p] - w[c] up_dy[c]) + up_dy[c] (y[p] - w[c] up_x[c]); the root's is 0.
template <typename Real>
int backward(const Real* dy, const Real* x, const Real* w, const int64_t* order, const int64_t* parent,
             const Real* y, Real* dx, Real* dw, int64_t batch, int64_t channels, int64_t count, int threads) {
  int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
  {
    Real* up_x = new (std::nothrow) Real[count > 0 ? count : 1];
    Real* up_dy = new (std::nothrow) Real[count > 0 ? count : 1];
    if (up_x == nullptr || up_dy == nullptr) {
      failed = 1;
    } else {
#pragma omp for schedule(static)
      for (int64_t row = 0; row < batch * channels; ++row) {
        const int64_t b = row / channels, offset = row * count;
        const int64_t* order_b = order + b * count;
        const int64_t* parent_b = parent + b * count;
        const Real* wr = w + offset;
        const Real* yr = y + offset;
        Real* dxr = dx + offset;
        Real* dwr = dw + offset;
        leaves_to_root(x + offset, wr, order_b, parent_b, count, up_x);
        leaves_to_root(dy + offset, wr, order_b, parent_b, count, up_dy);
        root_to_leaves(up_dy, wr, order_b, parent_b, count, dxr);
        if (count > 0) dwr[order_b[0]] = Real(0);
        for (int64_t i = 1; i < count; ++i) {
          const int64_t c = order_b[i], p = parent_b[c];
          dwr[c] = up_x[c] * (dxr[p] - wr[c] * up_dy[c]) + up_dy[c] * (yr[p] - wr[c] * up_x[c]);
        }
      }
    }
    delete[] up_x;
    delete[] up_dy;
  }
  return failed;
}

}  // namespace

extern "C" {

// weights (B, E) float32 in grid_edges order; writes order, parent (B, H*W) int64.
int tree_build(const float* weights, int64_t batch, int64_t height, int64_t width, int64_t* order, int64_t* parent,
               int threads) {
  const int64_t count = height * width;
  if (count == 0) return 0;
  const int64_t edges = (height - 1) * width + height * (width - 1);
  int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) reduction(| : failed)
  for (int64_t b = 0; b < batch; ++b) {
    try {
      std::vector<int64_t> ends, tree;
      grid_edges(height, width, ends);
      boruvka(ends, weights + b * edges, count, tree);
      breadth_first(tree, count, order + b * count, parent + b * count);
    } catch (const std::bad_alloc&) {
      failed = 1;
    }
  }
  return failed;
}

int tree_scan_forward_f32(const float* x, const float* w, const int64_t* order, const int64_t* parent, float* y,
                          int64_t batch, int64_t channels, int64_t count, int threads) {
  return forward(x, w, order, parent, y, batch, channels, count, threads);
}

int tree_scan_forward_f64(const double* x, const double* w, const int64_t* order, const int64_t* parent, double* y,
                          int64_t batch, int64_t channels, int64_t count, int threads) {
  return forward(x, w, order, parent, y, batch, channels, count, threads);
}

int tree_scan_backward_f32(const float* dy, const float* x, const float* w, const int64_t* order,
                           const int64_t* parent, const float* y, float* dx, float* dw, int64_t batch,
                           int64_t channels, int64_t count, int threads) {
  return backward(dy, x, w, order, parent, y, dx, dw, batch, channels, count, threads);
}

int tree_scan_backward_f64(const double* dy, const double* x, const double* w, const int64_t* order,
                           const int64_t* parent, const double* y, double* dx, double* dw, int64_t batch,
                           int64_t channels, int64_t count, int threads) {
  return backward(dy, x, w, order, parent, y, dx, dw, batch, channels, count, threads);
}

}  // extern "C"
