// The decoder's RMSNorm on CPU in one pass where eager torch runs 6 ops (each a dispatch, an
// allocation and a pass over the tensor; at decode sizes the op count, not the arithmetic, is
// what costs). Registered as llmbatch::rms_norm. It rounds where llm_core/models/llama.py's
// RMSNorm rounds, so results match it up to the order of a row's sum of squares:
//   rms_norm(x, w, eps) = w * dtype(x32 * rsqrt(mean(x32^2) + eps))       x [T, H], w [H]
// (A SiLU-and-multiply kernel was tried and removed: its scalar exp made it 3x slower than
// torch's vectorized one.)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace {

// Rows per task: small batches (decode) run on one thread; OpenMP's fork costs more than the work.
int64_t grain(int64_t row_size) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(row_size, 1)); }

template <typename T>
void rms_norm_rows(const T* x, const T* w, T* out, int64_t begin, int64_t end, int64_t H, float eps) {
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * H;
    T* o = out + r * H;
    float ss = 0.f;
    for (int64_t i = 0; i < H; ++i) {
      const float v = static_cast<float>(xr[i]);
      ss += v * v;
    }
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(H) + eps);
    for (int64_t i = 0; i < H; ++i) {
      const T normed = static_cast<T>(static_cast<float>(xr[i]) * inv);
      o[i] = static_cast<T>(static_cast<float>(w[i]) * static_cast<float>(normed));
    }
  }
}

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
      rms_norm_rows<scalar_t>(xp, wp, op, begin, end, H, static_cast<float>(eps));
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmbatch, m) {
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmbatch, CPU, m) {
  m.impl("rms_norm", &rms_norm);
}
