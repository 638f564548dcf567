// What the engine's CPU kernels share: vectors of kLanes floats through GCC's vector extensions
// (one AVX-512 register, two AVX2 ones; clang reads them too), a vectorised exp, and how many
// rows a row-wise kernel gives one task. Included by every csrc/*.cpp (cpu_kernels.py hashes it
// into the build's name with them).
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace llmbatch {

constexpr int64_t kLanes = 16;
typedef float vfloat __attribute__((vector_size(kLanes * 4)));
typedef int32_t vint __attribute__((vector_size(kLanes * 4)));
typedef float vfloat_u __attribute__((vector_size(kLanes * 4), aligned(4)));

inline vfloat load(const float* p) { return *reinterpret_cast<const vfloat_u*>(p); }
inline void store(float* p, vfloat x) { *reinterpret_cast<vfloat_u*>(p) = x; }

// e^x for x <= 0 (scores minus their maximum): x = (n + f) ln 2 with |f| <= 1/2, e^(f ln 2) by its
// Taylor series to degree 7 (relative error ~1e-8), 2^n from the exponent bits. Below -87 (e^-87
// ~ 1.6e-38, the smallest normal floats) the result is 0, so masked (-inf) scores weigh nothing.
inline vfloat exp_nonpositive(vfloat x) {
  const vfloat clamped = x > -87.f ? x : -87.f;
  const vfloat t = clamped * 1.4426950408889634f;
  const vint n = __builtin_convertvector(t - 0.5f, vint);  // rounds towards zero: f in (-1/2, 1/2]
  const vfloat y = (t - __builtin_convertvector(n, vfloat)) * 0.6931471805599453f;
  vfloat p = y * (1.f / 5040) + 1.f / 720;
  p = p * y + 1.f / 120;
  p = p * y + 1.f / 24;
  p = p * y + 1.f / 6;
  p = p * y + 0.5f;
  p = p * y + 1.f;
  p = p * y + 1.f;
  const vfloat e = p * reinterpret_cast<vfloat>((n + 127) << 23);
  return x > -87.f ? e : vfloat{};
}

// Sums of 16 vectors' lanes, as one vector: lane j holds the sum of x[kBitReversed[j]]'s lanes
// (a transpose and add in four folding steps, 15 adds and 30 shuffles for 16 horizontal sums;
// the caller passes its keys in bit-reversed order, so lane j is key j).
constexpr int kBitReversed[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

inline vfloat fold8(vfloat a, vfloat b) {
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
         __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
inline vfloat fold4(vfloat a, vfloat b) {
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
         __builtin_shufflevector(a, b, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
}
inline vfloat fold2(vfloat a, vfloat b) {
  return __builtin_shufflevector(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
         __builtin_shufflevector(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
}
inline vfloat fold1(vfloat a, vfloat b) {
  return __builtin_shufflevector(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
         __builtin_shufflevector(a, b, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}
inline vfloat sum16(const vfloat* x) {
  const vfloat c0 = fold8(x[0], x[1]), c1 = fold8(x[2], x[3]), c2 = fold8(x[4], x[5]), c3 = fold8(x[6], x[7]);
  const vfloat c4 = fold8(x[8], x[9]), c5 = fold8(x[10], x[11]), c6 = fold8(x[12], x[13]), c7 = fold8(x[14], x[15]);
  const vfloat e0 = fold4(c0, c1), e1 = fold4(c2, c3), e2 = fold4(c4, c5), e3 = fold4(c6, c7);
  return fold1(fold2(e0, e1), fold2(e2, e3));
}

inline float lane_sum(vfloat x) {
  float total = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) total += x[i];
  return total;
}

// e^-|x| for any x: never overflows (SiLU's sigmoid, mirrored by the caller for x > 0).
inline vfloat exp_negative_abs(vfloat x) { return exp_nonpositive(x > 0.f ? -x : x); }

// kLanes values of T as floats, and back (bf16: by its bits, rounding to nearest even like
// c10::BFloat16 except that a NaN whose payload sits in the low 16 bits turns into infinity;
// other types: one at a time).
typedef uint16_t vu16 __attribute__((vector_size(kLanes * 2)));
typedef uint16_t vu16_u __attribute__((vector_size(kLanes * 2), aligned(2)));

template <typename T>
inline vfloat load_float(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return load(p);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const vu16 bits = *reinterpret_cast<const vu16_u*>(p);
    return reinterpret_cast<vfloat>(__builtin_convertvector(bits, vint) << 16);
  } else {
    vfloat x;
    for (int64_t i = 0; i < kLanes; ++i) x[i] = static_cast<float>(p[i]);
    return x;
  }
}

inline vint bf16_rounded_bits(vfloat x) {  // the float's bits, rounded to the nearest bf16 (even on ties)
  const vint bits = reinterpret_cast<vint>(x);
  return bits + (((bits >> 16) & 1) + 0x7FFF);
}

// x rounded to T's precision, still as floats (where eager torch stores an intermediate in T).
template <typename T>
inline vfloat round_to(vfloat x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return reinterpret_cast<vfloat>(bf16_rounded_bits(x) & static_cast<int32_t>(0xFFFF0000u));
  } else {
    for (int64_t i = 0; i < kLanes; ++i) x[i] = static_cast<float>(static_cast<T>(x[i]));
    return x;
  }
}

template <typename T>
inline void store_float(T* p, vfloat x) {
  if constexpr (std::is_same_v<T, float>) {
    store(p, x);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const vint high = (bf16_rounded_bits(x) >> 16) & 0xFFFF;
    *reinterpret_cast<vu16_u*>(p) = __builtin_convertvector(high, vu16);
  } else {
    for (int64_t i = 0; i < kLanes; ++i) p[i] = static_cast<T>(x[i]);
  }
}

// Rows per task: small batches (decode) run on one thread; OpenMP's fork costs more than the work.
inline int64_t grain(int64_t row_size) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(row_size, 1)); }

}  // namespace llmbatch
