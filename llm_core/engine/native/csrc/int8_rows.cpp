// The two passes around a W8A8 matmul (w8a8_linear.py), one kernel each instead of 6-8 eager ops:
//   quantize_rows_u8(x) -> (q, scales): per row, scale = max|x| / 127 and q = round(x / scale) + 128
//       (u8 with zero point 128: symmetric int8 in the u8 x s8 form VNNI multiplies)
//   scale_rows_(out, scales): out[r, :] *= scales[r], in place (the per-row dequantization)
// Registered as llmbatch::quantize_rows_u8 and llmbatch::scale_rows_.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "vector_math.h"

namespace {

using namespace llmbatch;

typedef uint8_t vu8 __attribute__((vector_size(kLanes)));
typedef uint8_t vu8_u __attribute__((vector_size(kLanes), aligned(1)));

inline vfloat abs_value(vfloat x) { return reinterpret_cast<vfloat>(reinterpret_cast<vint>(x) & 0x7FFFFFFF); }

// Rounds half away from zero (torch.round: half to even; ties are rare in activations, and at
// most one step apart), clamps to -127..127, adds the zero point.
inline int32_t quantize_one(float v) {
  const float r = v >= 0.f ? v + 0.5f : v - 0.5f;
  return std::min(127, std::max(-127, static_cast<int32_t>(r))) + 128;
}

template <typename T>
void quantize_row(const T* x, uint8_t* q, float* scale_out, int64_t K) {
  vfloat vmax = {};
  int64_t i = 0;
  for (; i + kLanes <= K; i += kLanes) {
    const vfloat a = abs_value(load_float(x + i));
    vmax = a > vmax ? a : vmax;
  }
  float amax = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) amax = std::max(amax, vmax[l]);
  for (; i < K; ++i) amax = std::max(amax, std::abs(static_cast<float>(x[i])));
  const float scale = std::max(amax, 1e-12f) / 127.f;
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

std::tuple<at::Tensor, at::Tensor> quantize_rows_u8(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "quantize_rows_u8: a 2-d CPU tensor expected");
  auto xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1);
  auto q = at::empty({M, K}, xc.options().dtype(at::kByte));
  auto scales = at::empty({M, 1}, xc.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "quantize_rows_u8", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    uint8_t* qp = q.data_ptr<uint8_t>();
    float* sp = scales.data_ptr<float>();
    at::parallel_for(0, M, grain(K), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) quantize_row(xp + r * K, qp + r * K, sp + r, K);
    });
  });
  return {q, scales};
}

at::Tensor scale_rows_(at::Tensor out, const at::Tensor& scales) {
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous() && out.device().is_cpu(), "scale_rows_: a contiguous 2-d CPU tensor");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.numel() == out.size(0), "scale_rows_: fp32 scales, one a row");
  auto sc = scales.contiguous();
  const int64_t M = out.size(0), N = out.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "scale_rows_", [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    const float* sp = sc.data_ptr<float>();
    at::parallel_for(0, M, grain(N), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* o = op + r * N;
        const float s = sp[r];
        int64_t i = 0;
        for (; i + kLanes <= N; i += kLanes) store_float(o + i, load_float(o + i) * s);
        for (; i < N; ++i) o[i] = static_cast<scalar_t>(static_cast<float>(o[i]) * s);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmbatch, m) {
  m.def("quantize_rows_u8(Tensor x) -> (Tensor, Tensor)");
  m.def("scale_rows_(Tensor(a!) out, Tensor scales) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(llmbatch, CPU, m) {
  m.impl("quantize_rows_u8", &quantize_rows_u8);
  m.impl("scale_rows_", &scale_rows_);
}
