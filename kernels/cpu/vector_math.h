// SIMD helpers shared by the CPU scan kernels in this directory (each kernel is one translation unit that includes
// this header; the loader hashes it with the kernel's source). Vectors are GCC vector extensions of kVectorBytes
// bytes, one register of the widest vector unit -march=native enables: 64 with AVX-512 (kLanes<float> = 16), else 32
// (AVX2: 8 floats; a 64-byte vector there is two registers, which the kernels' tiles spill to the stack).
#pragma once

#if defined(__AVX__)
#include <immintrin.h>
#endif
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

template <typename Real>
struct Simd;
template <>
struct Simd<float> {
  typedef float Vec __attribute__((vector_size(kVectorBytes)));
  typedef int32_t Int __attribute__((vector_size(kVectorBytes)));
};
template <>
struct Simd<double> {
  typedef double Vec __attribute__((vector_size(kVectorBytes)));
  typedef int64_t Int __attribute__((vector_size(kVectorBytes)));
};

template <typename Real>
using Vec = typename Simd<Real>::Vec;
template <typename Real>
constexpr int kLanes = kVectorBytes / sizeof(Real);

template <typename Real>
inline Vec<Real> splat(Real x) {
  return Vec<Real>{} + x;
}

constexpr double kLog2e = 1.44269504088896340736, kLn2 = 0.69314718055994530942;

// 2^f for |f| <= 1/2 by a minimax polynomial of degree 6 (1e-7 relative error in float) or 5 (1.9e-7, one FMA
// less; p(0) = 1 exactly, so gates near 1 carry no bias)
template <int Degree = 6>
inline Vec<float> exp2_reduced(Vec<float> f) {
  static_assert(Degree == 5 || Degree == 6, "degree 5 or 6");
  if constexpr (Degree == 5) {
    Vec<float> p = splat(1.326472731e-03f);
    for (const float c : {9.671512991e-03f, 5.550733581e-02f, 2.402224243e-01f, 6.931470037e-01f, 1.0f}) p = p * f + c;
    return p;
  }
  Vec<float> p = splat(1.535336100e-04f);
  for (const float c : {1.339887524e-03f, 9.618437368e-03f, 5.550332469e-02f, 2.402264791e-01f, 6.931472029e-01f,
                        1.0f})
    p = p * f + c;
  return p;
}

// x limited to [lo, hi]; NaN stays NaN. With AVX2 one vmaxps and one vminps (NaN is their second operand, which they
// return), else a compare and a select each (with AVX-512 the compares write mask registers)
inline Vec<float> clamp(Vec<float> x, float lo, float hi) {
#if defined(__AVX__) && !defined(__AVX512F__)
  return (Vec<float>)_mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), (__m256)x));
#else
  x = x < lo ? splat(lo) : x;
  return x > hi ? splat(hi) : x;
#endif
}

#if defined(__AVX512F__)
// 2^x = 2^k 2^(x - k) with k = round(x), the scaling by vscalefps: underflow gives 0 (see FlushDenormals), overflow
// inf, NaN stays NaN. Degree: of the polynomial (exp2_reduced)
template <int Degree = 6>
inline Vec<float> vexp2(Vec<float> x) {
  const Vec<float> k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_scalef_ps(exp2_reduced<Degree>(x - k), k);
}
#else
// 2^x = 2^k 2^(x - k) with k = round(x), 2^k built in the exponent bits; x is clamped to [-126, 127]. Degree: of the
// polynomial (exp2_reduced)
template <int Degree = 6>
inline Vec<float> vexp2(Vec<float> x) {
  typedef Simd<float>::Int Int;
  x = clamp(x, -126.0f, 127.0f);
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
  const Vec<float> t = x + round_magic;
  const Int scale = ((Int)t - 0x4B400000 + 127) << 23;
  return exp2_reduced<Degree>(x - (t - round_magic)) * (Vec<float>)scale;
}
#endif

template <int Degree = 6>  // float's polynomial degree: double uses std::exp2
inline Vec<double> vexp2(Vec<double> x) {
  for (int l = 0; l < kLanes<double>; ++l) x[l] = std::exp2(x[l]);
  return x;
}

// log(1 + t) for t in [0, 1]: t P(t), P a degree-9 minimax fit of log1p(t) / t (5e-9 relative error)
inline Vec<float> vlog1p_unit(Vec<float> t) {
  Vec<float> p = splat(-3.243984755e-03f);
  for (const float c : {1.985128534e-02f, -5.695921294e-02f, 1.060362368e-01f, -1.530557514e-01f, 1.967593367e-01f,
                        -2.495413270e-01f, 3.332996235e-01f, -4.999990242e-01f, 9.999999953e-01f})
    p = p * t + c;
  return p * t;
}

inline Vec<double> vlog1p_unit(Vec<double> t) {
  for (int l = 0; l < kLanes<double>; ++l) t[l] = std::log1p(t[l]);
  return t;
}

// softplus(x) (PyTorch's: identity above 20); its derivative sigmoid(x) (1 above 20) into *slope when given
template <typename Real>
inline Vec<Real> softplus(Vec<Real> x, Vec<Real>* slope) {
  const Vec<Real> zero{}, one = splat<Real>(1), threshold = splat<Real>(20), lowest = splat<Real>(-100);
  Vec<Real> minus_abs = x < zero ? x : -x;
  minus_abs = minus_abs < lowest ? lowest : minus_abs;  // exp(-100) is 0 to working precision; keeps -inf finite
  const Vec<Real> e = vexp2(minus_abs * Real(kLog2e));  // exp(-|x|)
  if (slope) {
    const Vec<Real> inv = one / (one + e);
    *slope = x > threshold ? one : (x < zero ? e * inv : inv);
  }
  return x > threshold ? x : vlog1p_unit(e) + (x > zero ? x : zero);
}

template <typename Real>
inline Real hsum(Vec<Real> v) {
  Real sum = 0;
  for (int l = 0; l < kLanes<Real>; ++l) sum += v[l];
  return sum;
}

// One level of `transposed_sums`: v[k] = merge of v[2k] and v[2k + 1] for k < W. Lanes l with bit W clear add v[2k]
// over lanes {l, l ^ W}, the others v[2k + 1].
template <typename Real, int W, int... l>
inline Vec<Real> merge_pair(Vec<Real> a, Vec<Real> b, std::integer_sequence<int, l...>) {
  constexpr int L = kLanes<Real>;
  return __builtin_shufflevector(a, b, (l & W ? L : 0) + l...) +
         __builtin_shufflevector(a, b, (l & W ? L : 0) + (l ^ W)...);
}

template <typename Real, int W>
inline void merge_level(Vec<Real>* v) {
  for (int k = 0; k < W; ++k)
    v[k] = merge_pair<Real, W>(v[2 * k], v[2 * k + 1], std::make_integer_sequence<int, kLanes<Real>>());
  if constexpr (W > 1) merge_level<Real, W / 2>(v);
}

// l with its log2(lanes) bits in reverse order
constexpr int bit_reversed(int l, int lanes) {
  return lanes == 1 ? 0 : (l & 1) * (lanes / 2) + bit_reversed(l / 2, lanes / 2);
}

template <typename Real, int... l>
inline Vec<Real> reverse_lane_bits(Vec<Real> v, std::integer_sequence<int, l...>) {
  return __builtin_shufflevector(v, v, bit_reversed(l, kLanes<Real>)...);
}

// A vector whose lane r is the sum of the lanes of v[r], for kLanes vectors v (overwritten): log2(kLanes) levels of
// pairwise merges leave in lane l the sum of row bit_reversed(l), which the last shuffle puts in place
template <typename Real>
inline Vec<Real> transposed_sums(Vec<Real>* v) {
  merge_level<Real, kLanes<Real> / 2>(v);
  return reverse_lane_bits<Real>(v[0], std::make_integer_sequence<int, kLanes<Real>>());
}

// One level of `transpose`: rows i and i + W (i with bit W clear) exchange their lanes with bit W set and clear:
// lane l of row i takes lane l ^ W of row i + W where l has bit W set, and conversely
template <typename Real, int W, int... l>
inline void exchange_lanes(Vec<Real>& a, Vec<Real>& b, std::integer_sequence<int, l...>) {
  constexpr int L = kLanes<Real>;
  const Vec<Real> low = __builtin_shufflevector(a, b, (l & W ? L + (l ^ W) : l)...);
  b = __builtin_shufflevector(a, b, (l & W ? L + l : l ^ W)...);
  a = low;
}

template <typename Real, int W>
inline void transpose_level(Vec<Real>* v) {
  for (int i = 0; i < kLanes<Real>; ++i) {
    if (!(i & W)) exchange_lanes<Real, W>(v[i], v[i + W], std::make_integer_sequence<int, kLanes<Real>>());
  }
  if constexpr (W > 1) transpose_level<Real, W / 2>(v);
}

// Transposes the kLanes x kLanes matrix of kLanes vectors v (rows) in place: log2(kLanes) levels of lane exchanges
template <typename Real>
inline void transpose(Vec<Real>* v) {
  transpose_level<Real, kLanes<Real> / 2>(v);
}

// load / store the first `count` lanes (the rest load as 0); full vectors take the fast path
template <typename Real>
inline Vec<Real> load(const Real* p, int count) {
  Vec<Real> v{};
  if (count == kLanes<Real>) {
    std::memcpy(&v, p, sizeof(v));
  } else {
    for (int l = 0; l < count; ++l) v[l] = p[l];
  }
  return v;
}

template <typename Real>
inline void store(Real* p, Vec<Real> v, int count) {
  if (count == kLanes<Real>) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    for (int l = 0; l < count; ++l) p[l] = v[l];
  }
}

// (mean, 1 / sqrt(biased variance + eps)) of the n values at x, as LayerNorm computes them: two passes (the mean,
// then the mean square of the deviations); the lanes past the last value are kept out of the deviations
template <typename Real>
inline void row_mean_rstd(const Real* x, int64_t n, Real eps, Real* mean, Real* rstd) {
  constexpr int L = kLanes<Real>;
  const int64_t full = n / L;  // vectors without a tail
  const int tail = int(n - full * L);
  Vec<Real> sum{}, squares{};
  for (int64_t i = 0; i < full; ++i) sum += load(x + i * L, L);
  if (tail) sum += load(x + full * L, tail);
  const Real mu = hsum<Real>(sum) / Real(n);
  for (int64_t i = 0; i < full; ++i) {
    const Vec<Real> d = load(x + i * L, L) - mu;
    squares += d * d;
  }
  if (tail) {
    Vec<Real> d = load(x + full * L, tail) - mu;
    for (int l = tail; l < L; ++l) d[l] = 0;
    squares += d * d;
  }
  *mean = mu;
  *rstd = Real(1) / std::sqrt(hsum<Real>(squares) / Real(n) + eps);
}

// out[r] += the sum of the lanes of rows[r], r < count (rows are overwritten)
template <typename Real>
inline void add_lane_sums(Vec<Real>* rows, int64_t count, Real* out) {
  constexpr int L = kLanes<Real>;
  int64_t r = 0;
  for (; r + L <= count; r += L) store(out + r, load(out + r, L) + transposed_sums<Real>(rows + r), L);
  for (; r < count; ++r) out[r] += hsum<Real>(rows[r]);
}

// Flush subnormal numbers to zero (FTZ and DAZ) on this thread while in scope: gates below 2^-126, which large deltas
// give, would otherwise take the CPU's slow path for subnormals (scans several times slower)
class FlushDenormals {
 public:
#if defined(__SSE__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

}  // namespace

// The vector width this library was compiled with, in bytes: its channel blocks hold kVectorBytes / sizeof(Real)
// channels (the Python side sizes per-block buffers by it)
extern "C" int vector_bytes() { return kVectorBytes; }
