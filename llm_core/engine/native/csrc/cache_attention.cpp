// Attention over the engine's KV cache on CPU, for decode and prefill alike. Registered as
// llmbatch::cache_attention.
//
// q        [N, H_kv, G, D]   N query tokens; the G query heads that share KV head h (GQA)
// k, v     [N, H_kv, D]      the same tokens' new keys and values
// k_cache  [S, H_kv, L, D]   one layer of the cache (v_cache alike), written in place
// slots    [N] int64         the slot each token belongs to
// pos      [N] int64         each token's position in its slot
// out      [N, H_kv, G, D]
// shared_k, shared_v  [H_kv, P, D], optional: a prompt prefix that several slots hold (copied into
//          each, prefix_cache.py); shared_len [N] int64: how many of token i's first entries are
//          that prefix (0: none). A decode token reads those entries from this one copy instead of
//          its slot's: the same values, so the same output bit for bit, but one copy stays in the
//          CPU's caches where each slot's copy came from memory (about a third of a decode call's
//          keys and values for the Debian prompts' 50 shared tokens).
//
// First every token's k / v is stored at (slots[i], pos[i]) (so in a prefill a token sees the
// other new tokens of its sequence), then token i attends to its slot's entries 0..pos[i] only:
// causal, never reading stale entries of a longer earlier occupant, never reading padding.
// SDPA on CPU runs a tiled flash kernel whose per-tile setup dominates at one query row, and a
// prefill through it pads every sequence to the batch's longest. Here a task is one KV head of
// either one decode token (attend_one) or a run of consecutive prefill tokens of one sequence
// (attend_run), streaming that sequence's keys and values once for all its query rows and
// accumulating in fp32 (scores, softmax, weighted values: three passes). Tasks are spread over
// torch's intra-op threads. Measured in benchmarks/RESULTS.md (issue 16, fifth session).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "vector_math.h"

namespace {

using namespace llmbatch;

constexpr int64_t kMaxGroup = 16;   // query heads per KV head
constexpr int64_t kMaxHeadDim = 256;

// Keys this far ahead are prefetched: a sequence's keys and values come from memory, not cache
// (a layer's cache is megabytes, every layer's far more than the caches), and the hardware
// prefetchers stop at each 4 KiB page.
constexpr int64_t kPrefetchKeys = 2 * kLanes;

template <typename T>
inline void prefetch_rows(const T* base, int64_t from, int64_t to, int64_t D) {
  const char* first = reinterpret_cast<const char*>(base + from * D);
  const char* last = reinterpret_cast<const char*>(base + to * D);
  for (const char* line = first; line < last; line += 64) __builtin_prefetch(line);
}

// Query heads whose value sums fit in registers at once: 16 vectors.
template <int64_t kD>
constexpr int64_t kValueHeads = std::max<int64_t>(1, 16 / (kD / kLanes));

// acc[g][:] = sum_t scores[g][t] * v[t][:] for kG heads, the sums in kG x kD / 16 registers.
// Rows 0..ns-1 are read from sv (the shared prefix), the rest from v.
template <typename T, int64_t kD, int64_t kG>
void weigh_values(const float* scores, int64_t n_pad, const T* sv, int64_t ns, const T* v, int64_t n, float* acc) {
  constexpr int64_t kV = kD / kLanes;
  vfloat sums[kG][kV] = {};
  for (int64_t t = 0; t < n; ++t) {
    if (t % 8 == 0) {
      prefetch_rows(v, std::max(ns, t + kPrefetchKeys), std::min(n, t + kPrefetchKeys + 8), kD);
    }
    const T* vr = (t < ns ? sv : v) + t * kD;
    vfloat row[kV];
    for (int64_t i = 0; i < kV; ++i) row[i] = load_float(vr + i * kLanes);
    for (int64_t g = 0; g < kG; ++g) {
      const float p = scores[g * n_pad + t];
      for (int64_t i = 0; i < kV; ++i) sums[g][i] += p * row[i];
    }
  }
  for (int64_t g = 0; g < kG; ++g) {
    for (int64_t i = 0; i < kV; ++i) store(acc + g * kD + i * kLanes, sums[g][i]);
  }
}

// Decode: one token, its G query heads against keys 0..n-1 of one KV head.
// kD > 0: the head size as a compile-time constant (fully unrolled loops); 0: D at run time.
// Scores of 16 keys at a time: per key a vector of partial products, summed across lanes for
// the 16 together (sum16); softmax with a vectorised exp.
// Keys and values 0..ns-1 come from sk / sv (the shared prefix's copy), the rest from k / v.
template <typename T, int64_t kD>
void attend_one(const T* q, const T* sk, const T* sv, int64_t ns, const T* k, const T* v, T* out, int64_t n,
                int64_t G, int64_t D_, float scale, std::vector<float>& scores) {
  const int64_t D = kD > 0 ? kD : D_;
  const int64_t n_pad = (n + kLanes - 1) / kLanes * kLanes;
  float qf[kMaxGroup * kMaxHeadDim];
  float acc[kMaxGroup * kMaxHeadDim];
  float row[kMaxHeadDim];
  float block[kLanes * kMaxHeadDim];
  for (int64_t i = 0; i < G * D; ++i) {
    qf[i] = static_cast<float>(q[i]) * scale;
    acc[i] = 0.f;
  }
  scores.resize(G * n_pad);
  // Pass 1: every query head's score against each key, the key rows converted once for all G heads.
  int64_t t = 0;
  if (D % kLanes == 0) {
    for (; t + kLanes <= n; t += kLanes) {
      prefetch_rows(k, std::max(ns, t + kPrefetchKeys), std::min(n, t + kPrefetchKeys + kLanes), D);
      for (int64_t j = 0; j < kLanes; ++j) {
        const int64_t key = t + kBitReversed[j];
        const T* kr = (key < ns ? sk : k) + key * D;
        for (int64_t d = 0; d < D; d += kLanes) store(block + j * D + d, load_float(kr + d));
      }
      for (int64_t g = 0; g < G; ++g) {
        const float* qg = qf + g * D;
        vfloat partial[kLanes];
        for (int64_t j = 0; j < kLanes; ++j) {
          vfloat p = {};
          for (int64_t d = 0; d < D; d += kLanes) p += load(qg + d) * load(block + j * D + d);
          partial[j] = p;
        }
        store(scores.data() + g * n_pad + t, sum16(partial));
      }
    }
  }
  for (; t < n; ++t) {
    const T* kr = (t < ns ? sk : k) + t * D;
    for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(kr[d]);
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = qf + g * D;
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += qg[d] * row[d];
      scores[g * n_pad + t] = s;
    }
  }
  // Pass 2: softmax per head, in place (the padding past n at -inf, so it weighs 0).
  float inv_sum[kMaxGroup];
  for (int64_t g = 0; g < G; ++g) {
    float* sg = scores.data() + g * n_pad;
    std::fill(sg + n, sg + n_pad, -std::numeric_limits<float>::infinity());
    vfloat m = vfloat{} - std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n_pad; i += kLanes) {
      const vfloat x = load(sg + i);
      m = x > m ? x : m;
    }
    float top = m[0];
    for (int64_t i = 1; i < kLanes; ++i) top = std::max(top, m[i]);
    vfloat sum = {};
    for (int64_t i = 0; i < n_pad; i += kLanes) {
      const vfloat e = exp_nonpositive(load(sg + i) - top);
      store(sg + i, e);
      sum += e;
    }
    inv_sum[g] = 1.f / lane_sum(sum);
  }
  // Pass 3: the weighted sum of values, each value row read once for all G heads (for a known
  // head size, up to kValueHeads<kD> heads at a time with their sums in registers).
  if constexpr (kD > 0 && kD % kLanes == 0) {
    constexpr int64_t chunk = kValueHeads<kD>;
    for (int64_t g = 0; g < G; g += chunk) {
      const float* sg = scores.data() + g * n_pad;
      switch (std::min(chunk, G - g)) {
        case 1: weigh_values<T, kD, 1>(sg, n_pad, sv, ns, v, n, acc + g * D); break;
        case 2: weigh_values<T, kD, std::min<int64_t>(2, chunk)>(sg, n_pad, sv, ns, v, n, acc + g * D); break;
        case 3: weigh_values<T, kD, std::min<int64_t>(3, chunk)>(sg, n_pad, sv, ns, v, n, acc + g * D); break;
        default: weigh_values<T, kD, chunk>(sg, n_pad, sv, ns, v, n, acc + g * D); break;
      }
    }
  } else {
    for (int64_t t = 0; t < n; ++t) {
      const T* vr = (t < ns ? sv : v) + t * D;
      for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(vr[d]);
      for (int64_t g = 0; g < G; ++g) {
        const float p = scores[g * n_pad + t];
        float* ag = acc + g * D;
        for (int64_t d = 0; d < D; ++d) ag[d] += p * row[d];
      }
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t d = 0; d < D; ++d) out[g * D + d] = static_cast<T>(acc[g * D + d] * inv_sum[g]);
  }
}

// Prefill: a task is a run of consecutive tokens of one sequence and one KV head, its R = tokens
// x G query rows (row j * G + g) vectorised across rows in kLanes-float vectors (GCC's vector
// extensions: one AVX-512 register, two AVX2 ones). Every key and value row is read once for all
// R rows; scores are kept transposed ([key][row]), so neither pass needs a horizontal sum.
constexpr int64_t kMaxRunRows = 64;  // at most 4 vectors of rows per task

struct RunScratch {
  std::vector<float> qT, sT, kf, vf;
};

template <typename T, int kVecs>
void attend_run(const T* q, const T* k, const T* v, T* out, int64_t first, int64_t tokens, int64_t G, int64_t D,
                float scale, RunScratch& sc) {
  constexpr int64_t RP = kVecs * kLanes;  // rows, padded to whole vectors
  const int64_t R = tokens * G, n = first + tokens;
  sc.qT.assign(D * RP, 0.f);
  sc.sT.resize(n * RP);
  sc.kf.resize(n * D);
  sc.vf.resize(n * D);
  float* qT = sc.qT.data();
  float* sT = sc.sT.data();
  float* kf = sc.kf.data();
  float* vf = sc.vf.data();
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t d = 0; d < D; ++d) qT[d * RP + r] = static_cast<float>(q[r * D + d]) * scale;
  }
  for (int64_t i = 0; i < n * D; ++i) kf[i] = static_cast<float>(k[i]);
  for (int64_t i = 0; i < n * D; ++i) vf[i] = static_cast<float>(v[i]);
  // Pass 1: scores, two keys at a time (2 x kVecs independent accumulators).
  for (int64_t t = 0; t < n; t += 2) {
    const float* k0 = kf + t * D;
    const float* k1 = t + 1 < n ? k0 + D : k0;
    vfloat a0[kVecs] = {}, a1[kVecs] = {};
    for (int64_t d = 0; d < D; ++d) {
      for (int i = 0; i < kVecs; ++i) {
        const vfloat qv = load(qT + d * RP + i * kLanes);
        a0[i] += qv * k0[d];
        a1[i] += qv * k1[d];
      }
    }
    for (int i = 0; i < kVecs; ++i) store(sT + t * RP + i * kLanes, a0[i]);
    if (t + 1 < n) {
      for (int i = 0; i < kVecs; ++i) store(sT + (t + 1) * RP + i * kLanes, a1[i]);
    }
  }
  // Causal: key first + 1 + j is past the first j + 1 tokens of the run.
  for (int64_t j = 0; j + 1 < tokens; ++j) {
    float* row = sT + (first + 1 + j) * RP;
    std::fill(row, row + (j + 1) * G, -std::numeric_limits<float>::infinity());
  }
  // Softmax of each row over the keys, vectorised across rows.
  vfloat m[kVecs], sum[kVecs];
  for (int i = 0; i < kVecs; ++i) {
    m[i] = vfloat{} - std::numeric_limits<float>::infinity();
    sum[i] = vfloat{};
  }
  for (int64_t t = 0; t < n; ++t) {
    for (int i = 0; i < kVecs; ++i) {
      const vfloat x = load(sT + t * RP + i * kLanes);
      m[i] = x > m[i] ? x : m[i];
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    for (int i = 0; i < kVecs; ++i) {
      const vfloat e = exp_nonpositive(load(sT + t * RP + i * kLanes) - m[i]);
      store(sT + t * RP + i * kLanes, e);
      sum[i] += e;
    }
  }
  // Pass 3: out[r][d] = sum_t p[t][r] v[t][d], four value columns at a time.
  for (int64_t d0 = 0; d0 < D; d0 += 4) {
    const int64_t dn = std::min<int64_t>(4, D - d0);
    vfloat acc[4][kVecs] = {};
    for (int64_t t = 0; t < n; ++t) {
      const float* vt = vf + t * D + d0;
      for (int i = 0; i < kVecs; ++i) {
        const vfloat pv = load(sT + t * RP + i * kLanes);
        for (int64_t dd = 0; dd < 4; ++dd) acc[dd][i] += pv * vt[dd < dn ? dd : 0];
      }
    }
    for (int64_t dd = 0; dd < dn; ++dd) {
      for (int i = 0; i < kVecs; ++i) {
        const vfloat o = acc[dd][i] / sum[i];
        for (int64_t lane = 0; lane < kLanes && i * kLanes + lane < R; ++lane) {
          out[(i * kLanes + lane) * D + d0 + dd] = static_cast<T>(o[lane]);
        }
      }
    }
  }
}

at::Tensor cache_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor k_cache,
                           at::Tensor v_cache, const at::Tensor& slots, const at::Tensor& pos, double scale,
                           const std::optional<at::Tensor>& shared_k, const std::optional<at::Tensor>& shared_v,
                           const std::optional<at::Tensor>& shared_len) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 3 && v.dim() == 3 && k_cache.dim() == 4 && v_cache.dim() == 4,
              "cache_attention: q must be 4-d, k and v 3-d, the caches 4-d");
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu() && v_cache.device().is_cpu(),
              "cache_attention: CPU only");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype && k_cache.scalar_type() == dtype &&
                  v_cache.scalar_type() == dtype && k_cache.sizes() == v_cache.sizes(),
              "cache_attention: k, v and the caches must have q's dtype; the caches one shape");
  const int64_t N = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3);
  const int64_t S = k_cache.size(0), L = k_cache.size(2);
  TORCH_CHECK(k_cache.size(1) == H && k_cache.size(3) == D, "cache_attention: cache shape does not fit q");
  TORCH_CHECK(k.size(0) == N && k.size(1) == H && k.size(2) == D && v.sizes() == k.sizes(),
              "cache_attention: k, v must be [N, H_kv, D] like q");
  TORCH_CHECK(G <= kMaxGroup && D <= kMaxHeadDim, "cache_attention: group or head_dim too large");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.numel() == N && pos.scalar_type() == at::kLong &&
                  pos.numel() == N,
              "cache_attention: slots and pos must be int64 [N]");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "cache_attention: the caches must be contiguous");
  auto qc = q.contiguous();
  auto kc = k.contiguous();
  auto vc = v.contiguous();
  auto sc = slots.contiguous();
  auto pc = pos.contiguous();
  auto out = at::empty_like(qc);
  const int64_t* s = sc.data_ptr<int64_t>();
  const int64_t* p = pc.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK(s[i] >= 0 && s[i] < S, "cache_attention: slot out of the cache");
    TORCH_CHECK(p[i] >= 0 && p[i] < L, "cache_attention: position out of the cache");
  }
  const bool shared = shared_k.has_value() || shared_v.has_value() || shared_len.has_value();
  TORCH_CHECK(!shared || (shared_k.has_value() && shared_v.has_value() && shared_len.has_value()),
              "cache_attention: shared_k, shared_v and shared_len go together");
  at::Tensor sk, sv, sl;
  int64_t P = 0;
  if (shared) {
    sk = shared_k->contiguous();
    sv = shared_v->contiguous();
    sl = shared_len->contiguous();
    TORCH_CHECK(sk.dim() == 3 && sk.size(0) == H && sk.size(2) == D && sv.sizes() == sk.sizes() &&
                    sk.scalar_type() == dtype && sv.scalar_type() == dtype && sk.device().is_cpu() &&
                    sv.device().is_cpu(),
                "cache_attention: shared_k and shared_v must be [H_kv, P, D] in q's dtype");
    TORCH_CHECK(sl.scalar_type() == at::kLong && sl.numel() == N, "cache_attention: shared_len must be int64 [N]");
    P = sk.size(1);
    const int64_t* lens = sl.data_ptr<int64_t>();
    for (int64_t i = 0; i < N; ++i) {
      // At most the tokens before this one: its own key and value are always its slot's, just stored.
      TORCH_CHECK(lens[i] >= 0 && lens[i] <= P && lens[i] <= p[i],
                  "cache_attention: shared_len out of the shared prefix or past the token's position");
    }
  }
  const int64_t* shared_lens = shared ? sl.data_ptr<int64_t>() : nullptr;
  const int64_t slot_stride = H * L * D, head_stride = L * D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "cache_attention", [&] {
    const scalar_t* qp = qc.data_ptr<scalar_t>();
    const scalar_t* knew = kc.data_ptr<scalar_t>();
    const scalar_t* vnew = vc.data_ptr<scalar_t>();
    scalar_t* kp = k_cache.data_ptr<scalar_t>();
    scalar_t* vp = v_cache.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t* skp = shared ? sk.data_ptr<scalar_t>() : nullptr;
    const scalar_t* svp = shared ? sv.data_ptr<scalar_t>() : nullptr;
    // Every write before any read: a prefill token reads its sequence's other new tokens.
    at::parallel_for(0, N * H, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t t = i / H, h = i % H;
        const int64_t row = s[t] * slot_stride + h * head_stride + p[t] * D;
        std::copy(knew + i * D, knew + (i + 1) * D, kp + row);
        std::copy(vnew + i * D, vnew + (i + 1) * D, vp + row);
      }
    });
    // Tasks: runs of consecutive tokens of one sequence (a prefill's), at most kMaxRunRows query
    // rows each, or single tokens (decode), times the KV heads.
    const int64_t run_tokens = std::max<int64_t>(1, kMaxRunRows / G);
    std::vector<std::pair<int64_t, int64_t>> runs;  // (first token, tokens)
    for (int64_t i = 0; i < N; ++i) {
      if (!runs.empty()) {
        auto& [a, n] = runs.back();
        if (n < run_tokens && s[a] == s[i] && p[a] + n == p[i]) {
          ++n;
          continue;
        }
      }
      runs.emplace_back(i, 1);
    }
    auto* one = D == 64 ? attend_one<scalar_t, 64> : D == 128 ? attend_one<scalar_t, 128> : attend_one<scalar_t, 0>;
    decltype(&attend_run<scalar_t, 1>) by_vecs[] = {attend_run<scalar_t, 1>, attend_run<scalar_t, 2>,
                                                   attend_run<scalar_t, 3>, attend_run<scalar_t, 4>};
    const float scale_f = static_cast<float>(scale);
    at::parallel_for(0, static_cast<int64_t>(runs.size()) * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores;
      RunScratch scratch;
      std::vector<scalar_t> q_run, out_run;
      for (int64_t task = begin; task < end; ++task) {
        const auto [a, n] = runs[task / H];
        const int64_t h = task % H, rows = G * D;
        const int64_t base = s[a] * slot_stride + h * head_stride;
        if (task + 1 < end) {  // the next task's first own keys and values, while this one computes
          const int64_t a_next = runs[(task + 1) / H].first;
          const int64_t next = s[a_next] * slot_stride + ((task + 1) % H) * head_stride;
          const int64_t from = shared_lens != nullptr && runs[(task + 1) / H].second == 1 ? shared_lens[a_next] : 0;
          prefetch_rows(kp + next, from, std::min(p[a_next] + 1, from + kPrefetchKeys), D);
          prefetch_rows(vp + next, from, std::min(p[a_next] + 1, from + kPrefetchKeys), D);
        }
        if (n == 1) {
          // Decode reads the shared prefix from its one copy; a prefill run (once per sequence) its slot's.
          const int64_t ns = shared_lens != nullptr ? shared_lens[a] : 0;
          const int64_t shared_base = h * P * D;
          one(qp + (a * H + h) * rows, ns > 0 ? skp + shared_base : nullptr, ns > 0 ? svp + shared_base : nullptr, ns,
              kp + base, vp + base, op + (a * H + h) * rows, p[a] + 1, G, D, scale_f, scores);
          continue;
        }
        // The run's query rows (tokens a..a+n-1 of head h) gathered as [n * G, D].
        q_run.resize(n * rows);
        out_run.resize(n * rows);
        for (int64_t j = 0; j < n; ++j) {
          std::copy_n(qp + ((a + j) * H + h) * rows, rows, q_run.data() + j * rows);
        }
        by_vecs[(n * G + kLanes - 1) / kLanes - 1](q_run.data(), kp + base, vp + base, out_run.data(), p[a], n, G, D,
                                                  scale_f, scratch);
        for (int64_t j = 0; j < n; ++j) {
          std::copy_n(out_run.data() + j * rows, rows, op + ((a + j) * H + h) * rows);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmbatch, m) {  // a fragment: packed_linear.py defines llmbatch::packed_linear too
  m.def("cache_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, "
        "Tensor pos, float scale, Tensor? shared_k=None, Tensor? shared_v=None, Tensor? shared_len=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmbatch, CPU, m) {
  m.impl("cache_attention", &cache_attention);
}
