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

namespace {

int64_t grain(int64_t row_size) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(row_size, 1)); }

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
      std::vector<float> buffer(K);
      float* row = buffer.data();
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = xp + r * K;
        for (int64_t i = 0; i < K; ++i) row[i] = static_cast<float>(xr[i]);  // plain float loops vectorize
        float amax = 0.f;
        for (int64_t i = 0; i < K; ++i) amax = std::max(amax, std::abs(row[i]));
        const float scale = std::max(amax, 1e-12f) / 127.f;
        const float inv = 1.f / scale;
        uint8_t* qr = qp + r * K;
        for (int64_t i = 0; i < K; ++i) {
          const float v = std::nearbyint(row[i] * inv);
          qr[i] = static_cast<uint8_t>(static_cast<int32_t>(std::min(127.f, std::max(-127.f, v))) + 128);
        }
        sp[r] = scale;
      }
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
        for (int64_t i = 0; i < N; ++i) o[i] = static_cast<scalar_t>(static_cast<float>(o[i]) * s);
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
