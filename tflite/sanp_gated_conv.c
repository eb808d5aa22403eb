/* The gated convolution: see sanp_gated_conv.h.
 *
 * Layout of the work (batch 1):
 *   1. open output channels (scale != 0) and live input channels (non-zero) are
 *      listed: k_out and k_in of them;
 *   2. at most 8 open channels and >= 8 live inputs (k_in rounded up to 8 wastes
 *      <= 25 %): the live inputs are packed into a zero-padded (Hp, Wp, kp) map (rows
 *      copied whole when every channel is live), and a kernel of 8 pixels x 1 filter
 *      or 4 pixels x 2 filters runs vectors along the input channels of a window's
 *      kernel row (kw * kp consecutive floats of both the map and the filter, read in
 *      place), adding up each sum's lanes at the end;
 *   3. otherwise, at most 4 open channels and rows of >= 8 pixels: the live inputs
 *      are packed into planes, one per channel and stride phase, and a kernel of 2
 *      channels x 4 vectors of 8 output pixels broadcasts filter taps against rows of
 *      the planes;
 *   4. many pixels (>= 4 k_out, or >= k_out with <= 16 live inputs): the live inputs
 *      are packed into a zero-padded (Hp, Wp, k_in) map, the open filters into panels
 *      of 16, and a 6-pixel x 16-channel kernel broadcasts inputs against two vectors
 *      of filters, along each kernel row's kw * k_in consecutive floats;
 *   5. few pixels and many filters: the live inputs are unfolded into a transposed
 *      im2col matrix A, in blocks of 16 pixels of (taps * k_in, 16) each (with >= 8
 *      live inputs from 8 x 8 tiles transposed in registers, k_in rounded up to 8), and a
 *      6-channel x 16-pixel register-blocked kernel reads the filters in place
 *      (C_out, kh, kw, C_in rows, TFLite's own layout: no weight packing), one
 *      broadcast per open channel and live input;
 *      in every layout MACs fall with k_in * k_out, as the FLOPs counter says;
 *   6. bias, scale and activation are applied and scattered to the open channels
 *      (stored as whole vectors where the open channels are contiguous); every
 *      other output is 0 (not written twice when every channel is open).
 * Vectors are GCC/Clang vector extensions: the instructions of the flags this file is
 * compiled with (SSE2, AVX2 + FMA or AVX-512 on x86-64; two NEON registers per vector
 * on arm64).
 *
 * The file is compiled once per instruction set (the Makefile's VARIANTS): with
 * -DSANP_VARIANT=avx2 its public functions are named sanp_gated_conv2d_avx2 and so on,
 * and sanp_dispatch.c forwards the public names to the best variant the CPU runs.
 */
#ifdef SANP_VARIANT
#define SANP_JOIN2(name, variant) name##_##variant
#define SANP_JOIN(name, variant) SANP_JOIN2(name, variant)
#define sanp_status_message SANP_JOIN(sanp_status_message, SANP_VARIANT)
#define sanp_gated_conv2d_output_shape SANP_JOIN(sanp_gated_conv2d_output_shape, SANP_VARIANT)
#define sanp_gated_conv2d SANP_JOIN(sanp_gated_conv2d, SANP_VARIANT)
#define sanp_se_gated_conv2d SANP_JOIN(sanp_se_gated_conv2d, SANP_VARIANT)
#define sanp_se_gate SANP_JOIN(sanp_se_gate, SANP_VARIANT)
#endif
#include "sanp_gated_conv.h"
#include "sanp_geometry.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4)));

/* The widest map channel_sums reads as one stream: 8 vectors (period * 8 % c == 0). */
enum { SANP_MAX_STREAM_CHANNELS = 64 };

enum { PIXELS = 16, CHANNELS = 6, PANEL = 16, ROWS = 6, PLANAR_MAX_OPEN = 4, VECTORS = 4,
       DOT_MAX_OPEN = 8 };

const char* sanp_status_message(SanpStatus status) {
  switch (status) {
    case SANP_OK: return "ok";
    case SANP_ERROR_RANK: return "a tensor has the wrong rank";
    case SANP_ERROR_DTYPE: return "a tensor has the wrong dtype";
    case SANP_ERROR_SHAPE: return "tensor shapes do not agree";
    case SANP_ERROR_PARAMS: return "invalid stride, padding or activation";
    case SANP_ERROR_SIZE: return "a buffer is smaller than its shape";
    case SANP_ERROR_MEMORY: return "out of memory";
  }
  return "unknown status";
}

SanpStatus sanp_gated_conv2d_output_shape(const SanpTensor* x, const SanpTensor* filter,
                                          const SanpTensor* params, int32_t out_dims[4]) {
  Geometry g;
  SanpStatus s = geometry(x, filter, params, SANP_FLOAT32, 0, &g);
  if (s != SANP_OK) return s;
  out_dims[0] = 1; out_dims[1] = g.out_h; out_dims[2] = g.out_w; out_dims[3] = g.c_out;
  return SANP_OK;
}

static inline float activate(float v, int act) {
  if (act >= 1 && v < 0.0f) v = 0.0f;
  if (act == 2 && v > 6.0f) v = 6.0f;
  return v;
}

typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f activate8(v8f v, int act) {
  const v8f zero = {0}, six = zero + 6.0f;
  if (act >= 1) v = (v8f)((v8i)v & (v > zero));  /* lanes of the comparison: 0 or -1 */
  if (act == 2) {
    const v8i over = v > six;
    v = (v8f)(((v8i)v & ~over) | ((v8i)six & over));
  }
  return v;
}

/* Whether open[0:n] are n consecutive channels (one vector store can write them). */
static inline int contiguous(const int* open, int n) {
  return open[n - 1] - open[0] == n - 1;
}

/* acc[m] = sum_k w[m][index[k]] * a[k][0:16] for CHANNELS filter rows w[m], a being
 * (depth, 16) contiguous; with `wide` false only the first 8 pixels are computed. */
static void filter_rows_kernel(const float* const w[CHANNELS], const int* index, int depth,
                        const float* a, int wide, v8f acc[CHANNELS][2]) {
  v8f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
  v8f c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
  const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3], *w4 = w[4], *w5 = w[5];
  if (wide) {
    for (int k = 0; k < depth; ++k, a += PIXELS) {
      const v8f a0 = *(const v8f*)a;
      const v8f a1 = *(const v8f*)(a + 8);
      const int i = index[k];
      c00 += w0[i] * a0; c01 += w0[i] * a1;
      c10 += w1[i] * a0; c11 += w1[i] * a1;
      c20 += w2[i] * a0; c21 += w2[i] * a1;
      c30 += w3[i] * a0; c31 += w3[i] * a1;
      c40 += w4[i] * a0; c41 += w4[i] * a1;
      c50 += w5[i] * a0; c51 += w5[i] * a1;
    }
  } else {
    for (int k = 0; k < depth; ++k, a += PIXELS) {
      const v8f a0 = *(const v8f*)a;
      const int i = index[k];
      c00 += w0[i] * a0; c10 += w1[i] * a0; c20 += w2[i] * a0;
      c30 += w3[i] * a0; c40 += w4[i] * a0; c50 += w5[i] * a0;
    }
  }
  acc[0][0] = c00; acc[0][1] = c01; acc[1][0] = c10; acc[1][1] = c11;
  acc[2][0] = c20; acc[2][1] = c21; acc[3][0] = c30; acc[3][1] = c31;
  acc[4][0] = c40; acc[4][1] = c41; acc[5][0] = c50; acc[5][1] = c51;
}

/* acc[m] = sum over e < depth of a[m][tap[e]] * panel[e], for ROWS pixels whose windows
 * start at a[m] of a packed (hp, wp, k_in) input map, e running over a window's
 * kh * kw * k_in elements (tap[e] = i * row_stride + r for kernel row i and r < kw * k_in,
 * the row's consecutive floats), panel (depth, 16) the open filters. One flat loop: with
 * few live inputs a kernel row is a few floats, and a loop per row would cost more than
 * its FMAs. */
static inline __attribute__((always_inline)) void pixel_rows_kernel(
    const float* const a[ROWS], const int* tap, int depth, const float* panel,
    v8f acc[ROWS][2]) {
  v8f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
  v8f c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
  const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
  const float* w = panel;
  for (int e = 0; e < depth; ++e, w += PANEL) {
    const int o = tap[e];
    const v8f w0 = *(const v8f*)w;
    const v8f w1 = *(const v8f*)(w + 8);
    c00 += a0[o] * w0; c01 += a0[o] * w1;
    c10 += a1[o] * w0; c11 += a1[o] * w1;
    c20 += a2[o] * w0; c21 += a2[o] * w1;
    c30 += a3[o] * w0; c31 += a3[o] * w1;
    c40 += a4[o] * w0; c41 += a4[o] * w1;
    c50 += a5[o] * w0; c51 += a5[o] * w1;
  }
  acc[0][0] = c00; acc[0][1] = c01; acc[1][0] = c10; acc[1][1] = c11;
  acc[2][0] = c20; acc[2][1] = c21; acc[3][0] = c30; acc[3][1] = c31;
  acc[4][0] = c40; acc[4][1] = c41; acc[5][0] = c50; acc[5][1] = c51;
}

/* The same for a panel with at most 8 open filters: 12 pixel rows x 8 channels. */
static inline __attribute__((always_inline)) void pixel_rows_kernel_narrow(
    const float* const a[2 * ROWS], const int* tap, int depth, const float* panel,
    v8f acc[2 * ROWS]) {
  v8f c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0};
  v8f c6 = {0}, c7 = {0}, c8 = {0}, c9 = {0}, c10 = {0}, c11 = {0};
  const float* w = panel;
  for (int e = 0; e < depth; ++e, w += PANEL) {
    const int o = tap[e];
    const v8f w0 = *(const v8f*)w;
    c0 += a[0][o] * w0; c1 += a[1][o] * w0; c2 += a[2][o] * w0;
    c3 += a[3][o] * w0; c4 += a[4][o] * w0; c5 += a[5][o] * w0;
    c6 += a[6][o] * w0; c7 += a[7][o] * w0; c8 += a[8][o] * w0;
    c9 += a[9][o] * w0; c10 += a[10][o] * w0; c11 += a[11][o] * w0;
  }
  acc[0] = c0; acc[1] = c1; acc[2] = c2; acc[3] = c3; acc[4] = c4; acc[5] = c5;
  acc[6] = c6; acc[7] = c7; acc[8] = c8; acc[9] = c9; acc[10] = c10; acc[11] = c11;
}

/* Whether every input channel is live and fills whole vectors: the input's rows and the
 * filters can then be read as they are. */
static inline int all_inputs_live(const Geometry* g, int k_in, int kp) {
  return k_in == g->c_in && kp == k_in;
}

/* Writes the zero-padded (hp, wp, kp) map of the live inputs into dst:
 * dst[i][j][r] = x[i - pad_top][j - pad_left][live[r]] for r < k_in, 0 outside the input
 * and for k_in <= r < kp. Rows are copied whole when every channel is live (kp == c_in). */
static void pack_map(const Geometry* g, const float* xs, const int* live, int k_in, int kp,
                     int hp, int wp, float* dst) {
  const int j0 = g->pl < wp ? g->pl : wp, j1 = g->w + g->pl < wp ? g->w + g->pl : wp;
  const int whole = all_inputs_live(g, k_in, kp);
  for (int i = 0; i < hp; ++i, dst += (size_t)wp * kp) {
    const int ih = i - g->pt;
    if (ih < 0 || ih >= g->h) { memset(dst, 0, sizeof(float) * (size_t)wp * kp); continue; }
    for (size_t e = 0; e < (size_t)j0 * kp; ++e) dst[e] = 0.0f;  /* padding: a few floats */
    for (size_t e = (size_t)j1 * kp; e < (size_t)wp * kp; ++e) dst[e] = 0.0f;
    const float* src = xs + (size_t)ih * g->w * g->c_in;
    if (whole) {  /* the row's pixels, contiguous */
      memcpy(dst + (size_t)j0 * kp, src, sizeof(float) * (size_t)(j1 - j0) * kp);
      continue;
    }
    if (k_in == 1 && kp == 1) {  /* one live channel (a hard-pruned layer): a strided copy */
      const float* s = src + (size_t)(j0 - g->pl) * g->c_in + live[0];
      for (int j = j0; j < j1; ++j, s += g->c_in) dst[j] = *s;
      continue;
    }
    for (int j = j0; j < j1; ++j) {
      const float* s = src + (size_t)(j - g->pl) * g->c_in;
      float* d = dst + (size_t)j * kp;
      int r = 0;
      for (; r < k_in; ++r) d[r] = s[live[r]];
      for (; r < kp; ++r) d[r] = 0.0f;
    }
  }
}

/* out[r] = lane r of each of in[0..7]: an 8 x 8 transpose in registers (pairs of lanes,
 * then of pairs, then of halves). */
static inline void transpose8(const v8f in[8], v8f out[8]) {
  v8f t[8], u[8];
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = __builtin_shufflevector(in[2 * k], in[2 * k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[2 * k + 1] = __builtin_shufflevector(in[2 * k], in[2 * k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int k = 0; k < 2; ++k) {  /* u[4k + m]: lanes m and m + 4 of in[4k..4k+3] */
    u[4 * k] = __builtin_shufflevector(t[4 * k], t[4 * k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[4 * k + 1] = __builtin_shufflevector(t[4 * k], t[4 * k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[4 * k + 2] = __builtin_shufflevector(t[4 * k + 1], t[4 * k + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[4 * k + 3] =
        __builtin_shufflevector(t[4 * k + 1], t[4 * k + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int m = 0; m < 4; ++m) {
    out[m] = __builtin_shufflevector(u[m], u[4 + m], 0, 1, 2, 3, 8, 9, 10, 11);
    out[m + 4] = __builtin_shufflevector(u[m], u[4 + m], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

/* Writes the open filters as panels of 16 (taps, k_in, 16), lane n of panel m holding
 * filter open[16 m + n] at the live inputs (0 past k_out). When every input is live and
 * c_in is a multiple of 8, 8 filters x 8 weights are loaded as 8 filter-row vectors and
 * transposed in registers; otherwise each (tap, live input) row of a panel is gathered
 * from its 16 filters. */
static void pack_panels(const Geometry* g, const float* ws, const int* open, int k_out,
                        const int* live, int k_in, float* packed_w) {
  const int taps = g->kh * g->kw, depth = taps * k_in, panels = (k_out + PANEL - 1) / PANEL;
  const size_t filter_row = (size_t)taps * g->c_in;
  for (int panel = 0; panel < panels; ++panel) {
    const float* rows[PANEL];
    for (int n = 0; n < PANEL; ++n) {
      const int c = panel * PANEL + n;
      rows[n] = c < k_out ? ws + (size_t)open[c] * filter_row : NULL;
    }
    float* dst = packed_w + (size_t)panel * depth * PANEL;
    if (k_in == g->c_in && g->c_in % 8 == 0) {
      const v8f zero = {0};
      for (int half = 0; half < 2; ++half)
        for (int e0 = 0; e0 < depth; e0 += 8) {
          v8f in[8], out[8];
          for (int n = 0; n < 8; ++n) {
            const float* row = rows[half * 8 + n];
            in[n] = row != NULL ? *(const v8f_unaligned*)(row + e0) : zero;
          }
          transpose8(in, out);
          for (int e = 0; e < 8; ++e) *(v8f*)(dst + (size_t)(e0 + e) * PANEL + half * 8) = out[e];
        }
      continue;
    }
    for (int t = 0, e = 0; t < taps; ++t)
      for (int r = 0; r < k_in; ++r, ++e) {
        const size_t at = (size_t)t * g->c_in + live[r];
        for (int n = 0; n < PANEL; ++n) dst[(size_t)e * PANEL + n] = rows[n] ? rows[n][at] : 0.0f;
      }
  }
}

/* d[0:16] = act((a + bias) * scale [+ r[0:16]]) for 16 consecutive channels. */
static inline void store16(float* d, const float* r, v8f a0, v8f a1, const v8f bias[2],
                           const v8f scale[2], int act) {
  v8f y0 = (a0 + bias[0]) * scale[0], y1 = (a1 + bias[1]) * scale[1];
  if (r != NULL) {
    y0 += *(const v8f_unaligned*)r;
    y1 += *(const v8f_unaligned*)(r + 8);
  }
  *(v8f_unaligned*)d = activate8(y0, act);
  *(v8f_unaligned*)(d + 8) = activate8(y1, act);
}

/* Many pixels, few filters: the input is packed once, the open filters into panels; rs
 * (when every panel is whole: 16 consecutive open channels) a residual added in the
 * stores, before the activation. */
static SanpStatus conv_pixel_rows(const Geometry* g, const float* xs, const float* ws,
                                  const float* bs, const float* sc, const int* open,
                                  int k_out, const int* live, int k_in, const float* rs,
                                  float* ys) {
  const int pixels = g->out_h * g->out_w, taps = g->kh * g->kw;
  const int hp = (g->out_h - 1) * g->sh + g->kh, wp = (g->out_w - 1) * g->sw + g->kw;
  const int panels = (k_out + PANEL - 1) / PANEL;
  const size_t k_in_alloc = k_in > 0 ? (size_t)k_in : 1;
  const size_t panel_bytes = sizeof(float) * (size_t)taps * k_in_alloc * PANEL * panels;
  float* packed_x = malloc(sizeof(float) * (size_t)hp * wp * k_in_alloc);
  float* packed_w = aligned_alloc(64, (panel_bytes + 63) / 64 * 64);
  const int depth = taps * k_in;
  int* pixel_offset = malloc(sizeof(int) * ((size_t)pixels + (size_t)depth));
  if (packed_x == NULL || packed_w == NULL || pixel_offset == NULL) {
    free(packed_x); free(packed_w); free(pixel_offset);
    return SANP_ERROR_MEMORY;
  }
  int* tap = pixel_offset + pixels;  /* offset of each window element in the packed map */
  pack_map(g, xs, live, k_in, k_in, hp, wp, packed_x);
  pack_panels(g, ws, open, k_out, live, k_in, packed_w);
  for (int i = 0; i < g->out_h; ++i)  /* where each output pixel's window starts */
    for (int j = 0; j < g->out_w; ++j)
      pixel_offset[i * g->out_w + j] = (i * g->sh * wp + j * g->sw) * k_in;
  for (int e = 0; e < depth; ++e)
    tap[e] = e / (g->kw * k_in) * wp * k_in + e % (g->kw * k_in);
  for (int panel = 0; panel < panels; ++panel) {
    const int lanes = k_out - panel * PANEL < PANEL ? k_out - panel * PANEL : PANEL;
    const float* weights = packed_w + (size_t)panel * taps * k_in * PANEL;
    const int whole = lanes == PANEL && contiguous(open + panel * PANEL, PANEL);
    v8f bias_v[2] = {{0}}, scale_v[2] = {{0}};
    for (int l = 0; whole && l < PANEL; ++l) {
      bias_v[l / 8][l % 8] = bs[open[panel * PANEL + l]];
      scale_v[l / 8][l % 8] = sc[open[panel * PANEL + l]];
    }
    for (int p0 = 0; lanes <= 8 && p0 < pixels; p0 += 2 * ROWS) {
      const float* a[2 * ROWS];
      for (int m = 0; m < 2 * ROWS; ++m) {
        const int p = p0 + m < pixels ? p0 + m : p0;  /* tail rows repeat a valid pixel */
        a[m] = packed_x + pixel_offset[p];
      }
      v8f acc[2 * ROWS];
      pixel_rows_kernel_narrow(a, tap, depth, weights, acc);
      for (int m = 0; m < 2 * ROWS && p0 + m < pixels; ++m) {
        float* dst = ys + (size_t)(p0 + m) * g->c_out;
        for (int l = 0; l < lanes; ++l) {
          const int c = open[panel * PANEL + l];
          dst[c] = activate((acc[m][l] + bs[c]) * sc[c], g->act);
        }
      }
    }
    for (int p0 = 0; lanes > 8 && p0 < pixels; p0 += ROWS) {
      const float* a[ROWS];
      for (int m = 0; m < ROWS; ++m) {
        const int p = p0 + m < pixels ? p0 + m : p0;  /* tail rows repeat a valid pixel */
        a[m] = packed_x + pixel_offset[p];
      }
      v8f acc[ROWS][2];
      pixel_rows_kernel(a, tap, depth, weights, acc);
      if (whole && p0 + ROWS <= pixels) {  /* the common case, unrolled: acc stays in registers */
        for (int m = 0; m < ROWS; ++m) {
          const size_t at = (size_t)(p0 + m) * g->c_out + open[panel * PANEL];
          store16(ys + at, rs != NULL ? rs + at : NULL, acc[m][0], acc[m][1], bias_v, scale_v,
                  g->act);
        }
        continue;
      }
      for (int m = 0; m < ROWS && p0 + m < pixels; ++m) {
        float* dst = ys + (size_t)(p0 + m) * g->c_out;
        if (whole) {  /* 16 consecutive open channels: two vector stores */
          const size_t at = (size_t)(p0 + m) * g->c_out + open[panel * PANEL];
          store16(ys + at, rs != NULL ? rs + at : NULL, acc[m][0], acc[m][1], bias_v, scale_v,
                  g->act);
          continue;
        }
        for (int l = 0; l < lanes; ++l) {
          const int c = open[panel * PANEL + l];
          const float v = (l < 8 ? acc[m][0][l] : acc[m][1][l - 8]) + bs[c];
          dst[c] = activate(v * sc[c], g->act);
        }
      }
    }
  }
  free(packed_x); free(packed_w); free(pixel_offset);
  return SANP_OK;
}

/* acc[m][q] = sum over live inputs r and taps t of w[m][t, r] * plane_r[tap t][offset[q]:+8]
 * for `nch` (1 or 2) open filters w[m] (rows of C_out, kh, kw, C_in) and VECTORS
 * vectors of 8 output pixels, reading the planes of conv_planar in place. */
static inline __attribute__((always_inline)) void planar_kernel(
    const float* planes, size_t channel_stride, const int* tap_offset, int taps, int c_in,
    const float* const w[2], const int* live, int k_in, const int offset[VECTORS], int nch,
    v8f acc[2][VECTORS]) {
  v8f a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
  for (int r = 0; r < k_in; ++r) {
    const float* plane = planes + (size_t)r * channel_stride;
    const float* w0 = w[0] + live[r];
    const float* w1 = w[1] + live[r];
    for (int t = 0; t < taps; ++t, w0 += c_in, w1 += c_in) {
      const float* p = plane + tap_offset[t];
      const v8f x0 = *(const v8f_unaligned*)(p + offset[0]);
      const v8f x1 = *(const v8f_unaligned*)(p + offset[1]);
      const v8f x2 = *(const v8f_unaligned*)(p + offset[2]);
      const v8f x3 = *(const v8f_unaligned*)(p + offset[3]);
      a00 += *w0 * x0; a01 += *w0 * x1; a02 += *w0 * x2; a03 += *w0 * x3;
      if (nch == 2) { a10 += *w1 * x0; a11 += *w1 * x1; a12 += *w1 * x2; a13 += *w1 * x3; }
    }
  }
  acc[0][0] = a00; acc[0][1] = a01; acc[0][2] = a02; acc[0][3] = a03;
  acc[1][0] = a10; acc[1][1] = a11; acc[1][2] = a12; acc[1][3] = a13;
}

/* Few open channels, rows of >= 8 output pixels: vectors run along output rows.
 * Each live input r is packed into sh * sw zero-padded phase planes of (ph, rw):
 * plane (a, b)[i][j] = x[i * sh + a - pad_top][j * sw + b - pad_left][live[r]], so that
 * tap (di, dj) of output row i, columns j..j+7, is 8 consecutive floats of plane
 * (di % sh, dj % sw), row i + di / sh, from column j + dj / sw. */
static SanpStatus conv_planar(const Geometry* g, const float* xs, const float* ws,
                              const float* bs, const float* sc, const int* open, int k_out,
                              const int* live, int k_in, float* ys) {
  const int taps = g->kh * g->kw, phases = g->sh * g->sw;
  const int per_row = (g->out_w + 7) / 8;  /* vectors per output row */
  const int ph = g->out_h + (g->kh - 1) / g->sh, rw = per_row * 8 + (g->kw - 1) / g->sw;
  const size_t plane = (size_t)ph * rw, channel_stride = plane * phases;
  const int vectors = g->out_h * per_row;
  float* planes = calloc(channel_stride * (k_in > 0 ? (size_t)k_in : 1), sizeof(float));
  int* tap_offset = malloc(sizeof(int) * (size_t)taps);
  if (planes == NULL || tap_offset == NULL) {
    free(planes); free(tap_offset);
    return SANP_ERROR_MEMORY;
  }
  for (int a = 0; a < g->sh; ++a)
    for (int b = 0; b < g->sw; ++b) {
      /* plane columns j0 <= j < j1 hold input columns 0 <= iw < w */
      const int j0 = (g->pl - b + g->sw - 1) / g->sw;
      int j1 = (g->w - 1 + g->pl - b) / g->sw + 1;
      if (j1 > rw) j1 = rw;
      for (int i = 0; i < ph; ++i) {
        const int ih = i * g->sh + a - g->pt;
        if (ih < 0 || ih >= g->h || j1 <= j0) continue;
        const float* row = xs + ((size_t)ih * g->w + (size_t)(j0 * g->sw + b - g->pl)) * g->c_in;
        const size_t step = (size_t)g->sw * g->c_in;
        float* dst = planes + (size_t)(a * g->sw + b) * plane + (size_t)i * rw + j0;
        for (int r = 0; r < k_in; ++r, dst += channel_stride) {  /* contiguous writes */
          const float* src = row + live[r];
          for (int j = 0; j < j1 - j0; ++j) dst[j] = src[(size_t)j * step];
        }
      }
    }
  for (int di = 0; di < g->kh; ++di)
    for (int dj = 0; dj < g->kw; ++dj)
      tap_offset[di * g->kw + dj] = (int)((size_t)((di % g->sh) * g->sw + dj % g->sw) * plane +
                                          (size_t)(di / g->sh) * rw + dj / g->sw);
  const size_t filter_row = (size_t)taps * g->c_in;
  for (int c0 = 0; c0 < k_out; c0 += 2) {
    const int nch = k_out - c0 >= 2 ? 2 : 1;
    const float* w[2] = {ws + (size_t)open[c0] * filter_row,
                         ws + (size_t)open[c0 + nch - 1] * filter_row};
    for (int v0 = 0; v0 < vectors; v0 += VECTORS) {
      int offset[VECTORS];
      for (int q = 0; q < VECTORS; ++q) {  /* tail vectors repeat a valid one */
        const int v = v0 + q < vectors ? v0 + q : v0;
        offset[q] = v / per_row * rw + v % per_row * 8;
      }
      v8f acc[2][VECTORS];
      if (nch == 2)
        planar_kernel(planes, channel_stride, tap_offset, taps, g->c_in, w, live, k_in, offset,
                      2, acc);
      else
        planar_kernel(planes, channel_stride, tap_offset, taps, g->c_in, w, live, k_in, offset,
                      1, acc);
      for (int m = 0; m < nch; ++m) {
        const int c = open[c0 + m];
        for (int q = 0; q < VECTORS && v0 + q < vectors; ++q) {
          const int v = v0 + q, i = v / per_row, j0 = v % per_row * 8;
          const v8f y = activate8((acc[m][q] + bs[c]) * sc[c], g->act);
          float* dst = ys + ((size_t)i * g->out_w + j0) * g->c_out + c;
          for (int l = 0; l < 8 && j0 + l < g->out_w; ++l) dst[(size_t)l * g->c_out] = y[l];
        }
      }
    }
  }
  free(planes); free(tap_offset);
  return SANP_OK;
}

/* s[i] = the sum of a[i]'s lanes, for 8 vectors: three rounds of pairwise shuffles. */
static inline v8f sum_lanes8(const v8f a[8]) {
  v8f b[4], c[2];
  for (int i = 0; i < 4; ++i)  /* b[i]: lanes 0+1, 2+3, ... of a[2i] and a[2i+1], interleaved */
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  for (int i = 0; i < 2; ++i)  /* c[i]: halves of a[4i..4i+3] */
    c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return __builtin_shufflevector(c[0], c[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(c[0], c[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* acc = lane-wise partial sums over kernel rows i of x[q][i][0:span] * w[m][i][0:span],
 * for `filters` (1 or 2) filters w[m] (row i at w[m] + i * span) and 8 / filters pixels
 * whose windows start at a[q] of a packed (hp, wp, kp) map, a kernel row being `span`
 * = kw * kp consecutive floats of both: acc[q] for one filter, acc[4 m + q] for two. */
static inline __attribute__((always_inline)) void dot_kernel(
    const float* const a[8], int kh, size_t row_stride, int span, const float* const w[2],
    int filters, v8f acc[8]) {
  v8f c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0}, c6 = {0}, c7 = {0};
  for (int i = 0; i < kh; ++i) {
    const size_t o = (size_t)i * row_stride;
    const float *a0 = a[0] + o, *a1 = a[1] + o, *a2 = a[2] + o, *a3 = a[3] + o;
    const float *a4 = a[4] + o, *a5 = a[5] + o, *a6 = a[6] + o, *a7 = a[7] + o;
    const float* w0 = w[0] + (size_t)i * span;
    const float* w1 = w[1] + (size_t)i * span;
    for (int v = 0; v < span; v += 8) {
      const v8f f0 = *(const v8f_unaligned*)(w0 + v);
      const v8f x0 = *(const v8f*)(a0 + v), x1 = *(const v8f*)(a1 + v);
      const v8f x2 = *(const v8f*)(a2 + v), x3 = *(const v8f*)(a3 + v);
      c0 += x0 * f0; c1 += x1 * f0; c2 += x2 * f0; c3 += x3 * f0;
      if (filters == 1) {
        c4 += *(const v8f*)(a4 + v) * f0; c5 += *(const v8f*)(a5 + v) * f0;
        c6 += *(const v8f*)(a6 + v) * f0; c7 += *(const v8f*)(a7 + v) * f0;
      } else {
        const v8f f1 = *(const v8f_unaligned*)(w1 + v);
        c4 += x0 * f1; c5 += x1 * f1; c6 += x2 * f1; c7 += x3 * f1;
      }
    }
  }
  acc[0] = c0; acc[1] = c1; acc[2] = c2; acc[3] = c3;
  acc[4] = c4; acc[5] = c5; acc[6] = c6; acc[7] = c7;
}

/* Few open channels, many live inputs: vectors run along the input channels, read
 * from a zero-padded (hp, wp, kp) copy of the live inputs (kp: k_in rounded up to 8;
 * rows copied whole when every channel is live) against the filters in place (or a
 * packed copy of the open ones when some inputs are dead); each sum's lanes are added
 * up at the end, 8 at a time. */
static SanpStatus conv_channel_dot(const Geometry* g, const float* xs, const float* ws,
                                   const float* bs, const float* sc, const int* open,
                                   int k_out, const int* live, int k_in, float* ys) {
  const int pixels = g->out_h * g->out_w, taps = g->kh * g->kw, kp = (k_in + 7) / 8 * 8;
  const int hp = (g->out_h - 1) * g->sh + g->kh, wp = (g->out_w - 1) * g->sw + g->kw;
  const int in_place = all_inputs_live(g, k_in, kp);  /* filters read as they are */
  const size_t map_bytes = sizeof(float) * (size_t)hp * wp * kp;
  const size_t w_floats = in_place ? 0 : (size_t)k_out * taps * kp;
  float* packed_x = aligned_alloc(32, (map_bytes + 31) / 32 * 32);
  float* packed_w = malloc(sizeof(float) * (w_floats > 0 ? w_floats : 1));
  int* pixel_offset = malloc(sizeof(int) * (size_t)pixels);
  if (packed_x == NULL || packed_w == NULL || pixel_offset == NULL) {
    free(packed_x); free(packed_w); free(pixel_offset);
    return SANP_ERROR_MEMORY;
  }
  pack_map(g, xs, live, k_in, kp, hp, wp, packed_x);
  for (int m = 0; m < k_out && !in_place; ++m) {  /* (k_out, taps, kp) */
    const float* src = ws + (size_t)open[m] * taps * g->c_in;
    float* dst = packed_w + (size_t)m * taps * kp;
    for (int t = 0; t < taps; ++t) {
      int r = 0;
      for (; r < k_in; ++r) dst[(size_t)t * kp + r] = src[(size_t)t * g->c_in + live[r]];
      for (; r < kp; ++r) dst[(size_t)t * kp + r] = 0.0f;
    }
  }
  for (int i = 0; i < g->out_h; ++i)
    for (int j = 0; j < g->out_w; ++j)
      pixel_offset[i * g->out_w + j] = (i * g->sh * wp + j * g->sw) * kp;
  const size_t row_stride = (size_t)wp * kp;
  const int span = g->kw * kp;  /* a kernel row: kw taps of kp channels, in both */
  for (int c0 = 0; c0 < k_out; c0 += 2) {
    const int filters = k_out - c0 >= 2 ? 2 : 1, tile = 8 / filters;
    const float* w[2];
    for (int m = 0; m < 2; ++m) {
      const int n = c0 + (m < filters ? m : 0);
      w[m] = in_place ? ws + (size_t)open[n] * taps * g->c_in : packed_w + (size_t)n * taps * kp;
    }
    for (int p0 = 0; p0 < pixels; p0 += tile) {
      const float* a[8];
      for (int q = 0; q < 8; ++q) {  /* tail pixels repeat a valid one */
        const int p = p0 + q % tile < pixels ? p0 + q % tile : p0;
        a[q] = packed_x + pixel_offset[p];
      }
      v8f acc[8];
      if (filters == 1)
        dot_kernel(a, g->kh, row_stride, span, w, 1, acc);
      else
        dot_kernel(a, g->kh, row_stride, span, w, 2, acc);
      const v8f sums = sum_lanes8(acc);
      for (int m = 0; m < filters; ++m) {
        const int c = open[c0 + m];
        const v8f y = activate8((sums + bs[c]) * sc[c], g->act);
        for (int q = 0; q < tile && p0 + q < pixels; ++q)
          ys[(size_t)(p0 + q) * g->c_out + c] = y[m * tile + q];
      }
    }
  }
  free(packed_x); free(packed_w); free(pixel_offset);
  return SANP_OK;
}

typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint32_t v8u_unaligned __attribute__((vector_size(32), aligned(4)));

/* live[r] = whether channel r of a (pixels, c) map holds a non-zero value (-0.0 is
 * zero): the OR of its values' bits without the sign, 64 channels at a time in 8
 * vector registers, stopping once every channel of the block has shown one. */
static void live_channels(const float* xs, size_t pixels, int c, int* live) {
  const uint32_t* bits = (const uint32_t*)xs;
  const v8u magnitude = (v8u){0} + 0x7fffffffu;
  int r0 = 0;
  for (; r0 + 8 <= c; r0 += 64) {
    const int n = (c - r0) / 8 < 8 ? (c - r0) / 8 : 8;  /* vectors in this block */
    const v8u zero = {0}, unused = zero + 1u;  /* registers past n never read as dead */
    v8u a0 = zero, a1 = n > 1 ? zero : unused, a2 = n > 2 ? zero : unused;
    v8u a3 = n > 3 ? zero : unused, a4 = n > 4 ? zero : unused, a5 = n > 5 ? zero : unused;
    v8u a6 = n > 6 ? zero : unused, a7 = n > 7 ? zero : unused;
    const uint32_t* px = bits + r0;
    for (size_t p = 0; p < pixels; ++p, px += c) {
      a0 |= *(const v8u_unaligned*)px & magnitude;
      if (n > 1) a1 |= *(const v8u_unaligned*)(px + 8) & magnitude;
      if (n > 2) a2 |= *(const v8u_unaligned*)(px + 16) & magnitude;
      if (n > 3) a3 |= *(const v8u_unaligned*)(px + 24) & magnitude;
      if (n > 4) a4 |= *(const v8u_unaligned*)(px + 32) & magnitude;
      if (n > 5) a5 |= *(const v8u_unaligned*)(px + 40) & magnitude;
      if (n > 6) a6 |= *(const v8u_unaligned*)(px + 48) & magnitude;
      if (n > 7) a7 |= *(const v8u_unaligned*)(px + 56) & magnitude;
      if ((p & 15) == 15) {  /* every channel live: the rest of the map cannot change it */
        const v8u none = (v8u)(a0 == zero) | (v8u)(a1 == zero) | (v8u)(a2 == zero) |
                         (v8u)(a3 == zero) | (v8u)(a4 == zero) | (v8u)(a5 == zero) |
                         (v8u)(a6 == zero) | (v8u)(a7 == zero);
        int any = 0;
        for (int l = 0; l < 8; ++l) any |= none[l] != 0;
        if (!any) break;
      }
    }
    const v8u a[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (int v = 0; v < n; ++v)
      for (int l = 0; l < 8; ++l) live[r0 + 8 * v + l] = a[v][l] != 0;
    if (n < 8) { r0 += n * 8; break; }
  }
  for (int r = r0; r < c; ++r) {
    uint32_t acc = 0;
    for (size_t p = 0; p < pixels && acc == 0; ++p) acc |= bits[p * c + r] & 0x7fffffffu;
    live[r] = acc != 0;
  }
}

/* Checks every tensor but the gate's: x, filter, bias, params and the output. */
static SanpStatus check_conv(const SanpTensor* x, const SanpTensor* filter,
                             const SanpTensor* bias, const SanpTensor* params,
                             const SanpTensor* out, Geometry* g) {
  SanpStatus s = geometry(x, filter, params, SANP_FLOAT32, 1, g);
  if (s != SANP_OK) return s;
  if ((s = check(bias, SANP_FLOAT32, 1)) != SANP_OK) return s;
  if ((s = check(out, SANP_FLOAT32, 4)) != SANP_OK) return s;
  if (bias->dims[0] != g->c_out) return SANP_ERROR_SHAPE;
  if (out->dims[0] != 1 || out->dims[1] != g->out_h || out->dims[2] != g->out_w ||
      out->dims[3] != g->c_out)
    return SANP_ERROR_SHAPE;
  return SANP_OK;
}

static SanpStatus gated_conv(const Geometry* gp, const float* xs, const float* sc,
                             const float* ws, const float* bs, const int* live_flags,
                             const float* rs, float* ys);

SanpStatus sanp_gated_conv2d(const SanpTensor* x, const SanpTensor* scale,
                             const SanpTensor* filter, const SanpTensor* bias,
                             const SanpTensor* params, SanpTensor* out) {
  Geometry g;
  SanpStatus s = check_conv(x, filter, bias, params, out, &g);
  if (s != SANP_OK) return s;
  if ((s = check(scale, SANP_FLOAT32, 4)) != SANP_OK) return s;
  if (scale->dims[0] * scale->dims[1] * scale->dims[2] != 1 || scale->dims[3] != g.c_out)
    return SANP_ERROR_SHAPE;
  return gated_conv(&g, (const float*)x->data, (const float*)scale->data,
                    (const float*)filter->data, (const float*)bias->data, NULL, NULL,
                    (float*)out->data);
}

/* s[r] = the sum over pixels of channel r of a (pixels, c) map; with `live` not NULL,
 * also live[r] = whether channel r holds a non-zero value (as live_channels) from the
 * same pass: the OR of the values' bits, the sign dropped at the end. */
static void channel_sums(const float* xs, size_t pixels, int c, float* s, int* live) {
  int period = 1;  /* vectors after which the channels of a vector's lanes repeat */
  while (period <= 8 && period * 8 % c != 0) ++period;
  if (period <= 8) {
    /* The map as one stream of vectors: lane l of vector i holds channel (8 i + l) % c,
     * which depends on i only modulo `period`. Sum k < chains adds the vectors
     * i = k (mod chains), chains a multiple of the period (independent add chains). */
    const int chains = 8 % period == 0 ? 8 : period;
    const size_t floats = pixels * (size_t)c, vectors = floats / 8;
    v8f a[8] = {{0}};
    v8u o[8] = {{0}};
    size_t i = 0;
    if (chains == 8)  /* the common case, unrolled: sums and ORs stay in registers */
      for (; i + 8 <= vectors; i += 8)
        for (int k = 0; k < 8; ++k) {
          const v8f v = *(const v8f_unaligned*)(xs + (i + k) * 8);
          a[k] += v;
          o[k] |= (v8u)v;
        }
    for (; i + (size_t)chains <= vectors; i += (size_t)chains)
      for (int k = 0; k < chains; ++k) {
        const v8f v = *(const v8f_unaligned*)(xs + (i + k) * 8);
        a[k] += v;
        o[k] |= (v8u)v;
      }
    for (int k = 0; i < vectors; ++i, ++k) {
      a[k] += *(const v8f_unaligned*)(xs + i * 8);
      o[k] |= *(const v8u_unaligned*)(xs + i * 8);
    }
    uint32_t bits[SANP_MAX_STREAM_CHANNELS];
    for (int r = 0; r < c; ++r) { s[r] = 0.0f; bits[r] = 0; }
    for (int k = 0; k < chains; ++k)
      for (int l = 0; l < 8; ++l) {
        const int r = (8 * k + l) % c;
        s[r] += a[k][l];
        bits[r] |= o[k][l];
      }
    const uint32_t* tail = (const uint32_t*)xs;
    for (size_t f = vectors * 8; f < floats; ++f) {  /* the last floats, not a whole vector */
      s[f % (size_t)c] += xs[f];
      bits[f % (size_t)c] |= tail[f];
    }
    for (int r = 0; live != NULL && r < c; ++r) live[r] = (bits[r] & 0x7fffffffu) != 0;
    return;
  }
  if (live != NULL) live_channels(xs, pixels, c, live);  /* the stream above is the hot path */
  const int nb = c / 8;  /* whole vectors per pixel */
  int r0 = 0;
  if (nb >= 8) {  /* wide maps: a row of sums, each updated once per pixel */
    memset(s, 0, sizeof(float) * (size_t)nb * 8);
    for (size_t p = 0; p < pixels; ++p)
      for (int b = 0; b < nb; ++b)
        *(v8f_unaligned*)(s + b * 8) += *(const v8f_unaligned*)(xs + p * c + b * 8);
    r0 = nb * 8;
  }
  for (int r = r0; r < c; ++r) {
    float acc = 0.0f;
    for (size_t p = 0; p < pixels; ++p) acc += xs[p * c + r];
    s[r] = acc;
  }
}

/* The layer's gate from x: its scale and decisions (unless NULL), each (c_out); see the
 * header. With
 * `live` not NULL, also which input channels are live (c_in flags), from the same pass. */
static SanpStatus se_gate(const Geometry* g, const float* xs, const float* gate, int hidden,
                          float* scale, float* decisions, int* live) {
  const int c_in = g->c_in, c_out = g->c_out, row = c_in + 1 + c_out;
  const size_t pixels = (size_t)g->h * g->w;
  float* s = malloc(sizeof(float) * ((size_t)c_in + hidden));
  if (s == NULL) return SANP_ERROR_MEMORY;
  float* h = s + c_in;
  channel_sums(xs, pixels, c_in, s, live);
  int r;
  for (r = 0; r < c_in; ++r) s[r] /= (float)pixels;
  for (int j = 0; j < hidden; ++j) {  /* h = relu(s W1 + b1): 2 vector sums, then lanes */
    const float* w = gate + (size_t)j * row;
    v8f a0 = {0}, a1 = {0};
    for (r = 0; r + 16 <= c_in; r += 16) {
      a0 += *(const v8f_unaligned*)(s + r) * *(const v8f_unaligned*)(w + r);
      a1 += *(const v8f_unaligned*)(s + r + 8) * *(const v8f_unaligned*)(w + r + 8);
    }
    a0 += a1;
    float acc = w[c_in];
    for (int l = 0; l < 8; ++l) acc += a0[l];
    for (; r < c_in; ++r) acc += s[r] * w[r];
    h[j] = acc > 0.0f ? acc : 0.0f;
  }
  /* g = h W2 + b2, kept in scale for now: rows of W2 added in turn (contiguous) */
  memcpy(scale, gate + (size_t)hidden * row + c_in + 1, sizeof(float) * (size_t)c_out);
  for (int j = 0; j < hidden; ++j) {
    const float* w = gate + (size_t)j * row + c_in + 1;
    const float hj = h[j];
    for (int c = 0; c < c_out; ++c) scale[c] += hj * w[c];
  }
  int best = 0;
  for (int c = 1; c < c_out; ++c)
    if (scale[c] > scale[best]) best = c;  /* the first highest score, as argmax */
  for (int c = 0; c < c_out; ++c) {
    const float score = scale[c];
    const int open = score > 0.0f || c == best;
    if (decisions != NULL) decisions[c] = open ? 1.0f : 0.0f;
    scale[c] = open ? 1.0f / (1.0f + expf(-score)) : 0.0f;
  }
  free(s);
  return SANP_OK;
}

/* y = act(y + r) over n floats (the residual ADD after a layer, fused). */
static void add_residual(float* ys, const float* rs, size_t n, int act) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    *(v8f_unaligned*)(ys + i) =
        activate8(*(v8f_unaligned*)(ys + i) + *(const v8f_unaligned*)(rs + i), act);
  for (; i < n; ++i) ys[i] = activate(ys[i] + rs[i], act);
}

SanpStatus sanp_se_gated_conv2d(const SanpTensor* x, const SanpTensor* gate,
                                const SanpTensor* filter, const SanpTensor* bias,
                                const SanpTensor* params, const SanpTensor* residual,
                                SanpTensor* out, SanpTensor* decisions) {
  Geometry g;
  SanpStatus s = check_conv(x, filter, bias, params, out, &g);
  if (s != SANP_OK) return s;
  if ((s = check(gate, SANP_FLOAT32, 2)) != SANP_OK) return s;
  if (decisions != NULL && (s = check(decisions, SANP_FLOAT32, 2)) != SANP_OK) return s;
  if (gate->dims[0] < 2 || gate->dims[1] != g.c_in + 1 + g.c_out ||
      (decisions != NULL && (decisions->dims[0] != 1 || decisions->dims[1] != g.c_out)))
    return SANP_ERROR_SHAPE;
  if (residual != NULL) {
    if ((s = check(residual, SANP_FLOAT32, 4)) != SANP_OK) return s;
    for (int i = 0; i < 4; ++i)
      if (residual->dims[i] != out->dims[i]) return SANP_ERROR_SHAPE;
  }
  float* scale = malloc(sizeof(float) * (size_t)g.c_out + sizeof(int) * (size_t)g.c_in);
  if (scale == NULL) return SANP_ERROR_MEMORY;
  int* live = (int*)(scale + g.c_out);
  s = se_gate(&g, (const float*)x->data, (const float*)gate->data, gate->dims[0] - 1, scale,
              decisions != NULL ? (float*)decisions->data : NULL, live);
  if (s == SANP_OK)
    s = gated_conv(&g, (const float*)x->data, scale, (const float*)filter->data,
                   (const float*)bias->data, live,
                   residual != NULL ? (const float*)residual->data : NULL, (float*)out->data);
  free(scale);
  return s;
}

SanpStatus sanp_se_gate(const SanpTensor* x, const SanpTensor* gate, SanpTensor* scale,
                        SanpTensor* decisions) {
  SanpStatus s;
  if ((s = check(x, SANP_FLOAT32, 4)) != SANP_OK) return s;
  if ((s = check(gate, SANP_FLOAT32, 2)) != SANP_OK) return s;
  if ((s = check(scale, SANP_FLOAT32, 3)) != SANP_OK) return s;
  if (decisions != NULL && (s = check(decisions, SANP_FLOAT32, 2)) != SANP_OK) return s;
  Geometry g;
  memset(&g, 0, sizeof(g));
  g.h = x->dims[1]; g.w = x->dims[2]; g.c_in = x->dims[3];
  g.c_out = gate->dims[1] - g.c_in - 1;
  if (x->dims[0] != 1 || gate->dims[0] < 2 || g.c_out < 1 || scale->dims[0] != 1 ||
      scale->dims[1] != 1 || scale->dims[2] != g.c_out ||
      (decisions != NULL && (decisions->dims[0] != 1 || decisions->dims[1] != g.c_out)))
    return SANP_ERROR_SHAPE;
  return se_gate(&g, (const float*)x->data, (const float*)gate->data, gate->dims[0] - 1,
                 (float*)scale->data, decisions != NULL ? (float*)decisions->data : NULL, NULL);
}

/* The unfolded input A of the last layout (blocks of 16 pixels, each (taps * c_in, 16))
 * when every input channel is live and c_in is a multiple of 8: each tap's 8 pixels x
 * 8 channels are loaded as 8 pixel vectors and transposed in registers, and A is
 * written in whole vectors, zeros outside the input and past the last pixel (no
 * memset, no scattered stores: those had cost more than the FMAs on 8x8 maps). */
static void unfold_transposed(const Geometry* g, const float* xs, int pixels, size_t blocks,
                              size_t block, float* a) {
  const v8f zero = {0};
  for (size_t b = 0; b < blocks; ++b)
    for (int half = 0; half < 2; ++half) {
      const int p0 = (int)b * PIXELS + half * 8;
      for (int i = 0; i < g->kh; ++i)
        for (int j = 0; j < g->kw; ++j) {
          const float* src[8];
          for (int q = 0; q < 8; ++q) {
            const int p = p0 + q;
            const int ih = p / g->out_w * g->sh + i - g->pt, iw = p % g->out_w * g->sw + j - g->pl;
            src[q] = p < pixels && ih >= 0 && ih < g->h && iw >= 0 && iw < g->w
                         ? xs + ((size_t)ih * g->w + iw) * g->c_in
                         : NULL;
          }
          float* dst = a + b * block + (size_t)(i * g->kw + j) * g->c_in * PIXELS + half * 8;
          for (int r0 = 0; r0 < g->c_in; r0 += 8, dst += 8 * PIXELS) {
            v8f in[8], out[8];
            for (int q = 0; q < 8; ++q)
              in[q] = src[q] != NULL ? *(const v8f_unaligned*)(src[q] + r0) : zero;
            transpose8(in, out);
            for (int r = 0; r < 8; ++r) *(v8f*)(dst + r * PIXELS) = out[r];
          }
        }
    }
}

static SanpStatus gated_layouts(const Geometry* gp, const float* xs, const float* sc,
                                const float* ws, const float* bs, const int* live_flags,
                                int act, const float** residual, float* ys);

/* The convolution over the open channels (sc != 0) and live inputs, checked geometry;
 * live_flags: which inputs are live (c_in flags) when the caller knows, else NULL; rs:
 * NULL, or a residual (the output's shape) added before the activation: in the stores
 * of the pixel-row layout when every channel is open, else in a pass after. */
static SanpStatus gated_conv(const Geometry* gp, const float* xs, const float* sc,
                             const float* ws, const float* bs, const int* live_flags,
                             const float* rs, float* ys) {
  Geometry g = *gp;
  if (rs != NULL) g.act = 0;  /* the activation comes after the addition */
  const float* pending = rs;
  SanpStatus s = gated_layouts(&g, xs, sc, ws, bs, live_flags, gp->act, &pending, ys);
  if (s == SANP_OK && pending != NULL)
    add_residual(ys, pending, (size_t)g.out_h * g.out_w * g.c_out, gp->act);
  return s;
}

/* The many-filters layout's products for pixel blocks [begin, end) of A. */
typedef struct {
  const Geometry* g;
  const float* a;
  const int* index;
  int depth;
  size_t block, blocks;
  const int* open;
  int k_out;
  const float* ws;
  size_t filter_row;
  const float *bs, *sc;
  float* ys;
  int chunks;
} BlockWork;

static void block_task(void* context, int chunk) {
  const BlockWork* w = context;
  const Geometry* g = w->g;
  const int pixels = g->out_h * g->out_w;
  const size_t begin = w->blocks * chunk / w->chunks, end = w->blocks * (chunk + 1) / w->chunks;
  for (size_t b = begin; b < end; ++b) {
    const size_t p0 = b * PIXELS;
    const int count = pixels - (int)p0 < PIXELS ? pixels - (int)p0 : PIXELS;
    for (int c0 = 0; c0 < w->k_out; c0 += CHANNELS) {
      const float* f[CHANNELS];
      for (int m = 0; m < CHANNELS; ++m)  /* tail rows repeat a valid filter */
        f[m] = w->ws + (size_t)w->open[c0 + m < w->k_out ? c0 + m : c0] * w->filter_row;
      v8f acc[CHANNELS][2];
      filter_rows_kernel(f, w->index, w->depth, w->a + b * w->block, count > 8, acc);
      for (int m = 0; m < CHANNELS && c0 + m < w->k_out; ++m) {
        const int c = w->open[c0 + m];
        float* dst = w->ys + p0 * (size_t)g->c_out + c;
        for (int l = 0; l < count; ++l) {
          const float v = (l < 8 ? acc[m][0][l] : acc[m][1][l - 8]) + w->bs[c];
          dst[(size_t)l * g->c_out] = activate(v * w->sc[c], g->act);
        }
      }
    }
  }
}

/* Layouts 2-4 over contiguous chunks of the open channels, one per thread: each chunk is
 * the same layout's call on its part of the open list (each packs its own input copy),
 * chunk boundaries on multiples of `step` (the layout's channel block). */
typedef enum { LAYOUT_DOT, LAYOUT_PLANAR, LAYOUT_PIXEL_ROWS } Layout;

typedef struct {
  Layout layout;
  const Geometry* g;
  const float *xs, *ws, *bs, *sc;
  const int* open;
  int k_out, step;
  const int* live;
  int k_in;
  float* ys;
  int chunks;
  SanpStatus status[SANP_MAX_THREADS];
} ChannelWork;

static void channel_task(void* context, int chunk) {
  ChannelWork* w = context;
  const int steps = (w->k_out + w->step - 1) / w->step;
  const int begin = steps * chunk / w->chunks * w->step;
  int end = steps * (chunk + 1) / w->chunks * w->step;
  if (end > w->k_out) end = w->k_out;
  SanpStatus s = SANP_OK;
  if (end > begin) {
    const int* open = w->open + begin;
    const int k = end - begin;
    if (w->layout == LAYOUT_DOT)
      s = conv_channel_dot(w->g, w->xs, w->ws, w->bs, w->sc, open, k, w->live, w->k_in, w->ys);
    else if (w->layout == LAYOUT_PLANAR)
      s = conv_planar(w->g, w->xs, w->ws, w->bs, w->sc, open, k, w->live, w->k_in, w->ys);
    else
      s = conv_pixel_rows(w->g, w->xs, w->ws, w->bs, w->sc, open, k, w->live, w->k_in, NULL,
                          w->ys);
  }
  w->status[chunk] = s;
}

/* Runs a layout over chunks of the open channels on the pool; the first failure. */
static SanpStatus by_channel_chunks(Layout layout, int step, int threads, const Geometry* g,
                                    const float* xs, const float* ws, const float* bs,
                                    const float* sc, const int* open, int k_out,
                                    const int* live, int k_in, float* ys) {
  ChannelWork work = {layout, g, xs, ws, bs, sc, open, k_out, step, live, k_in, ys, 1, {0}};
  const int steps = (k_out + step - 1) / step;
  work.chunks = steps < threads ? steps : threads;
  sanp_parallel(work.chunks, channel_task, &work);
  for (int i = 0; i < work.chunks; ++i)
    if (work.status[i] != SANP_OK) return work.status[i];
  return SANP_OK;
}

/* The layouts of gated_conv; *residual (with activation `act` after it) is added by
 * the layout and set to NULL where it can be, in its stores. */
static SanpStatus gated_layouts(const Geometry* gp, const float* xs, const float* sc,
                                const float* ws, const float* bs, const int* live_flags,
                                int act, const float** residual, float* ys) {
  const Geometry g = *gp;
  SanpStatus s;
  const int pixels = g.out_h * g.out_w, taps = g.kh * g.kw;
  const size_t row = (size_t)(pixels + PIXELS - 1) / PIXELS * PIXELS;  /* A's row length */
  const size_t filter_row = (size_t)taps * g.c_in;

  int* open = malloc(sizeof(int) * ((size_t)g.c_out + g.c_in + (size_t)taps * (g.c_in + 8)));
  if (open == NULL) return SANP_ERROR_MEMORY;
  int* live = open + g.c_out;
  int* index = live + g.c_in;  /* filter-row offset of each row of A */
  int k_out = 0, k_in = 0;
  for (int c = 0; c < g.c_out; ++c)
    if (sc[c] != 0.0f) open[k_out++] = c;
  if (live_flags != NULL)
    memcpy(live, live_flags, sizeof(int) * (size_t)g.c_in);
  else
    live_channels(xs, (size_t)g.h * g.w, g.c_in, live);
  for (int r = 0; r < g.c_in; ++r)
    if (live[r]) live[k_in++] = r;
  if (k_out < g.c_out)  /* every layout writes each open channel at every pixel */
    memset(ys, 0, sizeof(float) * (size_t)pixels * g.c_out);
  if (k_out == 0) { free(open); return SANP_OK; }
  const int threads = sanp_num_threads();
  const int parallel = threads > 1 &&
      (long)pixels * k_out * k_in * taps >= sanp_parallel_min_macs();
  if (k_out <= DOT_MAX_OPEN && k_in >= 8 && (k_in + 7) / 8 * 8 * 4 <= 5 * k_in) {
    s = parallel && k_out > 1
            ? by_channel_chunks(LAYOUT_DOT, 1, threads, &g, xs, ws, bs, sc, open, k_out, live,
                                k_in, ys)
            : conv_channel_dot(&g, xs, ws, bs, sc, open, k_out, live, k_in, ys);
    free(open);
    return s;
  }
  if (k_out <= PLANAR_MAX_OPEN && g.out_w >= 8) {  /* vectors over pixels, not channels */
    s = parallel && k_out > 2
            ? by_channel_chunks(LAYOUT_PLANAR, 2, threads, &g, xs, ws, bs, sc, open, k_out,
                                live, k_in, ys)
            : conv_planar(&g, xs, ws, bs, sc, open, k_out, live, k_in, ys);
    free(open);
    return s;
  }
  /* early layers: packing the few filters is cheap; with few live inputs the output's
   * whole-vector stores outweigh packing the filters */
  if (pixels >= 4 * k_out || (pixels >= k_out && k_in <= 16)) {
    if (parallel && k_out > PANEL) {  /* the residual, if any, in gated_conv's pass */
      s = by_channel_chunks(LAYOUT_PIXEL_ROWS, PANEL, threads, &g, xs, ws, bs, sc, open,
                            k_out, live, k_in, ys);
    } else if (*residual != NULL && k_out == g.c_out && k_out % PANEL == 0) {  /* stores all whole */
      Geometry with_act = g;
      with_act.act = act;
      s = conv_pixel_rows(&with_act, xs, ws, bs, sc, open, k_out, live, k_in, *residual, ys);
      *residual = NULL;
    } else {
      s = conv_pixel_rows(&g, xs, ws, bs, sc, open, k_out, live, k_in, NULL, ys);
    }
    free(open);
    return s;
  }

  /* A in blocks of 16 pixels, each (taps * kp, 16) contiguous: element (k, p) at
   * a[(p / 16) * depth * 16 + k * 16 + p % 16], for tap t = k / kp, input live[k % kp]
   * (0 for k % kp >= k_in). With >= 8 live inputs (k_in rounded up to 8 wastes <= 25 %)
   * A is unfolded from vectors of 8 channels, transposed in registers: from x itself
   * when every channel is live, else from a compact (H, W, kp) copy of the live ones. */
  const int transposed = k_in >= 8 && (k_in + 7) / 8 * 8 * 4 <= 5 * k_in;
  const int kp = transposed ? (k_in + 7) / 8 * 8 : k_in;
  const int depth = taps * kp;
  const size_t blocks = row / PIXELS, block = (size_t)depth * PIXELS;
  const int in_place = k_in == g.c_in && kp == k_in;
  float* a = aligned_alloc(64, sizeof(float) * (block > 0 ? block * blocks : PIXELS));
  float* compact = transposed && !in_place ? malloc(sizeof(float) * (size_t)g.h * g.w * kp)
                                           : NULL;
  if (a == NULL || (transposed && !in_place && compact == NULL)) {
    free(open); free(a); free(compact);
    return SANP_ERROR_MEMORY;
  }
  for (int t = 0; t < taps; ++t)
    for (int r = 0; r < kp; ++r) index[t * kp + r] = t * g.c_in + live[r < k_in ? r : 0];
  if (transposed) {
    Geometry gc = g;  /* the compact map: kp channels */
    for (size_t q = 0; compact != NULL && q < (size_t)g.h * g.w; ++q) {
      const float* src = xs + q * g.c_in;
      float* dst = compact + q * kp;
      int r = 0;
      for (; r < k_in; ++r) dst[r] = src[live[r]];
      for (; r < kp; ++r) dst[r] = 0.0f;
    }
    gc.c_in = kp;
    unfold_transposed(&gc, compact != NULL ? compact : xs, pixels, blocks, block, a);
    free(compact);
  } else {
    memset(a, 0, sizeof(float) * block * blocks);
  }
  for (int p = 0; p < pixels && !transposed; ++p) {
    float* dst = a + (size_t)(p / PIXELS) * block + p % PIXELS;
    for (int i = 0; i < g.kh; ++i) {
      const int ih = p / g.out_w * g.sh + i - g.pt;
      if (ih < 0 || ih >= g.h) continue;
      for (int j = 0; j < g.kw; ++j) {
        const int iw = p % g.out_w * g.sw + j - g.pl;
        if (iw < 0 || iw >= g.w) continue;
        const float* src = xs + ((size_t)ih * g.w + iw) * g.c_in;
        float* d = dst + (size_t)(i * g.kw + j) * k_in * PIXELS;
        for (int r = 0; r < k_in; ++r) d[(size_t)r * PIXELS] = src[live[r]];
      }
    }
  }

  BlockWork work = {&g, a, index, depth, block, blocks, open, k_out, ws, filter_row, bs, sc,
                    ys, 1};
  if (parallel && blocks > 1) {
    work.chunks = blocks < (size_t)threads ? (int)blocks : threads;
    sanp_parallel(work.chunks, block_task, &work);
  } else {
    block_task(&work, 0);
  }
  free(open);
  free(a);
  return SANP_OK;
}

