// Decode attention over the engine's KV cache on CPU: one new query token per sequence, reading
// only each sequence's valid cache entries (0..positions[b]). Registered as llmbatch::decode_attention.
//
// q      [B, H_kv, G, D]   the G query heads that share KV head h (GQA), any float dtype below
// k, v   [S, H_kv, L, D]   one layer of the cache (S >= B slots, L >= positions[b] + 1)
// pos    [B] int64         the new token's position: entries 0..pos[b] are valid
// out    [B, H_kv, G, D]
//
// SDPA on CPU runs a tiled flash kernel whose per-tile setup dominates at one query row; here each
// (sequence, KV head) pair is one task that streams its keys and values once, accumulating in
// fp32 (scores, softmax, weighted values: three passes over one task's rows). Tasks are spread over torch's intra-op threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kMaxGroup = 16;   // query heads per KV head
constexpr int64_t kMaxHeadDim = 256;

// kD > 0: the head size as a compile-time constant (fully unrolled loops); 0: D at run time.
template <typename T, int64_t kD>
void attend_one(const T* q, const T* k, const T* v, T* out, int64_t n, int64_t G, int64_t D_, float scale,
                std::vector<float>& scores) {
  const int64_t D = kD > 0 ? kD : D_;
  float qf[kMaxGroup * kMaxHeadDim];
  float acc[kMaxGroup * kMaxHeadDim];
  float row[kMaxHeadDim];
  for (int64_t i = 0; i < G * D; ++i) {
    qf[i] = static_cast<float>(q[i]) * scale;
    acc[i] = 0.f;
  }
  scores.resize(G * n);
  // Pass 1: every query head's score against each key, the key row read once for all G heads.
  for (int64_t t = 0; t < n; ++t) {
    const T* kr = k + t * D;
    for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(kr[d]);
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = qf + g * D;
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += qg[d] * row[d];
      scores[g * n + t] = s;
    }
  }
  // Pass 2: softmax per head, in place.
  float inv_sum[kMaxGroup];
  for (int64_t g = 0; g < G; ++g) {
    float* sg = scores.data() + g * n;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < n; ++t) m = std::max(m, sg[t]);
    float sum = 0.f;
    for (int64_t t = 0; t < n; ++t) {
      sg[t] = std::exp(sg[t] - m);
      sum += sg[t];
    }
    inv_sum[g] = 1.f / sum;
  }
  // Pass 3: the weighted sum of values, each value row read once for all G heads.
  for (int64_t t = 0; t < n; ++t) {
    const T* vr = v + t * D;
    for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(vr[d]);
    for (int64_t g = 0; g < G; ++g) {
      const float p = scores[g * n + t];
      float* ag = acc + g * D;
      for (int64_t d = 0; d < D; ++d) ag[d] += p * row[d];
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t d = 0; d < D; ++d) out[g * D + d] = static_cast<T>(acc[g * D + d] * inv_sum[g]);
  }
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
                            double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "decode_attention: q, k, v must be 4-d");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "decode_attention: CPU only");
  TORCH_CHECK(k.sizes() == v.sizes() && k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "decode_attention: k, v must match each other and q's dtype");
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3), L = k.size(2);
  TORCH_CHECK(k.size(0) >= B && k.size(1) == H && k.size(3) == D, "decode_attention: cache shape does not fit q");
  TORCH_CHECK(G <= kMaxGroup && D <= kMaxHeadDim, "decode_attention: group or head_dim too large");
  TORCH_CHECK(pos.scalar_type() == at::kLong && pos.numel() == B, "decode_attention: pos must be int64 [B]");
  TORCH_CHECK(k.stride(3) == 1 && k.stride(2) == D && v.stride(3) == 1 && v.stride(2) == D &&
              k.stride(1) == v.stride(1) && k.stride(0) == v.stride(0),
              "decode_attention: cache rows must be contiguous");
  auto qc = q.contiguous();
  auto pc = pos.contiguous();
  auto out = at::empty_like(qc);
  const int64_t* p = pc.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(p[b] >= 0 && p[b] < L, "decode_attention: position out of the cache");
  const int64_t slot_stride = k.stride(0), head_stride = k.stride(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    const scalar_t* qp = qc.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / H, h = i % H;
        const int64_t base = b * slot_stride + h * head_stride;
        auto* attend = D == 64 ? attend_one<scalar_t, 64> : D == 128 ? attend_one<scalar_t, 128>
                                                           : attend_one<scalar_t, 0>;
        attend(qp + i * G * D, kp + base, vp + base, op + i * G * D, p[b] + 1, G, D, static_cast<float>(scale),
               scores);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmbatch, m) {  // a fragment: packed_linear.py defines llmbatch::packed_linear too
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor pos, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmbatch, CPU, m) {
  m.impl("decode_attention", &decode_attention);
}
