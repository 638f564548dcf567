// The decoder's elementwise steps on CPU, one pass each where eager torch runs several ops (each a
// dispatch, an allocation and a pass over the tensor; at decode sizes the op count, not the
// arithmetic, is what costs). Each rounds where llm_core/models/llama.py / rope.py round:
//   rms_norm(x, w, eps) = w * dtype(x32 * rsqrt(mean(x32^2) + eps))       x [T, H], w [H]
//     (equal up to the order of a row's sum of squares)
//   silu_mul(x) = dtype(silu(gate)) * up, gate and up the halves of x [T, 2I]  -> [T, I]
//     (silu through vector_math.h's exp: within about 1e-7 relative of torch's)
//   rotary_qkv(qkv, cos, sin, heads, kv_heads) -> q [T, heads, D], k and v [T, kv_heads, D]:
//     rotate-half RoPE of q and k, dtype(x * cos) + dtype(rotate_half(x) * sin), v copied out
//     (bit for bit rope.apply_rotary's); with scales [T] (a W8A8 matmul's row scales), of
//     dtype(qkv * scales) instead, as scale_rows_ would round it
// Registered as llmbatch::rms_norm, llmbatch::silu_mul, llmbatch::rotary_qkv.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "row_ops.h"

namespace {

using namespace llmbatch;

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 1 && x.size(1) == w.size(0), "rms_norm: x [T, H] and w [H] expected");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "rms_norm: CPU only");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "rms_norm: x and w must have one dtype");
  auto xc = x.contiguous();
  auto wc = w.contiguous();
  auto out = at::empty_like(xc);
  const int64_t T = xc.size(0), H = xc.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "rms_norm", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* wp = wc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, T, grain(H), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) rms_norm_row<scalar_t>(xp + r * H, wp, op + r * H, H, static_cast<float>(eps));
    });
  });
  return out;
}

at::Tensor silu_mul(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) % 2 == 0 && x.device().is_cpu(), "silu_mul: x [T, 2 * I] on CPU expected");
  auto xc = x.contiguous();
  const int64_t T = xc.size(0), I = xc.size(1) / 2;
  auto out = at::empty({T, I}, xc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "silu_mul", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, T, grain(2 * I), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) silu_mul_row<scalar_t>(xp + r * 2 * I, xp + r * 2 * I + I, op + r * I, I);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rotary_qkv(const at::Tensor& qkv, const at::Tensor& cos,
                                                          const at::Tensor& sin, int64_t heads, int64_t kv_heads,
                                                          const std::optional<at::Tensor>& scales) {
  TORCH_CHECK(qkv.dim() == 2 && cos.dim() == 2 && sin.sizes() == cos.sizes() && qkv.device().is_cpu(),
              "rotary_qkv: qkv [T, (heads + 2 kv_heads) D], cos and sin [T, D] on CPU expected");
  const int64_t T = qkv.size(0), D = cos.size(1);
  TORCH_CHECK(heads > 0 && kv_heads > 0 && D % 2 == 0 && qkv.size(1) == (heads + 2 * kv_heads) * D &&
                  cos.size(0) == T,
              "rotary_qkv: shapes do not fit heads, kv_heads and cos");
  TORCH_CHECK(cos.scalar_type() == qkv.scalar_type() && sin.scalar_type() == qkv.scalar_type(),
              "rotary_qkv: cos and sin must have qkv's dtype");
  if (scales.has_value()) {
    TORCH_CHECK(scales->scalar_type() == at::kFloat && scales->numel() == T && scales->device().is_cpu(),
                "rotary_qkv: fp32 CPU scales, one a token, expected");
  }
  auto xc = qkv.contiguous();
  auto rs = scales.has_value() ? scales->contiguous() : at::Tensor();
  auto cc = cos.contiguous();
  auto sc = sin.contiguous();
  auto q = at::empty({T, heads, D}, xc.options());
  auto k = at::empty({T, kv_heads, D}, xc.options());
  auto v = at::empty({T, kv_heads, D}, xc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "rotary_qkv", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* cp = cc.data_ptr<scalar_t>();
    const scalar_t* sp = sc.data_ptr<scalar_t>();
    scalar_t* qp = q.data_ptr<scalar_t>();
    scalar_t* kp = k.data_ptr<scalar_t>();
    scalar_t* vp = v.data_ptr<scalar_t>();
    const int64_t width = (heads + 2 * kv_heads) * D;
    const float* row_scales = rs.defined() ? rs.data_ptr<float>() : nullptr;
    at::parallel_for(0, T, grain(width), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scaled(row_scales != nullptr ? width : 0);
      for (int64_t t = begin; t < end; ++t) {
        const scalar_t* row = xp + t * width;
        if (row_scales != nullptr) {  // a W8A8 matmul's output: its dequantization first, rounded as scale_rows_
          scale_row(row, scaled.data(), row_scales[t], width);
          row = scaled.data();
        }
        for (int64_t h = 0; h < heads; ++h) rotate_row(row + h * D, cp + t * D, sp + t * D, qp + (t * heads + h) * D, D);
        for (int64_t h = 0; h < kv_heads; ++h) {
          rotate_row(row + (heads + h) * D, cp + t * D, sp + t * D, kp + (t * kv_heads + h) * D, D);
        }
        std::copy_n(row + (heads + kv_heads) * D, kv_heads * D, vp + t * kv_heads * D);
      }
    });
  });
  return {q, k, v};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmbatch, m) {
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("silu_mul(Tensor x) -> Tensor");
  m.def("rotary_qkv(Tensor qkv, Tensor cos, Tensor sin, int heads, int kv_heads, Tensor? scales=None) -> "
        "(Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(llmbatch, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("silu_mul", &silu_mul);
  m.impl("rotary_qkv", &rotary_qkv);
}
