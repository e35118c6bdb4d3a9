// Host-only scalar helpers written so that loops over them vectorize at -O3 for whatever ISA the
// translation unit is compiled for (no -ffast-math: NaN and inf keep their IEEE meaning).
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace rarekit::cpu {

struct BFloat16Bits { uint16_t bits; };  // layout of at::BFloat16
struct HalfBits { uint16_t bits; };      // layout of at::Half

static inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

static inline uint32_t float_to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// GCC/Clang vector extensions: 16 floats, compiled to one AVX-512 register, two AVX2 or four SSE
// registers by the ISA flags of the translation unit. Unaligned loads go through memcpy.
typedef float Floats16 __attribute__((vector_size(64)));
typedef int32_t Ints16 __attribute__((vector_size(64)));
typedef uint16_t Halfwords16 __attribute__((vector_size(32)));
// 8 int64 and 8 int32 lanes: a 16-lane int64 vector (128 bytes) is lowered to scalar compares through the
// stack, so 16 int64 values are handled as two Longs8 (one AVX-512 register each).
typedef int64_t Longs8 __attribute__((vector_size(64)));
typedef int32_t Ints8 __attribute__((vector_size(32)));
constexpr int kFloats16 = 16;

static inline Floats16 load16(const float* values) {
  Floats16 vector;
  std::memcpy(&vector, values, sizeof(vector));
  return vector;
}

static inline Floats16 broadcast16(float value) { return Floats16{} + value; }

// Σ of the 16 lanes, and their max (a NaN lane is skipped), as a tree of halves: four dependent steps
// instead of sixteen.
static inline float horizontal_sum(Floats16 v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return v[0];
}

static inline Floats16 lane_max(Floats16 a, Floats16 b) { return b > a ? b : a; }

// Whether any of the 16 lanes is set, by the same tree of halves.
static inline bool any_lane(Ints16 mask) {
  mask |= __builtin_shufflevector(mask, mask, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  mask |= __builtin_shufflevector(mask, mask, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  mask |= __builtin_shufflevector(mask, mask, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  mask |= __builtin_shufflevector(mask, mask, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return mask[0] != 0;
}

// The even and the odd lanes of the 32 values a then b; interleave_low/high are their inverse (lanes
// a0 b0 a1 b1 ... a7 b7, and a8 b8 ... a15 b15).
static inline Floats16 even_lanes(Floats16 a, Floats16 b) {
  return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
}
static inline Floats16 odd_lanes(Floats16 a, Floats16 b) {
  return __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
static inline Floats16 interleave_low(Floats16 a, Floats16 b) {
  return __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
}
static inline Floats16 interleave_high(Floats16 a, Floats16 b) {
  return __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
}

// 16 rows of kColumns = 2 or 4 values, stored row after row in kColumns vectors, as one vector per
// column (lane r: row r), by shuffles; and back.
template <int kColumns>
static inline void rows_to_columns(const Floats16* rows, Floats16* columns) {
  static_assert(kColumns == 2 || kColumns == 4, "rows of 2 or 4 values");
  if constexpr (kColumns == 2) {
    columns[0] = even_lanes(rows[0], rows[1]);
    columns[1] = odd_lanes(rows[0], rows[1]);
  } else {  // even/odd: columns {0, 2} and {1, 3} of rows 0-7 and 8-15, then split once more
    const Floats16 low02 = even_lanes(rows[0], rows[1]), low13 = odd_lanes(rows[0], rows[1]);
    const Floats16 high02 = even_lanes(rows[2], rows[3]), high13 = odd_lanes(rows[2], rows[3]);
    columns[0] = even_lanes(low02, high02), columns[2] = odd_lanes(low02, high02);
    columns[1] = even_lanes(low13, high13), columns[3] = odd_lanes(low13, high13);
  }
}

template <int kColumns>
static inline void columns_to_rows(const Floats16* columns, Floats16* rows) {
  static_assert(kColumns == 2 || kColumns == 4, "rows of 2 or 4 values");
  if constexpr (kColumns == 2) {
    rows[0] = interleave_low(columns[0], columns[1]);
    rows[1] = interleave_high(columns[0], columns[1]);
  } else {
    const Floats16 low02 = interleave_low(columns[0], columns[2]), high02 = interleave_high(columns[0], columns[2]);
    const Floats16 low13 = interleave_low(columns[1], columns[3]), high13 = interleave_high(columns[1], columns[3]);
    rows[0] = interleave_low(low02, low13), rows[1] = interleave_high(low02, low13);
    rows[2] = interleave_low(high02, high13), rows[3] = interleave_high(high02, high13);
  }
}

static inline float horizontal_max(Floats16 v) {
  v = lane_max(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = lane_max(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = lane_max(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  v = lane_max(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
  return v[0];
}

// Which of the 16 lanes lie below `count`: the live lanes of a row's last, partial vector.
static inline Ints16 lanes_below(int64_t count) {
  const Ints16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  return lane < static_cast<int32_t>(count);
}

// exp(x) within ~2 ulp for finite x; exp(NaN) = NaN, exp(-inf) = 0, saturates at exp(88).
// Cody-Waite reduction x = n ln2 + r, then the Cephes expf polynomial on |r| <= ln2/2.
// One template for a float and for Floats16, so the scalar tails compute exactly what the vectors do.
// exp(r) = 1 + r + P(r) r² on |r| <= ln2/2 (Cephes expf)
template <typename V>
static inline V exp_polynomial(V r) {
  V p = 1.9875691500e-4f + V{};
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  return p * r + 5.0000001201e-1f;
}

template <typename V>
static inline V exp_reduced(V x, V* n) {
  const V clamped = x < -87.5f ? -87.5f + V{} : (x > 88.0f ? 88.0f + V{} : x);  // NaN passes through
  *n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  const V r = (clamped - *n * 0.693359375f) - *n * -2.12194440e-4f;
  return exp_polynomial(r) * r * r + r + 1.0f;
}

static inline Floats16 exp16(Floats16 x) {
  Floats16 n;
  const Floats16 p = exp_reduced(x, &n);
  Ints16 exponent = (__builtin_convertvector(n, Ints16) + 127) << 23;
  Floats16 scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  return x < -87.5f ? Floats16{} : p * scale;
}

static inline float exp_scalar(float x) {
  float n;
  const float p = exp_reduced(x, &n);
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return x < -87.5f ? 0.0f : p * scale;
}

// expm1(x) with exp16's error: r + P(r) r² without the 1 where |x| <= ln2/2 (where exp(x) - 1 would
// cancel), exp(x) - 1 elsewhere.
static inline Floats16 expm1_16(Floats16 x) {
  const Floats16 near_zero = x * exp_polynomial(x) * x + x;
  return x > -0.34657359f && x < 0.34657359f ? near_zero : exp16(x) - 1.0f;
}

// log(x) within ~2 ulp (Cephes logf): x = m 2^e with m in [√½, √2), a polynomial in m - 1.
// log(0) = -inf, log(x < 0) = NaN, log(inf) = inf, NaN stays; subnormals are scaled by 2^23 first.
static inline Floats16 log16(Floats16 x) {
  const Ints16 tiny = x < 1.17549435e-38f;
  const Floats16 scaled = tiny ? x * 8388608.0f : x;
  Ints16 bits;
  std::memcpy(&bits, &scaled, sizeof(bits));
  Ints16 exponent = ((bits >> 23) & 0xff) - 126 - (tiny & 23);
  const Ints16 mantissa_bits = (bits & 0x007fffff) | 0x3f000000;  // m in [0.5, 1)
  Floats16 m;
  std::memcpy(&m, &mantissa_bits, sizeof(m));
  const Ints16 small = m < 0.707106781186547524f;
  exponent += small;  // small is -1 where true
  m = small ? m + m - 1.0f : m - 1.0f;
  const Floats16 e = __builtin_convertvector(exponent, Floats16);
  const Floats16 z = m * m;
  Floats16 y = 7.0376836292e-2f + Floats16{};
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z + e * -2.12194440e-4f - 0.5f * z;
  Floats16 result = (m + y) + e * 0.693359375f;
  result = x == 0.0f ? broadcast16(-__builtin_inff()) : result;
  result = x < 0.0f ? broadcast16(__builtin_nanf("")) : result;
  return x == __builtin_inff() ? x : (x != x ? x : result);
}

static inline float to_float(float value) { return value; }
static inline float to_float(BFloat16Bits value) { return bits_to_float(static_cast<uint32_t>(value.bits) << 16); }
static inline float to_float(HalfBits value) {
  const uint32_t magnitude = static_cast<uint32_t>(value.bits & 0x7fffu) << 13;
  // multiplying by 2^112 moves the exponent bias from 15 to 127 (subnormals included)
  uint32_t bits = float_to_bits(bits_to_float(magnitude) * 0x1p112f);
  if ((value.bits & 0x7c00u) == 0x7c00u) bits = magnitude | 0x7f800000u;  // inf, NaN
  return bits_to_float(bits | (static_cast<uint32_t>(value.bits & 0x8000u) << 16));
}

// Round to nearest even, as at::BFloat16 and at::Half do.
static inline void store(float* out, float value) { *out = value; }
static inline void store(BFloat16Bits* out, float value) {
  const uint32_t bits = float_to_bits(value);
  out->bits = value != value ? 0x7fc0u : static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
static inline void store(HalfBits* out, float value) {
  uint32_t bits = float_to_bits(value);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint32_t half;
  if (bits >= 0x47800000u) {  // >= 65536: inf, or NaN
    half = bits > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (bits < 0x38800000u) {  // below 2^-14: subnormal or zero, rounded by a float add
    half = float_to_bits(bits_to_float(bits) + 0.5f) - 0x3f000000u;
  } else {
    bits += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + ((bits >> 13) & 1u);
    half = bits >> 13;
  }
  out->bits = static_cast<uint16_t>(half | (sign >> 16));
}

// 16 logits as floats, and back (round to nearest even for the 16-bit types).
static inline Floats16 load16(const BFloat16Bits* values) {
  Halfwords16 bits;
  std::memcpy(&bits, values, sizeof(bits));
  const Ints16 wide = __builtin_convertvector(bits, Ints16) << 16;
  Floats16 vector;
  std::memcpy(&vector, &wide, sizeof(vector));
  return vector;
}

static inline Floats16 load16(const HalfBits* values) {
  Floats16 vector;
  for (int lane = 0; lane < kFloats16; ++lane) vector[lane] = to_float(values[lane]);
  return vector;
}

static inline void store16(float* out, Floats16 vector) { std::memcpy(out, &vector, sizeof(vector)); }

static inline void store16(BFloat16Bits* out, Floats16 vector) {
  Ints16 bits;
  std::memcpy(&bits, &vector, sizeof(bits));
  const Ints16 rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
  const Halfwords16 narrow = __builtin_convertvector(vector != vector ? 0x7fc0 + Ints16{} : rounded, Halfwords16);
  std::memcpy(out, &narrow, sizeof(narrow));
}

static inline void store16(HalfBits* out, Floats16 vector) {
  for (int lane = 0; lane < kFloats16; ++lane) store(out + lane, vector[lane]);
}

// A row's last `count` < 16 values as one vector, `fill` in the lanes past them; and the store of a
// vector's first `count` lanes. One vector operation in place of `count` scalar ones: AVX-512 masked
// loads and stores where the translation unit has them (a copy through a padded array stalls the
// load on the narrower stores before it), the padded array elsewhere.
template <typename T>
static inline Floats16 load_partial16(const T* values, int64_t count, float fill) {
  T padded[kFloats16] = {};
  std::memcpy(padded, values, static_cast<size_t>(count) * sizeof(T));
  return lanes_below(count) ? load16(padded) : broadcast16(fill);
}

template <typename T>
static inline void store_partial16(T* out, Floats16 vector, int64_t count) {
  T padded[kFloats16];
  store16(padded, vector);
  std::memcpy(out, padded, static_cast<size_t>(count) * sizeof(T));
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
static inline __mmask16 first_lanes(int64_t count) { return static_cast<__mmask16>((1u << count) - 1u); }

template <>
inline Floats16 load_partial16(const float* values, int64_t count, float fill) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_lanes(count), values);
}

template <>
inline Floats16 load_partial16(const BFloat16Bits* values, int64_t count, float fill) {
  const Halfwords16 bits = reinterpret_cast<Halfwords16>(_mm256_maskz_loadu_epi16(first_lanes(count), values));
  const Ints16 wide = __builtin_convertvector(bits, Ints16) << 16;
  Floats16 vector;
  std::memcpy(&vector, &wide, sizeof(vector));
  return lanes_below(count) ? vector : broadcast16(fill);
}

template <>
inline void store_partial16(float* out, Floats16 vector, int64_t count) {
  _mm512_mask_storeu_ps(out, first_lanes(count), vector);
}

template <>
inline void store_partial16(BFloat16Bits* out, Floats16 vector, int64_t count) {
  Halfwords16 narrow;
  store16(reinterpret_cast<BFloat16Bits*>(&narrow), vector);
  _mm256_mask_storeu_epi16(out, first_lanes(count), reinterpret_cast<__m256i>(narrow));
}
#endif

}  // namespace rarekit::cpu
