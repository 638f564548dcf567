// One row of each elementwise step, shared by fused_elementwise.cpp (the steps as ops of their
// own) and int8_rows.cpp (the same steps fused with the per-row int8 quantize / rescale around
// W8A8 matmuls): a fused op computes exactly what the ops it replaces compute, rounding included.
// Each is kept out of line (ROW_OP): -ffast-math lets the compiler reorder and contract a function's
// arithmetic differently wherever it is inlined, and the linker keeps one copy of an out-of-line
// template, so every op runs the same instructions on a row.
#pragma once

#include <algorithm>
#include <cmath>

#include "vector_math.h"

#define ROW_OP __attribute__((noinline))

namespace llmbatch {

// w * dtype(x32 * rsqrt(mean(x32^2) + eps)), llama.py's RMSNorm.
template <typename T>
ROW_OP void rms_norm_row(const T* x, const T* w, T* out, int64_t H, float eps) {
  vfloat squares = {};
  int64_t i = 0;
  for (; i + kLanes <= H; i += kLanes) {
    const vfloat v = load_float(x + i);
    squares += v * v;
  }
  float ss = lane_sum(squares);
  for (int64_t j = i; j < H; ++j) ss += static_cast<float>(x[j]) * static_cast<float>(x[j]);
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(H) + eps);
  for (i = 0; i + kLanes <= H; i += kLanes) {
    const vfloat normed = round_to<T>(load_float(x + i) * inv);
    store_float(out + i, load_float(w + i) * normed);
  }
  for (; i < H; ++i) {
    const T normed = static_cast<T>(static_cast<float>(x[i]) * inv);
    out[i] = static_cast<T>(static_cast<float>(w[i]) * static_cast<float>(normed));
  }
}

// dtype(silu(g)) * u over I values.
template <typename T>
ROW_OP void silu_mul_row(const T* g, const T* u, T* out, int64_t I) {
  int64_t i = 0;
  for (; i + kLanes <= I; i += kLanes) {
    const vfloat xv = load_float(g + i);
    const vfloat z = exp_negative_abs(xv);  // e^-|x|: sigmoid = 1 / (1 + z) for x >= 0, z / (1 + z) below
    const vfloat silu = round_to<T>(xv * ((xv >= 0.f ? 1.f : z) / (1.f + z)));
    store_float(out + i, silu * load_float(u + i));
  }
  for (; i < I; ++i) {  // the row's last partial vector
    const float xf = static_cast<float>(g[i]);
    const T silu = static_cast<T>(xf / (1.f + std::exp(-xf)));
    out[i] = static_cast<T>(static_cast<float>(silu) * static_cast<float>(u[i]));
  }
}

// Rotate-half RoPE of one head: dtype(x * cos) + dtype(rotate_half(x) * sin). No contraction into
// fused multiply-adds: rope.apply_rotary rounds each product (and -ffast-math would otherwise fuse
// them), which fp32 greedy parity with transformers relies on.
template <typename T>
__attribute__((optimize("fp-contract=off"))) ROW_OP void rotate_row(const T* x, const T* cos, const T* sin, T* out,
                                                                     int64_t D) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < D; ++d) {
    const float rotated = d < half ? -static_cast<float>(x[d + half]) : static_cast<float>(x[d - half]);
    const T a = static_cast<T>(static_cast<float>(x[d]) * static_cast<float>(cos[d]));
    const T b = static_cast<T>(static_cast<float>(static_cast<T>(rotated)) * static_cast<float>(sin[d]));
    out[d] = static_cast<T>(static_cast<float>(a) + static_cast<float>(b));
  }
}

// out = dtype(x * s) over N values (out may be x): a W8A8 matmul's per-row dequantization.
template <typename T>
ROW_OP void scale_row(const T* x, T* out, float s, int64_t N) {
  int64_t i = 0;
  for (; i + kLanes <= N; i += kLanes) store_float(out + i, load_float(x + i) * s);
  for (; i < N; ++i) out[i] = static_cast<T>(static_cast<float>(x[i]) * s);
}

typedef uint8_t vu8 __attribute__((vector_size(kLanes)));
typedef uint8_t vu8_u __attribute__((vector_size(kLanes), aligned(1)));

inline vfloat abs_value(vfloat x) { return reinterpret_cast<vfloat>(reinterpret_cast<vint>(x) & 0x7FFFFFFF); }

// Rounds half away from zero (torch.round: half to even; ties are rare in activations, and at
// most one step apart), clamps to -127..127, adds the zero point.
inline int32_t quantize_one(float v) {
  const float r = v >= 0.f ? v + 0.5f : v - 0.5f;
  return std::min(127, std::max(-127, static_cast<int32_t>(r))) + 128;
}

// One row to u8 with zero point 128: scale = max|x| / 127, q = round(x / scale) + 128.
template <typename T>
ROW_OP void quantize_row(const T* x, uint8_t* q, float* scale_out, int64_t K) {
  vfloat vmax = {};
  int64_t i = 0;
  for (; i + kLanes <= K; i += kLanes) {
    const vfloat a = abs_value(load_float(x + i));
    vmax = a > vmax ? a : vmax;
  }
  float amax = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) amax = std::max(amax, vmax[l]);
  for (; i < K; ++i) amax = std::max(amax, std::abs(static_cast<float>(x[i])));
  // Times 1/127, not / 127: -ffast-math may turn a division by a constant into that product at
  // some call sites and not others, and every op must give a row the same scale.
  const float scale = std::max(amax, 1e-12f) * (1.f / 127.f);
  const float inv = 1.f / scale;
  for (i = 0; i + kLanes <= K; i += kLanes) {
    const vfloat v = load_float(x + i) * inv;
    const vint r = __builtin_convertvector(v + (v >= 0.f ? 0.5f : -0.5f), vint);
    const vint below = r > 127 ? 127 : r;
    const vint clamped = below < -127 ? -127 : below;
    *reinterpret_cast<vu8_u*>(q + i) = __builtin_convertvector(clamped + 128, vu8);
  }
  for (; i < K; ++i) q[i] = static_cast<uint8_t>(quantize_one(static_cast<float>(x[i]) * inv));
  *scale_out = scale;
}

}  // namespace llmbatch
