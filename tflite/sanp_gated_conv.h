/* The gated convolution of sanp-keras, in plain C (no LiteRT dependency).
 *
 * out[0, p, q, c] = act((sum_{i,j,r} x[0, p*sh+i-pt, q*sw+j-pl, r] * w[c, i, j, r] + b[c])
 *                       * scale[c])
 * computed only for the open channels (scale[c] != 0) and over the live input
 * channels (r with x[..., r] not zero everywhere); every other output is 0.
 * scale = d * sigmoid(g) is the gate of METHOD.md eq. 5-6, computed by builtin ops.
 */
#ifndef SANP_GATED_CONV_H_
#define SANP_GATED_CONV_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { SANP_FLOAT32 = 1, SANP_INT32 = 2, SANP_INT8 = 9 }; /* LiteRtElementType / TfLiteType codes */
enum { SANP_MAX_RANK = 8 };

typedef enum {
  SANP_OK = 0,
  SANP_ERROR_RANK = 1,
  SANP_ERROR_DTYPE = 2,
  SANP_ERROR_SHAPE = 3,
  SANP_ERROR_PARAMS = 4,
  SANP_ERROR_SIZE = 5,
  SANP_ERROR_MEMORY = 6,
} SanpStatus;

/* A dense tensor view; `bytes` is the size of the buffer behind `data`. */
typedef struct {
  int dtype;
  int rank;
  int32_t dims[SANP_MAX_RANK];
  void* data;
  size_t bytes;
} SanpTensor;

/* params (int32, shape (H_out, W_out, 8)): its shape carries the output size (the
 * only thing GetOutputLayouts sees), its first values the geometry:
 * [stride_h, stride_w, pad_top, pad_left, activation (0 none, 1 relu, 2 relu6)]. */
enum { SANP_PARAM_COUNT = 8 };

/* Inputs: x (1, H, W, C_in) f32, scale (1, 1, 1, C_out) f32, filter (C_out, kh, kw,
 * C_in) f32 (TFLite's CONV_2D layout), bias (C_out) f32, params as above. out: (1, H_out, W_out, C_out) f32.
 * Checks every rank, dtype, shape and buffer size before touching data. */
SanpStatus sanp_gated_conv2d(const SanpTensor* x, const SanpTensor* scale,
                             const SanpTensor* filter, const SanpTensor* bias,
                             const SanpTensor* params, SanpTensor* out);

/* The same layer with its gate computed here from x (SanpSEGatedConv2D): the SE gate of
 * METHOD.md (eq. 1, 5, 6; b = 1[g > 0], eq. 7) at inference,
 *   s = mean of x over pixels (C_in), h = relu(s W1 + b1), g = h W2 + b2 (C_out),
 *   decisions[c] = 1 if g[c] > 0 or c is the first highest score (a layer keeps at
 *   least one channel), else 0;  scale[c] = decisions[c] * sigmoid(g[c]),
 * then the convolution above with that scale. gate (hidden + 1, C_in + 1 + C_out) f32
 * holds the weights: row j < hidden is [W1[:, j], b1[j], W2[j, :]], the last row
 * [0 (C_in + 1 values), b2]. decisions (1, C_out) f32 receives the decisions (NULL: not
 * wanted, as in a model that outputs none).
 * residual: NULL, or a (1, H_out, W_out, C_out) f32 tensor added before the activation
 * (a residual block's shortcut: out = act((conv + b) * scale + residual), the ADD
 * after the layer fused in). */
SanpStatus sanp_se_gated_conv2d(const SanpTensor* x, const SanpTensor* gate,
                                const SanpTensor* filter, const SanpTensor* bias,
                                const SanpTensor* params, const SanpTensor* residual,
                                SanpTensor* out, SanpTensor* decisions);

/* The gate alone (SanpSEGate), for a layer kept a builtin convolution times its gate:
 * x (1, H, W, C_in) and gate as above (C_out from its width) give scale (1, 1, C_out)
 * and decisions (1, C_out) (NULL: not wanted). */
SanpStatus sanp_se_gate(const SanpTensor* x, const SanpTensor* gate, SanpTensor* scale,
                        SanpTensor* decisions);

/* The int8 gated convolution (SanpGatedConv2DInt8): the arithmetic of the int8 masked
 * graph (export_tflite(kind="masked", quantize="int8")), CONV_2D then MUL by the
 * quantized gate scale, fused and computed only for the open channels and the live
 * inputs:
 *   acc[c]  = sum_{i,j,r} (x[...] - x_zero) * w[c, i, j, r]  (outside the map: 0)
 *   y[c]    = clamp(round((acc + bias[c]) * x_scale * w_scale[c] / y_scale) + y_zero)
 *   s[c]    = clamp(round(scale[c] / s_scale) + s_zero)      (the gate, quantized)
 *   out[c]  = clamp_act(round((y - y_zero) * (s - s_zero) * y_scale * s_scale
 *                             / out_scale) + out_zero)
 * round: to nearest, ties to even (XNNPACK's float requantization); clamp: to int8;
 * clamp_act: also to >= out_zero (relu) and <= out_zero + round(6 / out_scale)
 * (relu6). A closed channel (s == s_zero) is out_zero (clamped by the activation); an
 * input channel equal to x_zero everywhere adds nothing and is skipped.
 * Inputs: x (1, H, W, C_in) int8, scale (1, C_out) or (1, 1, 1, C_out) f32 (the float
 * gate's scale),
 * filter (C_out, kh, kw, C_in) int8, bias (C_out) int32, params as above, quant (8 +
 * C_out) f32 = [x_scale, x_zero, y_scale, y_zero, s_scale, s_zero, out_scale,
 * out_zero, w_scale[0 .. C_out - 1]]; out (1, H_out, W_out, C_out) int8. The dot
 * products use AVX-512 VNNI (x86-64) or SDOT (arm64) where the CPU has them (chosen
 * at run time), else portable C; `sanp_int8_isa` names the one in use. */
enum { SANP_INT8_QUANT = 8 };
SanpStatus sanp_gated_conv2d_int8(const SanpTensor* x, const SanpTensor* scale,
                                  const SanpTensor* filter, const SanpTensor* bias,
                                  const SanpTensor* params, const SanpTensor* quant,
                                  SanpTensor* out);
const char* sanp_int8_isa(void);
/* 0: the fast path where the CPU has it (the default), 1: the portable path (tests). */
void sanp_int8_force_portable(int portable);

/* Output shape from the input shapes alone: rank-4 dims into out_dims. */
SanpStatus sanp_gated_conv2d_output_shape(const SanpTensor* x, const SanpTensor* filter,
                                          const SanpTensor* params, int32_t out_dims[4]);

const char* sanp_status_message(SanpStatus status);

/* Instruction sets (sanp_dispatch.c). The library holds the kernels compiled for each
 * of them, index 0 "generic" (the architecture's baseline: SSE2 on x86-64, NEON on
 * arm64), then on x86-64 "avx2" (AVX2 + FMA) and "avx512" (F, BW, DQ, VL). At load the
 * best one this CPU runs is chosen, or the one $SANP_ISA names if the CPU runs it.
 * sanp_set_isa switches (0, or -1 with nothing changed for a name unknown or not run
 * by this CPU); not while another thread is inside a kernel. */
int sanp_isa_count(void);
const char* sanp_isa_name(int index);  /* NULL outside [0, sanp_isa_count()) */
int sanp_isa_supported(int index);     /* 1 if this CPU runs it */
const char* sanp_isa(void);            /* the one in use */
int sanp_set_isa(const char* name);

/* Threads (sanp_dispatch.c): a gated convolution of at least sanp_parallel_min_macs()
 * MACs splits its work over `threads` threads (the caller's and threads - 1 workers of
 * a pool created here once, kept until the count changes): its open channels in
 * contiguous chunks, or its pixel blocks in the many-filters layout. Every thread
 * writes its own outputs, so the result does not depend on the count. 1 (the
 * default): no pool. sanp_set_num_threads returns 0, or -1 (nothing changed) for a
 * count outside [1, SANP_MAX_THREADS] or threads that cannot start. Not while a kernel
 * runs; the pool is shared by the whole process: with more than one thread, run one
 * model at a time (two threads calling the kernels at once would share its tasks). */
enum { SANP_MAX_THREADS = 64 };
int sanp_set_num_threads(int threads);
int sanp_num_threads(void);
/* The threads the runtime's own pool runs beside ours (XNNPACK's num_threads; 0, the
 * default: as many as ours). Ours spin between layers only where the cores hold both
 * pools (ours + runtime's - 1 threads). 0, or -1 for a count outside [0, SANP_MAX_THREADS]. */
int sanp_set_runtime_threads(int threads);
int sanp_runtime_threads(void);
long sanp_parallel_min_macs(void);
void sanp_set_parallel_min_macs(long macs);  /* 0: split every call (tests) */

/* Runs task(context, i) for every i in [0, tasks) on the pool and the calling thread;
 * returns when all are done. */
void sanp_parallel(int tasks, void (*task)(void* context, int index), void* context);

#ifdef __cplusplus
}
#endif

#endif /* SANP_GATED_CONV_H_ */
