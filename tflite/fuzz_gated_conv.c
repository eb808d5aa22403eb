/* Fuzz test of sanp_gated_conv2d and sanp_se_gated_conv2d, meant to run under
 * AddressSanitizer (make fuzz).
 *
 * Each iteration draws shapes, strides, padding, activation, gates (all closed, all
 * open, 1 to 4 open, or random) and zeroed input channels (or none, with channel counts
 * often a multiple of 8: inputs read in place), compares the kernel with a direct
 * convolution, then feeds it malformed tensors (wrong rank, dtype, shape, short
 * buffers, bad params) that must be refused with an error status. The SE-gated entry
 * gets random gate weights on the same tensors: its decisions are checked against the
 * gate computed here in double precision, its output against the direct convolution
 * with those decisions, and the gate alone (sanp_se_gate) must give the same
 * decisions; half the cases add a residual before the activation. The int8 entry is
 * checked byte for byte against its formula (int8_case), on its portable and VNNI
 * paths. Buffers are
 * allocated at their exact size, so any read past them is an ASan finding.
 *
 *   fuzz_gated_conv [iterations] [seed]   exit status 0: all passed
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sanp_gated_conv.h"
#include "sanp_test_tensor.h"

static unsigned long long state = 88172645463325252ULL;
static unsigned next(void) {
  state ^= state << 13; state ^= state >> 7; state ^= state << 17;
  return (unsigned)(state >> 11);
}
static int range(int lo, int hi) { return lo + (int)(next() % (unsigned)(hi - lo + 1)); }
static float uniform(void) { return (float)(next() % 20001) / 10000.0f - 1.0f; }

static float reference(const float* x, const float* w, int h, int wd, int c_in, int kh, int kw,
                       int sh, int sw, int pt, int pl, int oh, int ow, int c) {
  double acc = 0.0;
  for (int i = 0; i < kh; ++i)
    for (int j = 0; j < kw; ++j) {
      const int ih = oh * sh + i - pt, iw = ow * sw + j - pl;
      if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
      for (int r = 0; r < c_in; ++r)
        acc += (double)x[((size_t)ih * wd + iw) * c_in + r] *
               w[(((size_t)c * kh + i) * kw + j) * c_in + r];
    }
  return (float)acc;
}

/* Output size and SAME / VALID padding of a convolution, as TFLite computes them. */
static void output_geometry(int h, int wd, int kh, int kw, int sh, int sw, int same,
                            int* oh, int* ow, int* pt, int* pl) {
  *pt = *pl = 0;
  if (same) {
    *oh = (h + sh - 1) / sh; *ow = (wd + sw - 1) / sw;
    const int th = (*oh - 1) * sh + kh - h, tw = (*ow - 1) * sw + kw - wd;
    *pt = (th > 0 ? th : 0) / 2; *pl = (tw > 0 ? tw : 0) / 2;
  } else {
    *oh = (h - kh) / sh + 1; *ow = (wd - kw) / sw + 1;
  }
}

static int failures = 0;
#define EXPECT(cond, ...)                       \
  do {                                          \
    if (!(cond)) {                              \
      fprintf(stderr, "FAIL: " __VA_ARGS__);    \
      fprintf(stderr, "\n");                    \
      ++failures;                               \
    }                                           \
  } while (0)

/* The SE-gated entry on one case's tensors (params already valid). */
static void se_case(int iteration, const SanpTensor* x, const SanpTensor* filter,
                    const SanpTensor* bias, const SanpTensor* params, SanpTensor* out) {
  const int h = x->dims[1], wd = x->dims[2], c_in = x->dims[3], c_out = filter->dims[0];
  const int kh = filter->dims[1], kw = filter->dims[2], oh = out->dims[1], ow = out->dims[2];
  const int32_t* ps = params->data;
  const int hidden = range(1, 6), columns = c_in + 1 + c_out;
  const int gd[2] = {hidden + 1, columns}, dd[2] = {1, c_out};
  SanpTensor gate = sanp_test_tensor(SANP_FLOAT32, 2, gd);
  SanpTensor decisions = sanp_test_tensor(SANP_FLOAT32, 2, dd);
  float* gs = gate.data;
  /* every score negative (only the best opens), every score positive, or random */
  const int pick = range(0, 4), sign = pick == 0 ? -1 : pick == 1 ? 1 : 0;
  for (int i = 0; i < (hidden + 1) * columns; ++i) gs[i] = uniform();
  for (int r = 0; r < c_in + 1; ++r) gs[(size_t)hidden * columns + r] = 0.0f;
  for (int c = 0; c < c_out && sign != 0; ++c) {
    for (int j = 0; j < hidden; ++j) {
      float* w2 = gs + (size_t)j * columns + c_in + 1 + c;
      *w2 = sign * fabsf(*w2);
    }
    gs[(size_t)hidden * columns + c_in + 1 + c] = sign * (1.0f + fabsf(uniform()));
  }
  const float* xs = x->data;
  double s[128], hs[8], g[64];
  for (int r = 0; r < c_in; ++r) {
    s[r] = 0.0;
    for (int p = 0; p < h * wd; ++p) s[r] += xs[(size_t)p * c_in + r];
    s[r] /= h * wd;
  }
  for (int j = 0; j < hidden; ++j) {
    double acc = gs[(size_t)j * columns + c_in];
    for (int r = 0; r < c_in; ++r) acc += s[r] * gs[(size_t)j * columns + r];
    hs[j] = acc > 0 ? acc : 0;
  }
  int best = 0;
  for (int c = 0; c < c_out; ++c) {
    g[c] = gs[(size_t)hidden * columns + c_in + 1 + c];
    for (int j = 0; j < hidden; ++j) g[c] += hs[j] * gs[(size_t)j * columns + c_in + 1 + c];
    if (g[c] > g[best]) best = c;
  }
  /* half the cases add a residual before the activation (a fused ADD) */
  const int od[4] = {1, oh, ow, c_out};
  SanpTensor residual = sanp_test_tensor(SANP_FLOAT32, 4, od);
  const int with_residual = range(0, 1);
  for (int i = 0; i < oh * ow * c_out; ++i) ((float*)residual.data)[i] = uniform();
  const SanpTensor* res = with_residual ? &residual : NULL;
  SanpStatus st = sanp_se_gated_conv2d(x, &gate, filter, bias, params, res, out, &decisions);
  EXPECT(st == SANP_OK, "SE case %d returned %s", iteration, sanp_status_message(st));
  if (st == SANP_OK) {
    const float* ds = decisions.data;
    int open = 0;
    for (int c = 0; c < c_out; ++c) {
      const int want = g[c] > 0 || c == best;
      open += ds[c] != 0.0f;
      EXPECT(ds[c] == (float)want || fabs(g[c]) < 1e-4 || fabs(g[c] - g[best]) < 1e-4,
             "SE case %d channel %d: decision %g, score %g", iteration, c, ds[c], g[c]);
    }
    EXPECT(open >= 1, "SE case %d: no channel open", iteration);
    const float* ys = out->data;
    for (int p = 0; p < oh; ++p)
      for (int q = 0; q < ow; ++q)
        for (int c = 0; c < c_out; ++c) {
          float want = 0.0f;
          if (ds[c] != 0.0f)
            want = (reference(xs, filter->data, h, wd, c_in, kh, kw, ps[0], ps[1], ps[2], ps[3],
                              p, q, c) + ((const float*)bias->data)[c]) *
                   (float)(1.0 / (1.0 + exp(-g[c])));
          const size_t at = ((size_t)p * ow + q) * c_out + c;
          if (with_residual) want += ((const float*)residual.data)[at];
          if (ps[4] >= 1 && want < 0) want = 0;
          if (ps[4] == 2 && want > 6) want = 6;
          const float got = ys[at];
          EXPECT(fabsf(got - want) <= 1e-4f * (1.0f + fabsf(want)),
                 "SE case %d pixel (%d,%d) channel %d: got %g want %g", iteration, p, q, c,
                 got, want);
        }
  }
  /* without decisions (a model that outputs none): the same output */
  SanpTensor again = sanp_test_tensor(SANP_FLOAT32, 4, od);
  EXPECT(sanp_se_gated_conv2d(x, &gate, filter, bias, params, res, &again, NULL) == SANP_OK &&
             memcmp(again.data, out->data, again.bytes) == 0,
         "SE case %d without decisions: another output", iteration);
  free(again.data);
  /* The gate alone (SanpSEGate): the same decisions, and scale = d * sigmoid(g). */
  const int sd[3] = {1, 1, c_out};
  SanpTensor scale = sanp_test_tensor(SANP_FLOAT32, 3, sd);
  SanpTensor alone = sanp_test_tensor(SANP_FLOAT32, 2, dd);
  st = sanp_se_gate(x, &gate, &scale, &alone);
  SanpTensor scale_only = sanp_test_tensor(SANP_FLOAT32, 3, sd);
  EXPECT(sanp_se_gate(x, &gate, &scale_only, NULL) == SANP_OK &&
             memcmp(scale_only.data, scale.data, scale.bytes) == 0,
         "gate case %d without decisions: another scale", iteration);
  free(scale_only.data);
  EXPECT(st == SANP_OK, "gate case %d returned %s", iteration, sanp_status_message(st));
  for (int c = 0; st == SANP_OK && c < c_out; ++c) {
    const float d = ((const float*)decisions.data)[c], got = ((const float*)scale.data)[c];
    const float want = d != 0.0f ? (float)(1.0 / (1.0 + exp(-g[c]))) : 0.0f;
    EXPECT(((const float*)alone.data)[c] == d, "gate case %d channel %d: decisions differ",
           iteration, c);
    EXPECT(fabsf(got - want) <= 1e-5f, "gate case %d channel %d: scale %g want %g", iteration,
           c, got, want);
  }
  SanpTensor bad;
  bad = scale; bad.dims[2] += 1;
  EXPECT(sanp_se_gate(x, &gate, &bad, &alone) != SANP_OK, "gate scale shape");
  bad = gate; bad.dims[1] = c_in + 1;  /* no output channel */
  bad.bytes = gate.bytes;
  EXPECT(sanp_se_gate(x, &bad, &scale, &alone) != SANP_OK, "gate without outputs");
  bad = scale; bad.bytes -= 4;
  EXPECT(sanp_se_gate(x, &gate, &bad, &alone) == SANP_ERROR_SIZE, "short scale");
  free(scale.data); free(alone.data);
  bad = residual; bad.dims[2] += 1;
  EXPECT(sanp_se_gated_conv2d(x, &gate, filter, bias, params, &bad, out, &decisions) != SANP_OK,
         "residual shape");
  bad = residual; bad.bytes -= 4;
  EXPECT(sanp_se_gated_conv2d(x, &gate, filter, bias, params, &bad, out, &decisions) ==
             SANP_ERROR_SIZE, "short residual");
  bad = residual; bad.dtype = SANP_INT32;
  EXPECT(sanp_se_gated_conv2d(x, &gate, filter, bias, params, &bad, out, &decisions) ==
             SANP_ERROR_DTYPE, "residual dtype");
  free(residual.data);
  bad = gate; bad.dims[1] += 1;
  EXPECT(sanp_se_gated_conv2d(x, &bad, filter, bias, params, NULL, out, &decisions) != SANP_OK,
         "gate columns");
  bad = gate; bad.dims[0] = 1;
  EXPECT(sanp_se_gated_conv2d(x, &bad, filter, bias, params, NULL, out, &decisions) != SANP_OK,
         "gate without hidden rows");
  bad = gate; bad.bytes -= 4;
  EXPECT(sanp_se_gated_conv2d(x, &bad, filter, bias, params, NULL, out, &decisions) ==
             SANP_ERROR_SIZE, "short gate");
  bad = gate; bad.rank = 3;
  EXPECT(sanp_se_gated_conv2d(x, &bad, filter, bias, params, NULL, out, &decisions) ==
             SANP_ERROR_RANK, "gate rank");
  bad = decisions; bad.dims[1] += 1;
  EXPECT(sanp_se_gated_conv2d(x, &gate, filter, bias, params, NULL, out, &bad) != SANP_OK,
         "decisions shape");
  bad = decisions; bad.bytes -= 4;
  EXPECT(sanp_se_gated_conv2d(x, &gate, filter, bias, params, NULL, out, &bad) == SANP_ERROR_SIZE,
         "short decisions");
  free(gate.data); free(decisions.data);
}

static void one_case(int iteration) {
  const int kh = range(1, 3) * 2 - 1 > 5 ? 5 : range(1, 3) * 2 - 1;  /* 1, 3, 5 */
  const int kw = kh;
  const int sh = range(1, 2), sw = sh;
  const int same = range(0, 1);
  const int h = range(kh, 20), wd = range(kw, 20);  /* rows of >= 8 outputs: planar path */
  const int c_in = range(0, 2) == 0 ? 8 * range(1, 9) : range(1, 40);  /* whole vectors */
  const int c_out = range(1, 40), act = range(0, 2);
  int oh, ow, pt, pl;
  output_geometry(h, wd, kh, kw, sh, sw, same, &oh, &ow, &pt, &pl);
  const int xd[4] = {1, h, wd, c_in}, sd[4] = {1, 1, 1, c_out}, fd[4] = {c_out, kh, kw, c_in};
  const int bd[1] = {c_out}, pd[3] = {oh, ow, SANP_PARAM_COUNT}, od[4] = {1, oh, ow, c_out};
  SanpTensor x = sanp_test_tensor(SANP_FLOAT32, 4, xd);
  SanpTensor scale = sanp_test_tensor(SANP_FLOAT32, 4, sd);
  SanpTensor filter = sanp_test_tensor(SANP_FLOAT32, 4, fd);
  SanpTensor bias = sanp_test_tensor(SANP_FLOAT32, 1, bd);
  SanpTensor params = sanp_test_tensor(SANP_INT32, 3, pd);
  SanpTensor out = sanp_test_tensor(SANP_FLOAT32, 4, od);
  float* xs = x.data; float* ss = scale.data; float* fs = filter.data; float* bs = bias.data;
  const int gates = range(0, 4);  /* 0: all closed, 1: all open, 2: 1 to 4 open, else random */
  const int few = range(1, 4);
  const int all_live = range(0, 2) == 0;  /* inputs read as they are, where channels allow */
  for (int r = 0; r < c_in; ++r) {
    const int dead = !all_live && range(0, 3) == 0;  /* a zeroed input channel */
    for (int p = 0; p < h * wd; ++p) xs[(size_t)p * c_in + r] = dead ? 0.0f : uniform();
  }
  for (size_t i = 0; i < (size_t)c_out * kh * kw * c_in; ++i) fs[i] = uniform();
  for (int c = 0; c < c_out; ++c) {
    bs[c] = uniform();
    const int open = gates == 1 || (gates == 2 ? c < few : gates >= 3 && range(0, 1));
    ss[c] = open ? 0.5f + 0.5f * uniform() : 0.0f;
  }
  int32_t* ps = params.data;
  memset(ps, 0, params.bytes);
  ps[0] = sh; ps[1] = sw; ps[2] = pt; ps[3] = pl; ps[4] = act;

  int32_t dims[4];
  EXPECT(sanp_gated_conv2d_output_shape(&x, &filter, &params, dims) == SANP_OK &&
         dims[1] == oh && dims[2] == ow && dims[3] == c_out, "output shape, case %d", iteration);
  SanpStatus s = sanp_gated_conv2d(&x, &scale, &filter, &bias, &params, &out);
  EXPECT(s == SANP_OK, "case %d returned %s", iteration, sanp_status_message(s));
  if (s == SANP_OK) {
    const float* ys = out.data;
    for (int p = 0; p < oh; ++p)
      for (int q = 0; q < ow; ++q)
        for (int c = 0; c < c_out; ++c) {
          float want = 0.0f;
          if (ss[c] != 0.0f) {
            want = (reference(xs, fs, h, wd, c_in, kh, kw, sh, sw, pt, pl, p, q, c) + bs[c]) * ss[c];
            if (act >= 1 && want < 0) want = 0;
            if (act == 2 && want > 6) want = 6;
          }
          const float got = ys[((size_t)p * ow + q) * c_out + c];
          EXPECT(fabsf(got - want) <= 1e-4f * (1.0f + fabsf(want)),
                 "case %d pixel (%d,%d) channel %d: got %g want %g", iteration, p, q, c, got, want);
        }
  }

  /* Malformed calls: each must be refused, never read out of bounds. */
  SanpTensor bad;
  bad = x; bad.rank = 3;
  EXPECT(sanp_gated_conv2d(&bad, &scale, &filter, &bias, &params, &out) == SANP_ERROR_RANK, "rank");
  bad = x; bad.dtype = SANP_INT32;
  EXPECT(sanp_gated_conv2d(&bad, &scale, &filter, &bias, &params, &out) == SANP_ERROR_DTYPE, "dtype");
  bad = x; bad.bytes -= 4;
  EXPECT(sanp_gated_conv2d(&bad, &scale, &filter, &bias, &params, &out) == SANP_ERROR_SIZE, "short x");
  bad = filter; bad.dims[3] += 1;
  EXPECT(sanp_gated_conv2d(&x, &scale, &bad, &bias, &params, &out) != SANP_OK, "filter C_in");
  bad = scale; bad.dims[3] += 1;
  EXPECT(sanp_gated_conv2d(&x, &bad, &filter, &bias, &params, &out) != SANP_OK, "scale C_out");
  bad = bias; bad.dims[0] += 1;
  EXPECT(sanp_gated_conv2d(&x, &scale, &filter, &bad, &params, &out) != SANP_OK, "bias C_out");
  bad = out; bad.dims[1] += 1;
  EXPECT(sanp_gated_conv2d(&x, &scale, &filter, &bias, &params, &bad) != SANP_OK, "out shape");
  bad = out; bad.bytes -= 4;
  EXPECT(sanp_gated_conv2d(&x, &scale, &filter, &bias, &params, &bad) == SANP_ERROR_SIZE, "short out");
  bad = x; bad.dims[0] = 2;
  EXPECT(sanp_gated_conv2d(&bad, &scale, &filter, &bias, &params, &out) != SANP_OK, "batch 2");
  EXPECT(sanp_gated_conv2d(NULL, &scale, &filter, &bias, &params, &out) != SANP_OK, "null x");
  const int32_t saved[5] = {ps[0], ps[1], ps[2], ps[3], ps[4]};
  ps[0] = 0;
  EXPECT(sanp_gated_conv2d(&x, &scale, &filter, &bias, &params, &out) == SANP_ERROR_PARAMS, "stride 0");
  ps[0] = saved[0]; ps[2] = kh;
  EXPECT(sanp_gated_conv2d(&x, &scale, &filter, &bias, &params, &out) == SANP_ERROR_PARAMS, "padding");
  ps[2] = saved[2]; ps[4] = 7;
  EXPECT(sanp_gated_conv2d(&x, &scale, &filter, &bias, &params, &out) == SANP_ERROR_PARAMS, "activation");
  ps[4] = saved[4];
  bad = params; bad.dims[0] = oh + 20;  /* output larger than the input can give */
  bad.bytes = params.bytes;
  EXPECT(sanp_gated_conv2d(&x, &scale, &filter, &bias, &bad, &out) != SANP_OK, "params shape");

  se_case(iteration, &x, &filter, &bias, &params, &out);
  free(x.data); free(scale.data); free(filter.data); free(bias.data);
  free(params.data); free(out.data);
}

/* The int8 entry (sanp_gated_conv2d_int8) against its formula computed directly here:
 * random quantization parameters, gates with closed channels (a scale of 0, or one
 * that quantizes to s_zero), input channels held at x_zero, every activation. The
 * kernel must give the same bytes, whatever its path or thread count. */
static int8_t random_int8(void) { return (int8_t)range(-128, 127); }

static int round_to_even(float v) { return (int)nearbyintf(v); }

static int clamp8(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static void int8_case(int iteration) {
  const int kh = 2 * range(0, 2) + 1, kw = kh, sh = range(1, 2), sw = sh;
  const int same = range(0, 1);
  const int h = range(kh, 14), wd = range(kw, 14);
  /* whole 4-byte groups; any count; past the 64 channels of one vpermb */
  const int pick = range(0, 5);
  const int c_in = pick <= 1 ? 4 * range(1, 12) : pick == 5 ? range(65, 80) : range(1, 40);
  const int c_out = range(1, 40), act = range(0, 2);
  int oh, ow, pt, pl;
  output_geometry(h, wd, kh, kw, sh, sw, same, &oh, &ow, &pt, &pl);
  const int xd[4] = {1, h, wd, c_in}, sd[4] = {1, 1, 1, c_out}, fd[4] = {c_out, kh, kw, c_in};
  const int bd[1] = {c_out}, pd[3] = {oh, ow, SANP_PARAM_COUNT}, od[4] = {1, oh, ow, c_out};
  const int qd[1] = {SANP_INT8_QUANT + c_out};
  SanpTensor x = sanp_test_tensor(SANP_INT8, 4, xd);
  SanpTensor scale = sanp_test_tensor(SANP_FLOAT32, 4, sd);
  SanpTensor filter = sanp_test_tensor(SANP_INT8, 4, fd);
  SanpTensor bias = sanp_test_tensor(SANP_INT32, 1, bd);
  SanpTensor params = sanp_test_tensor(SANP_INT32, 3, pd);
  SanpTensor quant = sanp_test_tensor(SANP_FLOAT32, 1, qd);
  SanpTensor out = sanp_test_tensor(SANP_INT8, 4, od);
  int8_t* xs = x.data; int8_t* fs = filter.data; int32_t* bs = bias.data;
  float* ss = scale.data; float* qs = quant.data;
  const int x_zero = range(-128, 127), y_zero = range(-128, 127);
  const int s_zero = range(-128, 0), out_zero = range(-128, 127);
  const float x_scale = 0.001f + 0.05f * (uniform() + 1.0f);
  const float y_scale = 0.01f + 0.5f * (uniform() + 1.0f);
  const float s_scale = 1.0f / 255.0f, out_scale = 0.005f + 0.3f * (uniform() + 1.0f);
  qs[0] = x_scale; qs[1] = (float)x_zero; qs[2] = y_scale; qs[3] = (float)y_zero;
  qs[4] = s_scale; qs[5] = (float)s_zero; qs[6] = out_scale; qs[7] = (float)out_zero;
  for (int c = 0; c < c_out; ++c) qs[SANP_INT8_QUANT + c] = 0.002f + 0.02f * (uniform() + 1.0f);
  for (int r = 0; r < c_in; ++r) {
    const int dead = range(0, 3) == 0;  /* a channel at x_zero: a zero input */
    for (int p = 0; p < h * wd; ++p) xs[(size_t)p * c_in + r] = dead ? (int8_t)x_zero : random_int8();
  }
  for (size_t i = 0; i < (size_t)c_out * kh * kw * c_in; ++i) fs[i] = random_int8();
  const int gates = range(0, 3);  /* 0: all closed, 1: all open, else random */
  for (int c = 0; c < c_out; ++c) {
    bs[c] = range(0, 9) == 0 ? (int32_t)(next() % 2000000000u) - 1000000000 : range(-3000, 3000);
    const int open = gates == 1 || (gates >= 2 && range(0, 1));
    ss[c] = open ? 0.05f + 0.45f * (uniform() + 1.0f) : (range(0, 1) ? 0.0f : 0.4f * s_scale);
  }
  int32_t* ps = params.data;
  ps[0] = sh; ps[1] = sw; ps[2] = pt; ps[3] = pl; ps[4] = act;

  SanpStatus s = sanp_gated_conv2d_int8(&x, &scale, &filter, &bias, &params, &quant, &out);
  EXPECT(s == SANP_OK, "int8 case %d returned %s", iteration, sanp_status_message(s));
  int lo = act >= 1 ? (out_zero > -128 ? out_zero : -128) : -128, hi = 127;
  if (act == 2 && out_zero + round_to_even(6.0f / out_scale) < 127)
    hi = out_zero + round_to_even(6.0f / out_scale);
  const int8_t* ys = out.data;
  for (int p = 0; p < oh && s == SANP_OK; ++p)
    for (int q = 0; q < ow; ++q)
      for (int c = 0; c < c_out; ++c) {
        long acc = bs[c];
        for (int i = 0; i < kh; ++i)
          for (int j = 0; j < kw; ++j) {
            const int ih = p * sh + i - pt, iw = q * sw + j - pl;
            if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
            for (int r = 0; r < c_in; ++r)
              acc += (long)(xs[((size_t)ih * wd + iw) * c_in + r] - x_zero) *
                     fs[(((size_t)c * kh + i) * kw + j) * c_in + r];
          }
        const float m_conv = x_scale * qs[SANP_INT8_QUANT + c] / y_scale;
        const int y = clamp8(round_to_even((float)acc * m_conv) + y_zero, -128, 127);
        const int sq = clamp8(round_to_even(ss[c] / s_scale) + s_zero, -128, 127) - s_zero;
        const int v = round_to_even((float)((y - y_zero) * sq) * (y_scale * s_scale / out_scale));
        const int want = clamp8(v + out_zero, lo, hi);
        const int got = ys[((size_t)p * ow + q) * c_out + c];
        EXPECT(got == want, "int8 case %d pixel (%d,%d) channel %d: got %d want %d", iteration,
               p, q, c, got, want);
      }

  SanpTensor bad;
  bad = x; bad.dtype = SANP_FLOAT32;
  EXPECT(sanp_gated_conv2d_int8(&bad, &scale, &filter, &bias, &params, &quant, &out) ==
         SANP_ERROR_DTYPE, "int8 x dtype");
  bad = x; bad.bytes -= 1;
  EXPECT(sanp_gated_conv2d_int8(&bad, &scale, &filter, &bias, &params, &quant, &out) ==
         SANP_ERROR_SIZE, "int8 short x");
  bad = out; bad.bytes -= 1;
  EXPECT(sanp_gated_conv2d_int8(&x, &scale, &filter, &bias, &params, &quant, &bad) ==
         SANP_ERROR_SIZE, "int8 short out");
  bad = quant; bad.dims[0] -= 1;
  EXPECT(sanp_gated_conv2d_int8(&x, &scale, &filter, &bias, &params, &bad, &out) ==
         SANP_ERROR_SHAPE, "int8 quant size");
  bad = bias; bad.dtype = SANP_FLOAT32;
  EXPECT(sanp_gated_conv2d_int8(&x, &scale, &filter, &bad, &params, &quant, &out) ==
         SANP_ERROR_DTYPE, "int8 bias dtype");
  const float saved_scale = qs[0], saved_zero = qs[1];
  qs[0] = -1.0f;
  EXPECT(sanp_gated_conv2d_int8(&x, &scale, &filter, &bias, &params, &quant, &out) ==
         SANP_ERROR_PARAMS, "int8 negative scale");
  qs[0] = saved_scale; qs[1] = 0.5f;
  EXPECT(sanp_gated_conv2d_int8(&x, &scale, &filter, &bias, &params, &quant, &out) ==
         SANP_ERROR_PARAMS, "int8 fractional zero point");
  qs[1] = saved_zero;
  free(x.data); free(scale.data); free(filter.data); free(bias.data);
  free(params.data); free(quant.data); free(out.data);
}

/* fuzz_gated_conv [iterations [seed [isa]]]: the same cases on every instruction-set
 * variant this CPU runs (or on `isa` alone), each on 1, 2 and 3 threads. */
int main(int argc, char** argv) {
  const int iterations = argc > 1 ? atoi(argv[1]) : 1000;
  if (argc > 2) state ^= strtoull(argv[2], NULL, 10) * 2654435761ULL;
  const char* only = argc > 3 ? argv[3] : NULL;
  const unsigned long long seed = state;
  const long default_min_macs = sanp_parallel_min_macs();
  int variants = 0;
  for (int k = 0; k < sanp_isa_count(); ++k) {
    const char* name = sanp_isa_name(k);
    if (only != NULL && strcmp(only, name) != 0) continue;
    if (!sanp_isa_supported(k)) {
      printf("%s: not run by this CPU, skipped\n", name);
      continue;
    }
    if (sanp_set_isa(name) != 0 || strcmp(sanp_isa(), name) != 0) {
      printf("%s: cannot be selected\n", name);
      ++failures;
      continue;
    }
    /* 1 thread, then the threaded paths, split on every call whatever its size */
    const int thread_counts[3] = {1, 2, 3};
    for (int t = 0; t < 3; ++t) {
      if (sanp_set_num_threads(thread_counts[t]) != 0) {
        printf("%s: cannot start %d threads\n", name, thread_counts[t]);
        ++failures;
        continue;
      }
      sanp_set_parallel_min_macs(thread_counts[t] > 1 ? 0 : default_min_macs);
      const int before = failures;
      state = seed;
      for (int i = 0; i < iterations; ++i) one_case(i);
      printf("%s, %d thread%s: %d cases, %d failures\n", name, thread_counts[t],
             thread_counts[t] > 1 ? "s" : "", iterations, failures - before);
    }
    sanp_set_num_threads(1);
    sanp_set_parallel_min_macs(default_min_macs);
    ++variants;
  }
  /* The int8 kernel: its portable path, then VNNI where the CPU has it. */
  for (int portable = 1; portable >= 0 && (only == NULL || strcmp(only, "int8") == 0);
       --portable) {
    sanp_int8_force_portable(portable);
    if (!portable && strcmp(sanp_int8_isa(), "portable") == 0) {
      printf("int8: no fast path on this CPU, the portable one only\n");
      break;
    }
    const int thread_counts[3] = {1, 2, 3};
    for (int t = 0; t < 3; ++t) {
      sanp_set_num_threads(thread_counts[t]);
      sanp_set_parallel_min_macs(thread_counts[t] > 1 ? 0 : default_min_macs);
      const int before = failures;
      state = seed;
      for (int i = 0; i < iterations; ++i) int8_case(i);
      printf("int8 %s, %d thread%s: %d cases, %d failures\n", sanp_int8_isa(),
             thread_counts[t], thread_counts[t] > 1 ? "s" : "", iterations,
             failures - before);
    }
    sanp_set_num_threads(1);
    sanp_set_parallel_min_macs(default_min_macs);
    ++variants;
  }
  sanp_int8_force_portable(0);
  if (variants == 0) {
    printf("no variant run\n");
    return 1;
  }
  printf("%d variants, %d failures\n", variants, failures);
  return failures == 0 ? 0 : 1;
}
