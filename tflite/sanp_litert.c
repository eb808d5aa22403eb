/* LiteRT glue: the custom ops (CustomOpDispatcher) and a small runner.
 *
 * SanpGatedConv2D: inputs (x, scale, filter, bias, params), one output.
 * SanpSEGatedConv2D: inputs (x, gate, filter, bias, params[, residual]), outputs (y[,
 * decisions]): the same convolution with the layer's SE gate computed in the kernel from
 * x, and a residual block's shortcut added before the activation when given.
 * SanpSEGate: inputs (x, gate), outputs (scale[, decisions]): the gate alone, for a layer
 * kept a builtin convolution. SanpGatedConv2DInt8: inputs (x, scale, filter, bias,
 * params, quant), one output: the int8 convolution of an int8 export
 * (sanp_gated_conv2d_int8). Each tensor of a call costs the dispatcher a buffer, so
 * the export leaves out the decisions where nothing reads them.
 * See sanp_gated_conv.h. Register all three on LiteRtOptions with sanp_register_kernels()
 * before compiling a model exported with kind="kernels". The runner wraps the
 * CompiledModel API for ctypes (sanp_keras.export.KernelRunner) and for the latency
 * benchmark.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "litert_abi.h"
#include "sanp_gated_conv.h"
#include "sanp_litert.h"

#define SANP_OP_NAME "SanpGatedConv2D"
#define SANP_SE_OP_NAME "SanpSEGatedConv2D"
#define SANP_GATE_OP_NAME "SanpSEGate"
#define SANP_INT8_OP_NAME "SanpGatedConv2DInt8"

/* LiteRT 2.3.0 ignores the status a custom kernel returns, so the last one is also
 * kept here: the runner turns it into an error of the run. */
static _Thread_local SanpStatus last_status = SANP_OK;

int sanp_last_kernel_status(void) { return (int)last_status; }

static double now_ms(void);

/* Time spent inside the gated-convolution kernels since the last reset, and their
 * number of calls: `total - kernel` is what the rest of the graph costs. */
static _Thread_local double kernel_ms = 0.0;
static _Thread_local long kernel_calls = 0;

double sanp_kernel_time_ms(void) { return kernel_ms; }
long sanp_kernel_calls(void) { return kernel_calls; }
void sanp_reset_kernel_time(void) { kernel_ms = 0.0; kernel_calls = 0; }

static LiteRtStatus to_litert(SanpStatus s) {
  return s == SANP_OK ? kLiteRtStatusOk : kLiteRtStatusErrorInvalidArgument;
}

static void layout_tensor(const LiteRtLayout* layout, int dtype, SanpTensor* t) {
  memset(t, 0, sizeof(*t));
  t->dtype = dtype;
  t->rank = (int)layout->rank;
  for (int i = 0; i < t->rank && i < SANP_MAX_RANK; ++i) t->dims[i] = layout->dimensions[i];
}

static LiteRtStatus op_init(void* user_data, const void* data, size_t size) {
  (void)user_data; (void)data; (void)size;
  return kLiteRtStatusOk;
}

/* user_data of each op: which one it is. */
typedef enum { OP_GATED_CONV, OP_SE_GATED_CONV, OP_SE_GATE, OP_GATED_CONV_INT8 } OpKind;
enum { OP_KINDS = 4 };
static const OpKind kKinds[OP_KINDS] = {OP_GATED_CONV, OP_SE_GATED_CONV, OP_SE_GATE,
                                        OP_GATED_CONV_INT8};
static const size_t kInputs[OP_KINDS] = {5, 5, 2, 6}, kOutputs[OP_KINDS] = {1, 2, 2, 1};

/* Whether an op of `kind` takes `n_in` inputs and `n_out` outputs: SanpSEGatedConv2D
 * takes a sixth, optional input, the residual added before the activation; the SE ops'
 * decisions output is optional (left out where nothing reads it). */
static int takes(OpKind kind, size_t n_in, size_t n_out) {
  const int inputs = n_in == kInputs[kind] || (kind == OP_SE_GATED_CONV && n_in == 6);
  const int one_output = kind == OP_GATED_CONV || kind == OP_GATED_CONV_INT8;
  return inputs && (n_out == kOutputs[kind] || (!one_output && n_out == 1));
}

static LiteRtStatus op_output_layouts(void* user_data, size_t num_inputs,
                                      const LiteRtLayout* inputs, size_t num_outputs,
                                      LiteRtLayout* outputs) {
  const OpKind kind = *(const OpKind*)user_data;
  if (!takes(kind, num_inputs, num_outputs)) return kLiteRtStatusErrorInvalidArgument;
  int32_t dims[4];
  if (kind == OP_SE_GATE) {  /* C_out: the gate's width less C_in + 1 */
    if (inputs[0].rank != 4 || inputs[1].rank != 2) return kLiteRtStatusErrorInvalidArgument;
    dims[3] = inputs[1].dimensions[1] - inputs[0].dimensions[3] - 1;
    if (dims[3] < 1) return kLiteRtStatusErrorInvalidArgument;
    outputs[0].rank = 3;
    outputs[0].has_strides = 0;
    outputs[0].dimensions[0] = outputs[0].dimensions[1] = 1;
    outputs[0].dimensions[2] = dims[3];
  } else {
    SanpTensor x, filter, params;  /* the geometry reads shapes only: any dtype */
    layout_tensor(&inputs[0], SANP_FLOAT32, &x);
    layout_tensor(&inputs[2], SANP_FLOAT32, &filter);
    layout_tensor(&inputs[4], SANP_INT32, &params);
    SanpStatus s = sanp_gated_conv2d_output_shape(&x, &filter, &params, dims);
    last_status = s;
    if (s != SANP_OK) return to_litert(s);
    outputs[0].rank = 4;
    outputs[0].has_strides = 0;
    for (int i = 0; i < 4; ++i) outputs[0].dimensions[i] = dims[i];
  }
  if (num_outputs == 2) {  /* decisions (1, C_out) */
    outputs[1].rank = 2;
    outputs[1].has_strides = 0;
    outputs[1].dimensions[0] = 1;
    outputs[1].dimensions[1] = dims[3];
  }
  return kLiteRtStatusOk;
}

/* Locks `buffer` and describes it; the caller unlocks it. */
static LiteRtStatus lock_tensor(LiteRtTensorBuffer buffer, int mode, SanpTensor* t) {
  LiteRtRankedTensorType type;
  memset(t, 0, sizeof(*t));
  if (LiteRtGetTensorBufferTensorType(buffer, &type) != kLiteRtStatusOk ||
      LiteRtGetTensorBufferSize(buffer, &t->bytes) != kLiteRtStatusOk ||
      LiteRtLockTensorBuffer(buffer, &t->data, mode) != kLiteRtStatusOk)
    return kLiteRtStatusErrorRuntimeFailure;
  t->dtype = type.element_type;
  t->rank = (int)type.layout.rank;
  for (int i = 0; i < t->rank && i < SANP_MAX_RANK; ++i)
    t->dims[i] = type.layout.dimensions[i];
  return kLiteRtStatusOk;
}

static LiteRtStatus op_run(void* user_data, size_t num_inputs,
                           const LiteRtTensorBuffer* inputs, size_t num_outputs,
                           LiteRtTensorBuffer* outputs) {
  const OpKind kind = *(const OpKind*)user_data;
  const size_t n_in = num_inputs, n = n_in + num_outputs;
  if (!takes(kind, num_inputs, num_outputs)) {
    last_status = SANP_ERROR_RANK;
    return kLiteRtStatusErrorInvalidArgument;
  }
  SanpTensor t[8];  /* the inputs, then the outputs */
  size_t locked = 0;
  LiteRtStatus status = kLiteRtStatusOk;
  for (; locked < n && status == kLiteRtStatusOk; ++locked) {
    LiteRtTensorBuffer b = locked < n_in ? inputs[locked] : outputs[locked - n_in];
    status = lock_tensor(b, locked < n_in ? kLiteRtTensorBufferLockModeRead
                                          : kLiteRtTensorBufferLockModeWrite, &t[locked]);
  }
  if (status == kLiteRtStatusOk) {
    const double start = now_ms();
    switch (kind) {
      case OP_GATED_CONV:
        last_status = sanp_gated_conv2d(&t[0], &t[1], &t[2], &t[3], &t[4], &t[5]);
        break;
      case OP_SE_GATED_CONV:
        last_status = sanp_se_gated_conv2d(&t[0], &t[1], &t[2], &t[3], &t[4],
                                           n_in == 6 ? &t[5] : NULL, &t[n_in],
                                           num_outputs == 2 ? &t[n_in + 1] : NULL);
        break;
      case OP_SE_GATE:
        last_status = sanp_se_gate(&t[0], &t[1], &t[2], num_outputs == 2 ? &t[3] : NULL);
        break;
      case OP_GATED_CONV_INT8:
        last_status = sanp_gated_conv2d_int8(&t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6]);
        break;
    }
    kernel_ms += now_ms() - start;
    kernel_calls += 1;
    status = to_litert(last_status);
  } else {
    last_status = SANP_ERROR_SIZE;
    locked -= 1;  /* the failed lock holds nothing */
  }
  for (size_t i = 0; i < locked; ++i)
    LiteRtUnlockTensorBuffer(i < n_in ? inputs[i] : outputs[i - n_in]);
  return status;
}

static LiteRtStatus op_destroy(void* user_data) {
  (void)user_data;
  return kLiteRtStatusOk;
}

static const LiteRtCustomOpKernel kCallbacks = {op_init, op_output_layouts, op_run,
                                                op_destroy};

LiteRtStatus sanp_register_kernels(LiteRtOptions options) {
  const char* names[OP_KINDS] = {SANP_OP_NAME, SANP_SE_OP_NAME, SANP_GATE_OP_NAME,
                                 SANP_INT8_OP_NAME};
  for (int i = 0; i < OP_KINDS; ++i) {
    LiteRtStatus s = LiteRtAddCustomOpKernelOption(options, names[i], 1, &kCallbacks,
                                                   (void*)&kKinds[i]);
    if (s != kLiteRtStatusOk) return s;
  }
  return kLiteRtStatusOk;
}

/* ---------------------------------------------------------------- runner -- */

enum { MAX_IO = 512 };

typedef struct {
  LiteRtEnvironment env;
  LiteRtModel model;
  LiteRtOptions options;
  LiteRtCompiledModel compiled;
  LiteRtSignature signature;
  size_t n_in, n_out;
  LiteRtTensorBuffer in[MAX_IO], out[MAX_IO];
  size_t in_bytes[MAX_IO], out_bytes[MAX_IO];
  int threads;  /* the kernels' pool is the process's: set again before each run */
  int runtime_threads;  /* XNNPACK's */
} SanpRunner;

void sanp_runner_destroy(SanpRunner* r) {
  if (r == NULL) return;
  for (size_t i = 0; i < r->n_in; ++i)
    if (r->in[i]) LiteRtDestroyTensorBuffer(r->in[i]);
  for (size_t i = 0; i < r->n_out; ++i)
    if (r->out[i]) LiteRtDestroyTensorBuffer(r->out[i]);
  if (r->compiled) LiteRtDestroyCompiledModel(r->compiled);
  if (r->options) LiteRtDestroyOptions(r->options);
  if (r->model) LiteRtDestroyModel(r->model);
  if (r->env) LiteRtDestroyEnvironment(r->env);
  free(r);
}

static int make_buffer(SanpRunner* r, LiteRtSignature sig, int is_input, size_t i,
                       LiteRtTensorBuffer* buffer, size_t* bytes) {
  LiteRtTensor tensor;
  LiteRtRankedTensorType type;
  LiteRtTensorBufferRequirements req;
  if ((is_input ? LiteRtGetSignatureInputTensorByIndex(sig, i, &tensor)
                : LiteRtGetSignatureOutputTensorByIndex(sig, i, &tensor)) != kLiteRtStatusOk ||
      LiteRtGetRankedTensorType(tensor, &type) != kLiteRtStatusOk ||
      (is_input ? LiteRtGetCompiledModelInputBufferRequirements(r->compiled, 0, i, &req)
                : LiteRtGetCompiledModelOutputBufferRequirements(r->compiled, 0, i, &req)) !=
          kLiteRtStatusOk ||
      LiteRtGetTensorBufferRequirementsBufferSize(req, bytes) != kLiteRtStatusOk)
    return 0;
  return LiteRtCreateManagedTensorBuffer(r->env, kLiteRtTensorBufferTypeHostMemory, &type,
                                         *bytes, buffer) == kLiteRtStatusOk;
}

static void free_payload(void* payload) { free(payload); }

/* Loads and compiles `path` on the CPU (the sanp kernels with `threads` threads and
 * XNNPACK with `runtime_threads`, 0: their defaults) with the sanp kernels registered.
 * NULL on failure, with a reason in `error`. */
SanpRunner* sanp_runner_create_split(const char* path, int threads, int runtime_threads,
                                     char* error, size_t error_len) {
  SanpRunner* r = calloc(1, sizeof(SanpRunner));
  LiteRtSignature sig;
  const char* step = "out of memory";
  if (r == NULL) goto fail;
  step = "LiteRtCreateEnvironment";
  if (LiteRtCreateEnvironment(0, NULL, &r->env) != kLiteRtStatusOk) goto fail;
  step = "LiteRtCreateModelFromFile (is the path a .tflite file?)";
  if (LiteRtCreateModelFromFile(r->env, path, &r->model) != kLiteRtStatusOk) goto fail;
  step = "LiteRtCreateOptions";
  if (LiteRtCreateOptions(&r->options) != kLiteRtStatusOk ||
      LiteRtSetOptionsHardwareAccelerators(r->options, kLiteRtHwAcceleratorCpu) !=
          kLiteRtStatusOk)
    goto fail;
  if (runtime_threads > 0) {
    char* toml = malloc(64);
    LiteRtOpaqueOptions cpu;
    step = "CPU options";
    if (toml == NULL) goto fail;
    snprintf(toml, 64, "num_threads = %d\n", runtime_threads);
    if (LiteRtCreateOpaqueOptions("xnnpack", toml, free_payload, &cpu) != kLiteRtStatusOk) {
      free(toml);
      goto fail;
    }
    if (LiteRtAddOpaqueOptions(r->options, cpu) != kLiteRtStatusOk) goto fail;
  }
  step = "starting the kernels' threads";  /* the kernels split large layers as XNNPACK */
  if (sanp_set_runtime_threads(runtime_threads > 0 ? runtime_threads : 0) != 0 ||
      (threads > 0 && sanp_set_num_threads(threads) != 0))
    goto fail;
  r->threads = threads;
  r->runtime_threads = runtime_threads > 0 ? runtime_threads : 0;
  step = "registering SanpGatedConv2D";
  if (sanp_register_kernels(r->options) != kLiteRtStatusOk) goto fail;
  step = "LiteRtCreateCompiledModel";
  if (LiteRtCreateCompiledModel(r->env, r->model, r->options, &r->compiled) != kLiteRtStatusOk)
    goto fail;
  step = "reading the model's signature";
  if (LiteRtGetModelSignature(r->model, 0, &sig) != kLiteRtStatusOk ||
      (r->signature = sig) == NULL ||
      LiteRtGetNumSignatureInputs(sig, &r->n_in) != kLiteRtStatusOk ||
      LiteRtGetNumSignatureOutputs(sig, &r->n_out) != kLiteRtStatusOk ||
      r->n_in > MAX_IO || r->n_out > MAX_IO)
    goto fail;
  step = "creating tensor buffers";
  for (size_t i = 0; i < r->n_in; ++i)
    if (!make_buffer(r, sig, 1, i, &r->in[i], &r->in_bytes[i])) goto fail;
  for (size_t i = 0; i < r->n_out; ++i)
    if (!make_buffer(r, sig, 0, i, &r->out[i], &r->out_bytes[i])) goto fail;
  return r;
fail:
  if (error != NULL && error_len > 0) snprintf(error, error_len, "%s failed for %s", step, path);
  sanp_runner_destroy(r);
  return NULL;
}

/* sanp_runner_create_split with XNNPACK at the kernels' count. */
SanpRunner* sanp_runner_create(const char* path, int threads, char* error, size_t error_len) {
  return sanp_runner_create_split(path, threads, threads, error, error_len);
}

size_t sanp_runner_num_inputs(const SanpRunner* r) { return r->n_in; }
size_t sanp_runner_num_outputs(const SanpRunner* r) { return r->n_out; }
size_t sanp_runner_input_bytes(const SanpRunner* r, size_t i) {
  return i < r->n_in ? r->in_bytes[i] : 0;
}
size_t sanp_runner_output_bytes(const SanpRunner* r, size_t i) {
  return i < r->n_out ? r->out_bytes[i] : 0;
}
const char* sanp_runner_output_name(const SanpRunner* r, size_t i) {
  const char* name = NULL;
  if (i >= r->n_out || LiteRtGetSignatureOutputName(r->signature, i, &name) != kLiteRtStatusOk)
    return NULL;
  return name;
}

static int copy(LiteRtTensorBuffer buffer, void* host, size_t bytes, int to_buffer) {
  void* data;
  if (LiteRtLockTensorBuffer(buffer, &data, to_buffer ? kLiteRtTensorBufferLockModeWrite
                                                      : kLiteRtTensorBufferLockModeRead) !=
      kLiteRtStatusOk)
    return 0;
  if (to_buffer) memcpy(data, host, bytes); else memcpy(host, data, bytes);
  LiteRtUnlockTensorBuffer(buffer);
  return 1;
}

int sanp_runner_set_input(SanpRunner* r, size_t i, const void* data, size_t bytes) {
  if (i >= r->n_in || bytes != r->in_bytes[i]) return -1;
  return copy(r->in[i], (void*)data, bytes, 1) ? 0 : -2;
}

int sanp_runner_get_output(SanpRunner* r, size_t i, void* data, size_t bytes) {
  if (i >= r->n_out || bytes != r->out_bytes[i]) return -1;
  return copy(r->out[i], data, bytes, 0) ? 0 : -2;
}

/* 0 on success; -1 if LiteRT failed; a SanpStatus (> 0) if a kernel refused. */
int sanp_runner_invoke(SanpRunner* r) {
  last_status = SANP_OK;
  if (sanp_set_runtime_threads(r->runtime_threads) != 0 ||
      (r->threads > 0 && sanp_set_num_threads(r->threads) != 0))
    return -1;
  if (LiteRtRunCompiledModel(r->compiled, 0, r->n_in, r->in, r->n_out, r->out) !=
      kLiteRtStatusOk)
    return -1;
  return (int)last_status;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* Times `runs` invocations after `warmup` ones, writing each in milliseconds. */
int sanp_runner_time(SanpRunner* r, int warmup, int runs, double* times_ms) {
  for (int i = 0; i < warmup; ++i) {
    int s = sanp_runner_invoke(r);
    if (s != 0) return s;
  }
  for (int i = 0; i < runs; ++i) {
    const double start = now_ms();
    int s = sanp_runner_invoke(r);
    times_ms[i] = now_ms() - start;
    if (s != 0) return s;
  }
  return 0;
}
