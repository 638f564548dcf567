// The passes between W8A8 matmuls (w8a8_linear.py, w8a8_layers.py), each one kernel:
//   quantize_rows_u8(x) -> (q, scales): per row, scale = max|x| / 127 and q = round(x / scale) + 128
//       (u8 with zero point 128: symmetric int8 in the u8 x s8 form VNNI multiplies)
//   scale_rows_(out, scales): out[r, :] *= scales[r], in place (the per-row dequantization)
// and the decoder's steps with the dequantization of their input and / or the quantization of
// their output folded in (one pass instead of two or three, one dispatch instead of two or three):
//   rms_norm_u8(x, w, eps) -> (q, scales)                    = quantize(rms_norm(x))
//   add_rms_norm_u8_(x, y, y_scales, w, eps) -> (q, scales)  x += dtype(y * y_scales), in place; then
//                                                            quantize(rms_norm(x))
//   add_scaled_(x, y, y_scales) -> x                         x += dtype(y * y_scales), in place
//   silu_mul_u8(x, x_scales) -> (q, scales)                  = quantize(silu_mul(dtype(x * x_scales)))
// Each rounds where the ops it replaces round (row_ops.h): the results are theirs bit for bit.
// Registered as llmbatch::<name>.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "row_ops.h"

namespace {

using namespace llmbatch;

void check_scales(const at::Tensor& scales, int64_t rows, const char* op) {
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.numel() == rows && scales.device().is_cpu(), op,
              ": fp32 CPU scales, one a row, expected");
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
  check_scales(scales, out.size(0), "scale_rows_");
  auto sc = scales.contiguous();
  const int64_t M = out.size(0), N = out.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "scale_rows_", [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    const float* sp = sc.data_ptr<float>();
    at::parallel_for(0, M, grain(N), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) scale_row(op + r * N, op + r * N, sp[r], N);
    });
  });
  return out;
}

// x [M, H] (in place) += dtype(y [M, H] * y_scales[r]) when y is given, then, when w is given,
// (q, scales) = quantize(rms_norm(x, w)).
template <typename T>
void residual_rows(T* x, const T* y, const float* ys, const T* w, float eps, uint8_t* q, float* qs, int64_t M,
                   int64_t H) {
  at::parallel_for(0, M, grain(H), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(H);
    for (int64_t r = begin; r < end; ++r) {
      T* xr = x + r * H;
      if (y != nullptr) {
        scale_row(y + r * H, buf.data(), ys[r], H);
        int64_t i = 0;
        for (; i + kLanes <= H; i += kLanes) store_float(xr + i, load_float(xr + i) + load_float(buf.data() + i));
        for (; i < H; ++i) xr[i] = static_cast<T>(static_cast<float>(xr[i]) + static_cast<float>(buf[i]));
      }
      if (w != nullptr) {
        rms_norm_row(xr, w, buf.data(), H, eps);
        quantize_row(buf.data(), q + r * H, qs + r, H);
      }
    }
  });
}

void check_rows(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), op, ": a contiguous 2-d CPU tensor expected");
}

std::tuple<at::Tensor, at::Tensor> norm_quantize(at::Tensor& x, const at::Tensor* y, const at::Tensor* ys,
                                                 const at::Tensor& w, double eps, const char* op) {
  check_rows(x, op);
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(1) && w.scalar_type() == x.scalar_type(), op,
              ": w [H] of x's dtype expected");
  const int64_t M = x.size(0), H = x.size(1);
  auto wc = w.contiguous();
  auto q = at::empty({M, H}, x.options().dtype(at::kByte));
  auto scales = at::empty({M, 1}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "norm_quantize", [&] {
    residual_rows<scalar_t>(x.data_ptr<scalar_t>(), y ? y->data_ptr<scalar_t>() : nullptr,
                            ys ? ys->data_ptr<float>() : nullptr, wc.data_ptr<scalar_t>(), static_cast<float>(eps),
                            q.data_ptr<uint8_t>(), scales.data_ptr<float>(), M, H);
  });
  return {q, scales};
}

void check_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& ys, const char* op) {
  check_rows(x, op);
  check_rows(y, op);
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type(), op, ": y must have x's shape and dtype");
  check_scales(ys, x.size(0), op);
}

std::tuple<at::Tensor, at::Tensor> rms_norm_u8(const at::Tensor& x, const at::Tensor& w, double eps) {
  auto xc = x.contiguous();
  return norm_quantize(xc, nullptr, nullptr, w, eps, "rms_norm_u8");
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_u8_(at::Tensor x, const at::Tensor& y, const at::Tensor& y_scales,
                                                    const at::Tensor& w, double eps) {
  check_residual(x, y, y_scales, "add_rms_norm_u8_");
  auto ys = y_scales.contiguous();
  return norm_quantize(x, &y, &ys, w, eps, "add_rms_norm_u8_");
}

at::Tensor add_scaled_(at::Tensor x, const at::Tensor& y, const at::Tensor& y_scales) {
  check_residual(x, y, y_scales, "add_scaled_");
  auto ys = y_scales.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_scaled_", [&] {
    residual_rows<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), ys.data_ptr<float>(), nullptr, 0.f,
                            nullptr, nullptr, x.size(0), x.size(1));
  });
  return x;
}

std::tuple<at::Tensor, at::Tensor> silu_mul_u8(const at::Tensor& x, const at::Tensor& x_scales) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) % 2 == 0 && x.device().is_cpu(), "silu_mul_u8: x [M, 2 * I] on CPU expected");
  check_scales(x_scales, x.size(0), "silu_mul_u8");
  auto xc = x.contiguous();
  auto xs = x_scales.contiguous();
  const int64_t M = xc.size(0), I = xc.size(1) / 2;
  auto q = at::empty({M, I}, xc.options().dtype(at::kByte));
  auto scales = at::empty({M, 1}, xc.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "silu_mul_u8", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const float* sp = xs.data_ptr<float>();
    uint8_t* qp = q.data_ptr<uint8_t>();
    float* qs = scales.data_ptr<float>();
    at::parallel_for(0, M, grain(2 * I), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> in(2 * I), out(I);
      for (int64_t r = begin; r < end; ++r) {
        scale_row(xp + r * 2 * I, in.data(), sp[r], 2 * I);
        silu_mul_row(in.data(), in.data() + I, out.data(), I);
        quantize_row(out.data(), qp + r * I, qs + r, I);
      }
    });
  });
  return {q, scales};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmbatch, m) {
  m.def("quantize_rows_u8(Tensor x) -> (Tensor, Tensor)");
  m.def("scale_rows_(Tensor(a!) out, Tensor scales) -> Tensor(a!)");
  m.def("rms_norm_u8(Tensor x, Tensor w, float eps) -> (Tensor, Tensor)");
  m.def("add_rms_norm_u8_(Tensor(a!) x, Tensor y, Tensor y_scales, Tensor w, float eps) -> (Tensor, Tensor)");
  m.def("add_scaled_(Tensor(a!) x, Tensor y, Tensor y_scales) -> Tensor(a!)");
  m.def("silu_mul_u8(Tensor x, Tensor x_scales) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(llmbatch, CPU, m) {
  m.impl("quantize_rows_u8", &quantize_rows_u8);
  m.impl("scale_rows_", &scale_rows_);
  m.impl("rms_norm_u8", &rms_norm_u8);
  m.impl("add_rms_norm_u8_", &add_rms_norm_u8_);
  m.impl("add_scaled_", &add_scaled_);
  m.impl("silu_mul_u8", &silu_mul_u8);
}
