// Few-row linear layers on the CPU: y (R, N) = x (R, K) @ w (N, K)^T + b, for decode steps
// (R = batch) and short prefills.
//
// Why: a batch-1 decode step is one matrix-vector product per weight matrix, bound by how fast
// the weights stream from memory. PyTorch's CPU matmul sends such shapes to MKL's fp32 gemv
// (one thread) or oneDNN's bf16 kernels, which stream a fraction of what the memory allows.
// Here the threads stream consecutive tiles of 8 or 16 weight rows (chunks taken from a shared
// counter, see run_tiles) and keep each loaded weight vector in registers for up to four input
// rows (weight-stationary), so a short prefill reads the weights once too. Accumulation is fp32
// in every case.
//
// Built on the machine that runs it (-march=native, see gpt2xl/kernels/__init__.py); the
// instruction set is chosen at compile time: AVX512 (+AVX512-BF16 dot products for bf16),
// AVX2 + FMA, or plain C++.

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define GPT2XL_VEC 1
#include <immintrin.h>
#else
#define GPT2XL_VEC 0
#endif

namespace {

constexpr int MAX_NR = 16;  // weight rows per tile (see run): a tile of ~50 KB streams fastest
                            // here; the accumulators must fit the 32 vector registers
constexpr int RT = 4;      // input rows per tile: each loaded weight vector feeds up to four rows

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

#if defined(__AVX512F__)
constexpr int VL = 16;
using vf = __m512;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vload(const uint16_t* p) {  // 16 bf16 -> 16 fp32
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(vf a) { return _mm512_reduce_add_ps(a); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int VL = 8;
using vf = __m256;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vload(const uint16_t* p) {  // 8 bf16 -> 8 fp32
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
constexpr int VL = 0;
#endif

inline float wvalue(const float* w, int64_t k) { return w[k]; }
inline float wvalue(const uint16_t* w, int64_t k) { return bf16_to_float(w[k]); }

template <typename Y>
inline Y store(float v);
template <>
inline float store<float>(float v) { return v; }
template <>
inline c10::BFloat16 store<c10::BFloat16>(float v) { return c10::BFloat16(v); }  // round to nearest even

// acc[r][i] = dot(x row r, w row i) for nr weight rows (<= NR) and rt input rows (<= RT).
// W is float or uint16_t (bf16 bits); x is fp32.
template <typename W, int NRT, int RTT>
inline void tile_fma(const W* w, int64_t K, int nr, const float* x, int64_t K_x, float acc[RT][MAX_NR]) {
  int64_t k = 0;
#if GPT2XL_VEC
  if (nr == NRT) {
    vf a[RTT][NRT];
    for (int r = 0; r < RTT; ++r)
      for (int i = 0; i < NRT; ++i) a[r][i] = vzero();
    for (; k + VL <= K; k += VL) {
      vf xv[RTT];
      for (int r = 0; r < RTT; ++r) xv[r] = vload(x + r * K_x + k);
      for (int i = 0; i < NRT; ++i) {
        vf wv = vload(w + i * K + k);
        for (int r = 0; r < RTT; ++r) a[r][i] = vfma(wv, xv[r], a[r][i]);
      }
    }
    for (int r = 0; r < RTT; ++r)
      for (int i = 0; i < NRT; ++i) acc[r][i] = vsum(a[r][i]);
  } else {
    for (int r = 0; r < RTT; ++r)
      for (int i = 0; i < NRT; ++i) acc[r][i] = 0.f;
  }
#else
  for (int r = 0; r < RTT; ++r)
    for (int i = 0; i < NRT; ++i) acc[r][i] = 0.f;
#endif
  // Remaining columns (and, for a partial tile, all of them) in plain C++.
  for (int i = 0; i < nr; ++i)
    for (int r = 0; r < RTT; ++r) {
      float s = 0.f;
      for (int64_t kk = (nr == NRT ? k : 0); kk < K; ++kk) s += wvalue(w + i * K, kk) * x[r * K_x + kk];
      acc[r][i] += s;
    }
}

#if defined(__AVX512BF16__)
// bf16 weights and bf16 inputs with AVX512-BF16: each vdpbf16ps multiplies 32 pairs and adds
// them into 16 fp32 lanes. K must be a multiple of 32 (checked by the caller).
template <int NRT, int RTT>
inline void tile_dpbf16(const uint16_t* w, int64_t K, int nr, const uint16_t* x, int64_t K_x, float acc[RT][MAX_NR]) {
  __m512 a[RTT][NRT];
  for (int r = 0; r < RTT; ++r)
    for (int i = 0; i < NRT; ++i) a[r][i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh xv[RTT];
    for (int r = 0; r < RTT; ++r) xv[r] = (__m512bh)_mm512_loadu_si512(x + r * K_x + k);
    for (int i = 0; i < NRT; ++i) {
      if (i >= nr) break;
      __m512bh wv = (__m512bh)_mm512_loadu_si512(w + i * K + k);
      for (int r = 0; r < RTT; ++r) a[r][i] = _mm512_dpbf16_ps(a[r][i], wv, xv[r]);
    }
  }
  for (int r = 0; r < RTT; ++r)
    for (int i = 0; i < NRT; ++i) acc[r][i] = i < nr ? _mm512_reduce_add_ps(a[r][i]) : 0.f;
}
#endif

// Tiles of NRT weight rows x up to RT input rows over the whole of K. With several threads, they
// take chunks of consecutive tiles (~512 KB of weights each) from a shared counter rather than
// one fixed half each: on a shared machine one core is often slower for a while, and a static
// split would leave the other idle at the end of every call (measured: same median, a much
// better worst case). One thread streams every tile in one pass: through the counter loop it ran
// 10-20% slower on gpt2's 768-wide rows (the loop around the atomic compiles worse), which is
// what the CI gate's one-thread tuned-vs-plain ratio caught.
template <int NRT, typename W, typename X, typename Y, typename Tile>
void run_tiles(const W* w, const X* x, int64_t R, int64_t N, int64_t K, Tile tile, const W* bias, Y* y) {
  const int64_t groups = (N + NRT - 1) / NRT;
  auto tiles = [&](int64_t g0, int64_t g1) {
    float acc[RT][MAX_NR];
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n0 = g * NRT;
      const int nr = static_cast<int>(std::min<int64_t>(NRT, N - n0));
      for (int64_t r0 = 0; r0 < R; r0 += RT) {
        const int rt = static_cast<int>(std::min<int64_t>(RT, R - r0));
        tile(w + n0 * K, nr, x + r0 * K, rt, acc);
        for (int r = 0; r < rt; ++r)
          for (int i = 0; i < nr; ++i) y[(r0 + r) * N + n0 + i] = store<Y>(acc[r][i] + (bias ? wvalue(bias, n0 + i) : 0.f));
      }
    }
  };
  if (at::get_num_threads() == 1 || at::in_parallel_region()) {
    tiles(0, groups);
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, (512 << 10) / (NRT * K * static_cast<int64_t>(sizeof(W))));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    for (int64_t g0; (g0 = next.fetch_add(chunk)) < groups;) tiles(g0, std::min(groups, g0 + chunk));
  });
}

// Tile functors: the weight type, the input type and how a tile is computed.
template <typename W>
struct FmaTile {  // float or bf16 weights, fp32 inputs
  int64_t K;
  template <int NRT, int RTT>
  void call(const W* w, int nr, const float* x, float acc[RT][MAX_NR]) const {
    tile_fma<W, NRT, RTT>(w, K, nr, x, K, acc);
  }
};

#if defined(__AVX512BF16__)
struct Dpbf16Tile {  // bf16 weights and inputs, K % 32 == 0
  int64_t K;
  template <int NRT, int RTT>
  void call(const uint16_t* w, int nr, const uint16_t* x, float acc[RT][MAX_NR]) const {
    tile_dpbf16<NRT, RTT>(w, K, nr, x, K, acc);
  }
};
#endif

// Dispatch on the number of input rows. Weight rows per tile: as many as the accumulators allow
// (32 vector registers with AVX512, 16 with AVX2), up to ~50 KB of weights per tile, which
// streams fastest here; 4 input rows per tile beyond two (a short prefill then reads each weight
// tile from cache, not from memory).
#if defined(__AVX512F__)
constexpr int NR_DECODE = 8, NR_DECODE_SHORT = 16, NR_TWO = 8, NR_MANY = 4;
#else
constexpr int NR_DECODE = 8, NR_DECODE_SHORT = 8, NR_TWO = 4, NR_MANY = 2;
#endif

template <typename W, typename X, typename Y, typename T>
void run(const W* w, const X* x, int64_t R, int64_t N, int64_t K, const W* bias, Y* y, const T& t) {
  if (R == 1 && K * static_cast<int64_t>(sizeof(W)) <= 4096) {  // short rows: more of them per tile
    run_tiles<NR_DECODE_SHORT>(w, x, R, N, K, [&](const W* wp, int nr, const X* xp, int, float acc[RT][MAX_NR]) {
      t.template call<NR_DECODE_SHORT, 1>(wp, nr, xp, acc);
    }, bias, y);
  } else if (R == 1) {
    run_tiles<NR_DECODE>(w, x, R, N, K, [&](const W* wp, int nr, const X* xp, int, float acc[RT][MAX_NR]) {
      t.template call<NR_DECODE, 1>(wp, nr, xp, acc);
    }, bias, y);
  } else if (R == 2) {
    run_tiles<NR_TWO>(w, x, R, N, K, [&](const W* wp, int nr, const X* xp, int, float acc[RT][MAX_NR]) {
      t.template call<NR_TWO, 2>(wp, nr, xp, acc);
    }, bias, y);
  } else {
    run_tiles<NR_MANY>(w, x, R, N, K, [&](const W* wp, int nr, const X* xp, int rt, float acc[RT][MAX_NR]) {
      switch (rt) {
        case 1: t.template call<NR_MANY, 1>(wp, nr, xp, acc); break;
        case 2: t.template call<NR_MANY, 2>(wp, nr, xp, acc); break;
        case 3: t.template call<NR_MANY, 3>(wp, nr, xp, acc); break;
        default: t.template call<NR_MANY, 4>(wp, nr, xp, acc); break;
      }
    }, bias, y);
  }
}

}  // namespace

// y = x @ w.T + bias for a contiguous (R, K) x and a contiguous (N, K) w of the same dtype
// (float32 or bfloat16); bias (N,) or None. Returns (R, N) in x's dtype.
torch::Tensor linear_small(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear_small: shapes (R, K) and (N, K)");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "linear_small: x and w must be contiguous");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "linear_small: x and w must share a dtype");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "linear_small: CPU tensors only");
  const int64_t R = x.size(0), K = x.size(1), N = w.size(0);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == N && bias->is_contiguous() && bias->scalar_type() == w.scalar_type(),
                "linear_small: bias must be a contiguous (N,) tensor of w's dtype");
  }
  const bool has_bias = bias.has_value() && bias->defined();
  auto out = torch::empty({R, N}, x.options());
  if (w.scalar_type() == torch::kFloat32) {
    const float* bp = has_bias ? bias->data_ptr<float>() : nullptr;
    run(w.data_ptr<float>(), x.data_ptr<float>(), R, N, K, bp, out.data_ptr<float>(), FmaTile<float>{K});
    return out;
  }
  TORCH_CHECK(w.scalar_type() == torch::kBFloat16, "linear_small: float32 or bfloat16 only");
  const auto* wb = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  const auto* bp = has_bias ? reinterpret_cast<const uint16_t*>(bias->data_ptr<at::BFloat16>()) : nullptr;
  auto* y = out.data_ptr<at::BFloat16>();
#if defined(__AVX512BF16__)
  if (K % 32 == 0) {
    const auto* xb = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    run(wb, xb, R, N, K, bp, y, Dpbf16Tile{K});
    return out;
  }
#endif
  auto x32 = x.to(torch::kFloat32).contiguous();  // bf16 weights, fp32 inputs: FMA on widened values
  run(wb, x32.data_ptr<float>(), R, N, K, bp, y, FmaTile<uint16_t>{K});
  return out;
}

std::string isa() {
#if defined(__AVX512BF16__)
  return "avx512+avx512_bf16";
#elif defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma";
#else
  return "scalar";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear_small", &linear_small, "y = x @ w.T + bias for few rows (decode / short prefill)");
  m.def("isa", &isa, "instruction set the kernels were compiled for");
}
