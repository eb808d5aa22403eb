/* The int8 gated convolution: see sanp_gated_conv_int8 in sanp_gated_conv.h.
 *
 * Layout of the work (batch 1):
 *   1. the gate's scale is quantized as the int8 graph does; open output channels
 *      (quantized scale != s_zero) and live input channels (some value != x_zero) are
 *      listed: k_out and k_in of them; every output starts as a closed channel's value;
 *   2. the live inputs are packed once into a padded map of unsigned bytes, x + 128
 *      (outside the input: x_zero + 128, which the correction below turns into 0), kq
 *      = k_in rounded up to 4 bytes a pixel (the extra bytes meet zero weights), so
 *      that the window of kernel row i of an output pixel is kw * kq consecutive bytes;
 *   3. the open filters are packed into panels of 16 channels, per kernel row
 *      [kw * kq / 4][16 channels][4 bytes]: the operand of VNNI's vpdpbusd (where
 *      the CPU has AVX-512 VBMI and C_in <= 64, the live channels of each map pixel
 *      and filter tap are gathered by one vpermb, which in a pruned network, whose
 *      inputs are partly dead, cost more than the dot products when done bytewise);
 *   4. for each block of 4 output pixels and each panel, vpdpbusd adds 4 products
 *      (u8 x s8) per lane, one 32-bit broadcast of a pixel's window bytes against 16
 *      channels at a time, reading the map in place; the portable path does the same
 *      sums in plain C;
 *   5. acc = dot - (128 + x_zero) * sum(w) + bias, then the two requantizations of the
 *      int8 graph (CONV_2D to y, MUL by the scale to out) in float, rounded to nearest
 *      even (16 channels at a time in AVX-512 on the VNNI path), and the open channels
 *      are scattered.
 * With several threads (sanp_set_num_threads) and at least INT8_PARALLEL_FACTOR times
 * sanp_parallel_min_macs() MACs, the pixel blocks are split over them; every thread
 * writes its own pixels.
 *
 * Compiled once: the VNNI functions carry their own target attribute and run only
 * where the CPU reports AVX-512 F, BW, VL and VNNI (checked at first use). On arm64
 * Linux / Android, where the CPU reports the dot-product instructions (HWCAP_ASIMDDP),
 * the dot products are SDOT's (sanp_int8_dot_arm.c, the one file built with +dotprod),
 * on a map holding x itself (signed) and corrected by x_zero * sum(w). Elsewhere the
 * portable C path runs.
 */
#include "sanp_gated_conv.h"
#include "sanp_geometry.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SANP_INT8_VNNI 1
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define SANP_INT8_SDOT 1
/* sanp_int8_dot_arm.c, compiled with +dotprod */
void sanp_int8_dots_sdot(const uint8_t* const base[8], size_t row_stride, int kh, int row,
                         const int8_t* panel, int32_t acc[8][16]);
#endif

enum { LANES = 16, PIX = 8, MAX_K = 1 << 15, INT8_PARALLEL_FACTOR = 8 };

typedef struct {
  Geometry g;
  int8_t* ys;
  const uint8_t* map;   /* (Hp, Wp, kq) padded unsigned map */
  int wp, kq, row;      /* map width, bytes a pixel, window bytes a kernel row (kw kq) */
  int k_out;
  const int* out_idx;   /* open output channels (k_out) */
  const int8_t* panels; /* ceil(k_out / 16) panels of kh * row * 16 bytes */
  const long long* cb;  /* per lane of each panel: bias - (128 + x_zero) * sum(w) */
  const int32_t* cb32;  /* the same in int32, where exact32 */
  const float* m_conv;  /* per lane: x_scale * w_scale / y_scale */
  const int32_t* s_q;   /* per lane: quantized scale - s_zero */
  int exact32;          /* every cb small enough for int32 sums on the VNNI path */
  int y_zero, out_zero, lo, hi;
  int sdot;             /* Arm SDOT path: the map holds x itself (flip 0), else x + 128 */
  float m_mul;          /* y_scale * s_scale / out_scale */
  int blocks;           /* pixel blocks of PIX */
  int chunk;            /* blocks per task */
  int vnni;
  SanpStatus status;
} Work;

static int use_portable = 0;

void sanp_int8_force_portable(int portable) { use_portable = portable != 0; }

static int cpu_has_vnni(void) {
#ifdef SANP_INT8_VNNI
  static int known = -1;
  if (known < 0) {
    __builtin_cpu_init();
    known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }
  return known;
#else
  return 0;
#endif
}

/* AVX-512 VBMI (vpermb): the live channels of a pixel or a tap gathered in one shuffle. */
static int cpu_has_vbmi(void) {
#ifdef SANP_INT8_VNNI
  static int known = -1;
  if (known < 0) known = cpu_has_vnni() && __builtin_cpu_supports("avx512vbmi");
  return known;
#else
  return 0;
#endif
}

/* Armv8.2 FEAT_DotProd (HWCAP_ASIMDDP, bit 20 of AT_HWCAP on Linux and Android). */
static int cpu_has_sdot(void) {
#ifdef SANP_INT8_SDOT
  return (getauxval(AT_HWCAP) & (1UL << 20)) != 0;
#else
  return 0;
#endif
}

const char* sanp_int8_isa(void) {
  if (use_portable) return "portable";
  return cpu_has_vnni() ? "avx512vnni" : cpu_has_sdot() ? "neon-dotprod" : "portable";
}

static inline int clamp_int(long v, int lo, int hi) {
  return v < lo ? lo : v > hi ? hi : (int)v;
}

/* round(v) to nearest even as an integer, v clamped first to [-1e9, 1e9] (NaN: -1e9). */
static inline long round_even(float v) {
  if (!(v > -1e9f)) v = -1e9f;
  if (v > 1e9f) v = 1e9f;
  return (long)nearbyintf(v);
}

/* The two requantizations of one (pixel, lane). */
static inline int requantize(const Work* wk, long a, int lane) {
  const int y = clamp_int(round_even((float)a * wk->m_conv[lane]) + wk->y_zero, -128, 127);
  const long v = round_even((float)((y - wk->y_zero) * wk->s_q[lane]) * wk->m_mul) +
                 wk->out_zero;
  return clamp_int(v, wk->lo, wk->hi);
}

#ifdef SANP_INT8_VNNI
#define SANP_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/* acc[p][l] += the dot products of pixel p's windows with lane l's filter. */
SANP_VNNI_TARGET static void dots_vnni(const Work* wk, const uint8_t* const base[PIX],
                                       const int8_t* panel, __m512i acc[PIX]) {
  const Geometry* g = &wk->g;
  __m512i a[PIX];
  for (int p = 0; p < PIX; ++p) a[p] = _mm512_setzero_si512();
  const size_t row_stride = (size_t)wk->wp * wk->kq;
  for (int i = 0; i < g->kh; ++i) {
    const uint8_t* x[PIX];
    for (int p = 0; p < PIX; ++p) x[p] = base[p] + i * row_stride;
    const int8_t* w = panel + (size_t)i * wk->row * LANES;
    for (int k = 0; k < wk->row; k += 4) {
      const __m512i wv = _mm512_loadu_si512((const void*)(w + (size_t)k * LANES));
      for (int p = 0; p < PIX; ++p) {
        int32_t v;
        memcpy(&v, x[p] + k, 4);
        a[p] = _mm512_dpbusd_epi32(a[p], _mm512_set1_epi32(v), wv);
      }
    }
  }
  for (int p = 0; p < PIX; ++p) acc[p] = a[p];
}

/* Pixels in pairs for a panel of at most 8 lanes: lanes 0-7 of register j hold pixel
 * 2j, lanes 8-15 pixel 2j + 1, against the panel's 8 filters copied into both halves:
 * half the vpdpbusd of dots_vnni, where half its lanes would compute nothing. */
SANP_VNNI_TARGET static void dots_vnni_pairs(const Work* wk, const uint8_t* const base[PIX],
                                             const int8_t* panel, __m512i acc[PIX / 2]) {
  const Geometry* g = &wk->g;
  __m512i a[PIX / 2];
  for (int j = 0; j < PIX / 2; ++j) a[j] = _mm512_setzero_si512();
  const size_t row_stride = (size_t)wk->wp * wk->kq;
  for (int i = 0; i < g->kh; ++i) {
    const uint8_t* x[PIX];
    for (int p = 0; p < PIX; ++p) x[p] = base[p] + i * row_stride;
    const int8_t* w = panel + (size_t)i * wk->row * LANES;
    for (int k = 0; k < wk->row; k += 4) {
      const __m512i w16 = _mm512_loadu_si512((const void*)(w + (size_t)k * LANES));
      const __m512i wv = _mm512_shuffle_i64x2(w16, w16, 0x44);  /* lanes 0-7 twice */
      for (int j = 0; j < PIX / 2; ++j) {
        int32_t lo, hi;
        memcpy(&lo, x[2 * j] + k, 4);
        memcpy(&hi, x[2 * j + 1] + k, 4);
        const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(lo)),
                                             _mm256_set1_epi32(hi), 1);
        a[j] = _mm512_dpbusd_epi32(a[j], v, wv);
      }
    }
  }
  for (int j = 0; j < PIX / 2; ++j) acc[j] = a[j];
}

/* requantize() on 16 lanes with their constants (cb, m_conv, s_q): the same float
 * operations, in the same order. */
SANP_VNNI_TARGET static __m512i requantize_vnni(const Work* wk, __m512i acc, __m512i cb,
                                                __m512 m_conv, __m512i s_q) {
  const __m512 lo = _mm512_set1_ps(-1e9f), hi = _mm512_set1_ps(1e9f);
  const __m512i a = _mm512_add_epi32(acc, cb);
  __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(a), m_conv);
  f = _mm512_min_ps(_mm512_max_ps(f, lo), hi);
  __m512i y = _mm512_add_epi32(_mm512_cvtps_epi32(f), _mm512_set1_epi32(wk->y_zero));
  y = _mm512_min_epi32(_mm512_max_epi32(y, _mm512_set1_epi32(-128)), _mm512_set1_epi32(127));
  const __m512i t = _mm512_mullo_epi32(_mm512_sub_epi32(y, _mm512_set1_epi32(wk->y_zero)), s_q);
  f = _mm512_mul_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(wk->m_mul));
  f = _mm512_min_ps(_mm512_max_ps(f, lo), hi);
  __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(f), _mm512_set1_epi32(wk->out_zero));
  return _mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32(wk->lo)),
                          _mm512_set1_epi32(wk->hi));
}

/* One panel of one pixel block on the VNNI path: out[p][l], the requantized outputs. */
SANP_VNNI_TARGET static void panel_vnni(const Work* wk, const uint8_t* const base[PIX],
                                        const int8_t* panel, int q, int lanes,
                                        int32_t out[PIX][LANES]) {
  __m512i cb = _mm512_loadu_si512((const void*)(wk->cb32 + q * LANES));
  __m512 m_conv = _mm512_loadu_ps(wk->m_conv + q * LANES);
  __m512i s_q = _mm512_loadu_si512((const void*)(wk->s_q + q * LANES));
  if (lanes <= LANES / 2 && wk->exact32) {
    __m512i acc[PIX / 2];
    dots_vnni_pairs(wk, base, panel, acc);
    cb = _mm512_shuffle_i64x2(cb, cb, 0x44);
    m_conv = _mm512_shuffle_f32x4(m_conv, m_conv, 0x44);
    s_q = _mm512_shuffle_i64x2(s_q, s_q, 0x44);
    for (int j = 0; j < PIX / 2; ++j) {
      int32_t both[LANES];
      _mm512_storeu_si512((void*)both, requantize_vnni(wk, acc[j], cb, m_conv, s_q));
      memcpy(out[2 * j], both, sizeof(int32_t) * LANES / 2);
      memcpy(out[2 * j + 1], both + LANES / 2, sizeof(int32_t) * LANES / 2);
    }
    return;
  }
  __m512i acc[PIX];
  dots_vnni(wk, base, panel, acc);
  for (int p = 0; p < PIX; ++p) {
    if (wk->exact32) {
      _mm512_storeu_si512((void*)out[p], requantize_vnni(wk, acc[p], cb, m_conv, s_q));
      continue;
    }
    int32_t a[LANES];
    _mm512_storeu_si512((void*)a, acc[p]);
    for (int l = 0; l < lanes; ++l)
      out[p][l] = requantize(wk, (long)(a[l] + wk->cb[q * LANES + l]), q * LANES + l);
  }
}
#endif

static void dots_portable(const Work* wk, const uint8_t* const base[PIX],
                          const int8_t* panel, int32_t acc[PIX][LANES]) {
  const size_t row_stride = (size_t)wk->wp * wk->kq;
  for (int p = 0; p < PIX; ++p) {
    int32_t s[LANES] = {0};
    for (int i = 0; i < wk->g.kh; ++i) {
      const uint8_t* x = base[p] + i * row_stride;
      const int8_t* w = panel + (size_t)i * wk->row * LANES;
      for (int k = 0; k < wk->row; k += 4)
        for (int l = 0; l < LANES; ++l)
          for (int t = 0; t < 4; ++t) s[l] += (int32_t)x[k + t] * w[(size_t)k * LANES + l * 4 + t];
    }
    memcpy(acc[p], s, sizeof(s));
  }
}

static void run_blocks(Work* wk, int begin, int end) {
  const Geometry* g = &wk->g;
  const int pixels = g->out_h * g->out_w;
  const int panels = (wk->k_out + LANES - 1) / LANES;
  int oh = begin * PIX / g->out_w, ow = begin * PIX % g->out_w;  /* of pixel `first` */
  for (int b = begin; b < end; ++b) {
    const int first = b * PIX;
    const uint8_t* base[PIX];
    for (int p = 0; p < PIX; ++p) {  /* past the map: pixel `first`, results unused */
      if (first + p < pixels)
        base[p] = wk->map + ((size_t)oh * g->sh * wk->wp + (size_t)ow * g->sw) * wk->kq;
      else
        base[p] = base[0];
      if (++ow == g->out_w) { ow = 0; ++oh; }
    }
    for (int q = 0; q < panels; ++q) {
      const int8_t* panel = wk->panels + (size_t)q * g->kh * wk->row * LANES;
      const int lanes = wk->k_out - q * LANES < LANES ? wk->k_out - q * LANES : LANES;
      int32_t out[PIX][LANES];
#ifdef SANP_INT8_VNNI
      if (wk->vnni) panel_vnni(wk, base, panel, q, lanes, out);
      else
#endif
      {
        int32_t acc[PIX][LANES];
#ifdef SANP_INT8_SDOT
        if (wk->sdot)
          sanp_int8_dots_sdot(base, (size_t)wk->wp * wk->kq, g->kh, wk->row, panel, acc);
        else
#endif
          dots_portable(wk, base, panel, acc);
        for (int p = 0; p < PIX; ++p)
          for (int l = 0; l < lanes; ++l)
            out[p][l] = requantize(wk, (long)(acc[p][l] + wk->cb[q * LANES + l]), q * LANES + l);
      }
      for (int p = 0; p < PIX && first + p < pixels; ++p) {
        int8_t* y = wk->ys + (size_t)(first + p) * g->c_out;
        for (int l = 0; l < lanes; ++l) y[wk->out_idx[q * LANES + l]] = (int8_t)out[p][l];
      }
    }
  }
}

static void block_task(void* context, int index) {
  Work* wk = (Work*)context;
  const int begin = index * wk->chunk;
  const int end = begin + wk->chunk < wk->blocks ? begin + wk->chunk : wk->blocks;
  if (begin < end) run_blocks(wk, begin, end);
}

static SanpStatus check_quant(const float* q, int c_out) {
  for (int i = 0; i < SANP_INT8_QUANT + c_out; ++i) {
    const int is_zero_point = i < SANP_INT8_QUANT && i % 2 == 1;
    const float v = q[i];
    if (is_zero_point) {
      if (!(v >= -128.0f && v <= 127.0f) || v != floorf(v)) return SANP_ERROR_PARAMS;
    } else if (!(v > 0.0f && v < 1e30f)) {
      return SANP_ERROR_PARAMS;
    }
  }
  return SANP_OK;
}

typedef uint8_t v16u __attribute__((vector_size(16)));

static inline v16u load16(const void* p) {
  v16u v;
  memcpy(&v, p, sizeof(v));
  return v;
}

/* dst[k] = src[k] ^ flip: x + 128 as unsigned bytes (flip 0x80), or x (flip 0). */
static void flip_copy(const int8_t* src, size_t n, uint8_t flip, uint8_t* dst) {
  size_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const v16u v = load16(src + k) ^ flip;
    memcpy(dst + k, &v, sizeof(v));
  }
  for (; k < n; ++k) dst[k] = (uint8_t)src[k] ^ flip;
}

/* differs[r] |= bits of (x[p, r] ^ zero) over a (pixels, c) map. */
static void or_differences(const uint8_t* x, size_t pixels, int c, uint8_t zero,
                           uint8_t* differs) {
  int r = 0;
  for (; r + 16 <= c; r += 16) {  /* 16 channels at a time, down the map */
    v16u acc = {0};
    const uint8_t* px = x + r;
    for (size_t p = 0; p < pixels; ++p, px += c) acc |= load16(px) ^ zero;
    memcpy(differs + r, &acc, sizeof(acc));
  }
  for (; r < c; ++r) {
    uint8_t acc = 0;
    for (size_t p = 0; p < pixels; ++p) acc |= x[p * c + r] ^ zero;
    differs[r] = acc;
  }
}

#ifdef SANP_INT8_VNNI
#define SANP_VBMI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))

/* dst[0 .. kq) = src[index[r]] for r < k_in (xor `flip`), then zeros; c_in, kq <= 64.
 * Returns the sum of the gathered values as signed bytes. */
SANP_VBMI_TARGET static int gather64(const int8_t* src, int c_in, const uint8_t* index,
                                     int k_in, int kq, uint8_t flip, uint8_t* dst) {
  const __mmask64 in = c_in == 64 ? ~0ULL : (1ULL << c_in) - 1;
  const __mmask64 live = k_in == 64 ? ~0ULL : (1ULL << k_in) - 1;
  const __mmask64 out = kq == 64 ? ~0ULL : (1ULL << kq) - 1;
  const __m512i x = _mm512_maskz_loadu_epi8(in, src);
  const __m512i idx = _mm512_loadu_si512((const void*)index);
  const __m512i g = _mm512_maskz_permutexvar_epi8(live, idx, x);
  _mm512_mask_storeu_epi8(dst, out, _mm512_xor_si512(g, _mm512_maskz_set1_epi8(live, (char)flip)));
  /* signed sum: (v + 128) summed as unsigned bytes, less 128 per value */
  const __m512i u = _mm512_maskz_xor_epi32(~0, g, _mm512_set1_epi8((char)0x80));
  const __m512i sums = _mm512_sad_epu8(_mm512_maskz_mov_epi8(live, u), _mm512_setzero_si512());
  return (int)_mm512_reduce_add_epi64(sums) - 128 * k_in;
}
#endif

/* The padded unsigned map of the live inputs (step 2). */
static void pack_map(const Geometry* g, const int8_t* xs, int x_zero, uint8_t flip,
                     const int* live, const uint8_t* index64, int k_in, int kq, int hp,
                     int wp, uint8_t* map) {
  (void)index64;  /* used on the VNNI path only */
  const uint8_t pad = (uint8_t)(int8_t)x_zero ^ flip;
  if (k_in == g->c_in && kq == k_in) {  /* rows copied whole, flipping the sign bit */
    const size_t pixel_bytes = (size_t)kq;
    for (int i = 0; i < hp; ++i) {
      const int ih = i - g->pt;
      uint8_t* dst = map + (size_t)i * wp * pixel_bytes;
      if (ih < 0 || ih >= g->h) {
        memset(dst, pad, (size_t)wp * pixel_bytes);
        continue;
      }
      const int left = g->pl, inside = wp - left < g->w ? wp - left : g->w;
      memset(dst, pad, (size_t)left * pixel_bytes);
      const int8_t* src = xs + (size_t)ih * g->w * g->c_in;
      uint8_t* row = dst + (size_t)left * pixel_bytes;
      flip_copy(src, (size_t)inside * pixel_bytes, flip, row);
      memset(row + (size_t)inside * pixel_bytes, pad, (size_t)(wp - left - inside) * pixel_bytes);
    }
    return;
  }
  for (int i = 0; i < hp; ++i) {
    const int ih = i - g->pt;
    for (int j = 0; j < wp; ++j) {
      const int iw = j - g->pl;
      uint8_t* dst = map + ((size_t)i * wp + j) * kq;
      if (ih < 0 || ih >= g->h || iw < 0 || iw >= g->w) {
        memset(dst, pad, (size_t)k_in);
      } else {
        const int8_t* src = xs + ((size_t)ih * g->w + iw) * g->c_in;
        if (k_in == g->c_in) {
          for (int r = 0; r < k_in; ++r) dst[r] = (uint8_t)src[r] ^ flip;
#ifdef SANP_INT8_VNNI
        } else if (index64 != NULL) {
          gather64(src, g->c_in, index64, k_in, kq, flip, dst);
          continue;
#endif
        } else {
          for (int r = 0; r < k_in; ++r) dst[r] = (uint8_t)src[live[r]] ^ flip;
        }
      }
      memset(dst + k_in, 0, (size_t)(kq - k_in));
    }
  }
}

SanpStatus sanp_gated_conv2d_int8(const SanpTensor* x, const SanpTensor* scale,
                                  const SanpTensor* filter, const SanpTensor* bias,
                                  const SanpTensor* params, const SanpTensor* quant,
                                  SanpTensor* out) {
  Work wk;
  memset(&wk, 0, sizeof(wk));
  Geometry* g = &wk.g;
  SanpStatus s = geometry(x, filter, params, SANP_INT8, 1, g);
  if (s != SANP_OK) return s;
  if ((s = check(scale, SANP_FLOAT32, scale != NULL && scale->rank == 2 ? 2 : 4)) != SANP_OK)
    return s;
  if ((s = check(bias, SANP_INT32, 1)) != SANP_OK) return s;
  int scale_units = 1;  /* (1, C_out) or (1, 1, 1, C_out) */
  for (int i = 0; i < scale->rank - 1; ++i) scale_units *= scale->dims[i];
  if ((s = check(quant, SANP_FLOAT32, 1)) != SANP_OK) return s;
  if ((s = check(out, SANP_INT8, 4)) != SANP_OK) return s;
  if (scale_units != 1 || scale->dims[scale->rank - 1] != g->c_out ||
      bias->dims[0] != g->c_out || quant->dims[0] != SANP_INT8_QUANT + g->c_out ||
      out->dims[0] != 1 || out->dims[1] != g->out_h || out->dims[2] != g->out_w ||
      out->dims[3] != g->c_out)
    return SANP_ERROR_SHAPE;
  if ((long)g->kh * g->kw * (g->c_in + 3) > MAX_K) return SANP_ERROR_SHAPE; /* int32 sums */
  const float* q = (const float*)quant->data;
  if ((s = check_quant(q, g->c_out)) != SANP_OK) return s;
  const float x_scale = q[0], y_scale = q[2], s_scale = q[4], out_scale = q[6];
  const int x_zero = (int)q[1], s_zero = (int)q[5];
  wk.y_zero = (int)q[3]; wk.out_zero = (int)q[7];
  wk.lo = g->act >= 1 ? (wk.out_zero > -128 ? wk.out_zero : -128) : -128;
  wk.hi = 127;
  if (g->act == 2) {
    const long six = wk.out_zero + round_even(6.0f / out_scale);
    wk.hi = six < 127 ? (int)six : 127;
  }
  wk.m_mul = y_scale * s_scale / out_scale;
  const int8_t* xs = (const int8_t*)x->data;
  wk.ys = (int8_t*)out->data;
  const int32_t* bs = (const int32_t*)bias->data;

  const int pixels = g->out_h * g->out_w;
  const int closed = clamp_int(wk.out_zero, wk.lo, wk.hi);
  memset(wk.ys, (int8_t)closed, (size_t)pixels * g->c_out);

  /* Open outputs, with their lanes' constants (panels padded to 16 lanes). */
  const int c_out16 = (g->c_out + LANES - 1) / LANES * LANES;
  int* index = (int*)malloc(sizeof(int) * (size_t)(g->c_in + g->c_out) + 1);
  int32_t* s_q = (int32_t*)calloc((size_t)c_out16, sizeof(int32_t));
  long long* cb = (long long*)calloc((size_t)c_out16, sizeof(long long));
  int32_t* cb32 = (int32_t*)calloc((size_t)c_out16, sizeof(int32_t));
  float* m_conv = (float*)calloc((size_t)c_out16, sizeof(float));
  if (index == NULL || s_q == NULL || cb == NULL || cb32 == NULL || m_conv == NULL) {
    free(index); free(s_q); free(cb); free(cb32); free(m_conv);
    return SANP_ERROR_MEMORY;
  }
  int* live = index;
  int* out_idx = index + g->c_in;
  const float* sc = (const float*)scale->data;
  for (int c = 0; c < g->c_out; ++c) {
    const int sq = clamp_int(round_even(sc[c] / s_scale) + s_zero, -128, 127);
    if (sq == s_zero) continue;
    out_idx[wk.k_out] = c;
    s_q[wk.k_out] = sq - s_zero;
    m_conv[wk.k_out] = x_scale * q[SANP_INT8_QUANT + c] / y_scale;
    ++wk.k_out;
  }
  int k_in = 0;
  uint8_t* differs = (uint8_t*)calloc((size_t)g->c_in, 1);
  if (differs == NULL) {
    free(index); free(s_q); free(cb); free(cb32); free(m_conv);
    return SANP_ERROR_MEMORY;
  }
  if (wk.k_out > 0) {  /* one pass over the map: channel r differs from x_zero somewhere */
    or_differences((const uint8_t*)xs, (size_t)g->h * g->w, g->c_in, (uint8_t)x_zero,
                   differs);
    for (int r = 0; r < g->c_in; ++r)
      if (differs[r]) live[k_in++] = r;
  }
  free(differs);
  wk.kq = (k_in + 3) / 4 * 4;
  wk.row = g->kw * wk.kq;
  const int hp = (g->out_h - 1) * g->sh + g->kh, wp = (g->out_w - 1) * g->sw + g->kw;
  wk.wp = wp;
  const int panels = (wk.k_out + LANES - 1) / LANES;
  uint8_t* map = (uint8_t*)malloc((size_t)hp * wp * wk.kq + 4);
  int8_t* packed = (int8_t*)calloc((size_t)panels * g->kh * wk.row * LANES + 1, 1);
  if (wk.k_out == 0 || map == NULL || packed == NULL) {
    free(map); free(packed); free(index); free(s_q); free(cb); free(cb32); free(m_conv);
    return wk.k_out == 0 ? SANP_OK : SANP_ERROR_MEMORY;
  }
  /* With VBMI and at most 64 input channels, live channels are gathered by vpermb. */
  uint8_t index64[64] = {0};
  const int vbmi = !use_portable && cpu_has_vbmi() && g->c_in <= 64;
  for (int r = 0; vbmi && r < k_in; ++r) index64[r] = (uint8_t)live[r];
  wk.sdot = !use_portable && cpu_has_sdot();
  const uint8_t flip = wk.sdot ? 0 : 0x80;
  pack_map(g, xs, x_zero, flip, live, vbmi ? index64 : NULL, k_in, wk.kq, hp, wp, map);
  const int8_t* ws = (const int8_t*)filter->data;
  int8_t gathered_bytes[256];  /* a tap's live weights, zero-padded to kq */
  int8_t* gathered = wk.kq <= (int)sizeof(gathered_bytes) ? gathered_bytes
                                                          : (int8_t*)malloc((size_t)wk.kq);
  if (gathered == NULL) {
    free(map); free(packed); free(index); free(s_q); free(cb); free(cb32); free(m_conv);
    return SANP_ERROR_MEMORY;
  }
  memset(gathered, 0, (size_t)wk.kq);
  wk.exact32 = 1;
  for (int o = 0; o < wk.k_out; ++o) {
    const int8_t* w = ws + (size_t)out_idx[o] * g->kh * g->kw * g->c_in;
    int8_t* panel = packed + (size_t)(o / LANES) * g->kh * wk.row * LANES;
    long sum = 0;
    if (k_in == g->c_in && k_in == wk.kq) {  /* 4-byte groups copied whole */
      const int8_t* src = w;
      int8_t* dst = panel + (o % LANES) * 4;
      for (int i = 0; i < g->kh; ++i)
        for (int k = 0; k < wk.row; k += 4, src += 4) {
          memcpy(dst + ((size_t)i * wk.row + k) * LANES, src, 4);
          sum += src[0] + src[1] + src[2] + src[3];
        }
    } else {  /* a tap's live weights gathered, then copied in 4-byte groups */
      for (int i = 0; i < g->kh; ++i)
        for (int j = 0; j < g->kw; ++j) {
          const int8_t* src = w + ((size_t)i * g->kw + j) * g->c_in;
          int8_t* dst = panel + ((size_t)i * wk.row + (size_t)j * wk.kq) * LANES + (o % LANES) * 4;
#ifdef SANP_INT8_VNNI
          if (vbmi) {
            sum += gather64(src, g->c_in, index64, k_in, wk.kq, 0, (uint8_t*)gathered);
          } else
#endif
          for (int r = 0; r < k_in; ++r) {
            gathered[r] = src[live[r]];
            sum += gathered[r];
          }
          for (int k = 0; k < wk.kq; k += 4) memcpy(dst + (size_t)k * LANES, gathered + k, 4);
        }
    }
    cb[o] = (long long)bs[out_idx[o]] - (long long)((flip ? 128 : 0) + x_zero) * sum;
    if (cb[o] < -(1LL << 30) || cb[o] > (1LL << 30)) wk.exact32 = 0;
    else cb32[o] = (int32_t)cb[o];
  }
  if (gathered != gathered_bytes) free(gathered);
  wk.map = map; wk.out_idx = out_idx; wk.panels = packed;
  wk.cb = cb; wk.cb32 = cb32; wk.s_q = s_q; wk.m_conv = m_conv;
  wk.vnni = !use_portable && cpu_has_vnni();
  wk.blocks = (pixels + PIX - 1) / PIX;
  wk.status = SANP_OK;
  /* An int8 MAC here costs about an eighth of a float one: split 8x fewer layers. */
  const long macs = (long)pixels * wk.k_out * g->kh * g->kw * k_in;
  const int threads = sanp_num_threads();
  if (threads > 1 && macs >= INT8_PARALLEL_FACTOR * sanp_parallel_min_macs() && wk.blocks > 1) {
    const int tasks = wk.blocks < threads ? wk.blocks : threads;
    wk.chunk = (wk.blocks + tasks - 1) / tasks;
    sanp_parallel(tasks, block_task, &wk);
  } else {
    run_blocks(&wk, 0, wk.blocks);
  }
  free(map); free(packed); free(index); free(s_q); free(cb); free(cb32); free(m_conv);
  return wk.status;
}
