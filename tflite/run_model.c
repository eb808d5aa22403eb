/* run_model: one inference of a sanp-keras `.tflite` (any kind, `kernels` included)
 * through LiteRT's CompiledModel C API, the call sequence an Android app's JNI layer
 * makes (the Kotlin CompiledModel API has no custom-op hook):
 *
 *   environment -> model -> options (CPU, threads) -> sanp_register_kernels(options)
 *   -> compiled model -> input / output buffers -> write, run, read.
 *
 *   run_model MODEL.tflite [INPUT.f32 [THREADS]]
 *
 * INPUT.f32: the raw float32 input (1, H, W, C), normalized as in training; without it
 * the input is all zeros. Prints each output's name and values, one output per line.
 * Links libsanp_tflite.so and libLiteRt.so; exit status 0 on success.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "litert_abi.h"
#include "sanp_gated_conv.h"
#include "sanp_litert.h"

#define CHECK(call, what)                                         \
  do {                                                            \
    if ((call) != kLiteRtStatusOk) {                              \
      fprintf(stderr, "run_model: %s failed\n", what);            \
      return 1;                                                   \
    }                                                             \
  } while (0)

enum { MAX_OUTPUTS = 64 };

static void free_payload(void* payload) { free(payload); }

/* A host-memory buffer sized as the compiled model requires for one tensor. */
static int make_buffer(LiteRtEnvironment env, LiteRtCompiledModel compiled,
                       LiteRtSignature sig, int is_input, size_t i,
                       LiteRtTensorBuffer* buffer, size_t* bytes) {
  LiteRtTensor tensor;
  LiteRtRankedTensorType type;
  LiteRtTensorBufferRequirements req;
  if ((is_input ? LiteRtGetSignatureInputTensorByIndex(sig, i, &tensor)
                : LiteRtGetSignatureOutputTensorByIndex(sig, i, &tensor)) != kLiteRtStatusOk ||
      LiteRtGetRankedTensorType(tensor, &type) != kLiteRtStatusOk ||
      (is_input ? LiteRtGetCompiledModelInputBufferRequirements(compiled, 0, i, &req)
                : LiteRtGetCompiledModelOutputBufferRequirements(compiled, 0, i, &req)) !=
          kLiteRtStatusOk ||
      LiteRtGetTensorBufferRequirementsBufferSize(req, bytes) != kLiteRtStatusOk)
    return 0;
  return LiteRtCreateManagedTensorBuffer(env, kLiteRtTensorBufferTypeHostMemory, &type,
                                         *bytes, buffer) == kLiteRtStatusOk;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: run_model MODEL.tflite [INPUT.f32 [THREADS]]\n");
    return 2;
  }
  const int threads = argc > 3 ? atoi(argv[3]) : 1;
  LiteRtEnvironment env;
  LiteRtModel model;
  LiteRtOptions options;
  LiteRtCompiledModel compiled;
  LiteRtSignature sig;
  CHECK(LiteRtCreateEnvironment(0, NULL, &env), "LiteRtCreateEnvironment");
  CHECK(LiteRtCreateModelFromFile(env, argv[1], &model), "LiteRtCreateModelFromFile");
  CHECK(LiteRtCreateOptions(&options), "LiteRtCreateOptions");
  CHECK(LiteRtSetOptionsHardwareAccelerators(options, kLiteRtHwAcceleratorCpu),
        "LiteRtSetOptionsHardwareAccelerators");
  if (threads > 0) {  /* XNNPACK's threads for the builtin ops */
    char* toml = malloc(64);
    LiteRtOpaqueOptions cpu;
    if (toml == NULL) return 1;
    snprintf(toml, 64, "num_threads = %d\n", threads);
    CHECK(LiteRtCreateOpaqueOptions("xnnpack", toml, free_payload, &cpu),
          "LiteRtCreateOpaqueOptions");
    CHECK(LiteRtAddOpaqueOptions(options, cpu), "LiteRtAddOpaqueOptions");
  }
  /* The sanp-specific steps: the kernels' threads, and LiteRtAddCustomOpKernelOption
   * for the three ops. */
  if (threads > 0 && sanp_set_num_threads(threads) != 0) {
    fprintf(stderr, "run_model: cannot start %d kernel threads\n", threads);
    return 1;
  }
  CHECK(sanp_register_kernels(options), "sanp_register_kernels");
  CHECK(LiteRtCreateCompiledModel(env, model, options, &compiled), "LiteRtCreateCompiledModel");

  LiteRtParamIndex n_in, n_out;
  CHECK(LiteRtGetModelSignature(model, 0, &sig), "LiteRtGetModelSignature");
  CHECK(LiteRtGetNumSignatureInputs(sig, &n_in), "LiteRtGetNumSignatureInputs");
  CHECK(LiteRtGetNumSignatureOutputs(sig, &n_out), "LiteRtGetNumSignatureOutputs");
  if (n_in != 1 || n_out < 1 || n_out > MAX_OUTPUTS) {
    fprintf(stderr, "run_model: expected one input and 1-%d outputs, got %zu and %zu\n",
            MAX_OUTPUTS, n_in, n_out);
    return 1;
  }
  LiteRtTensorBuffer input, outputs[MAX_OUTPUTS];
  size_t in_bytes, out_bytes[MAX_OUTPUTS];
  if (!make_buffer(env, compiled, sig, 1, 0, &input, &in_bytes)) return 1;
  for (size_t i = 0; i < n_out; ++i)
    if (!make_buffer(env, compiled, sig, 0, i, &outputs[i], &out_bytes[i])) return 1;

  void* data;
  CHECK(LiteRtLockTensorBuffer(input, &data, kLiteRtTensorBufferLockModeWrite), "lock input");
  memset(data, 0, in_bytes);
  if (argc > 2) {
    FILE* f = fopen(argv[2], "rb");
    const size_t got = f != NULL ? fread(data, 1, in_bytes, f) : 0;
    if (f != NULL) fclose(f);
    if (got != in_bytes) {
      fprintf(stderr, "run_model: %s holds %zu of the %zu input bytes\n", argv[2], got,
              in_bytes);
      return 1;
    }
  }
  CHECK(LiteRtUnlockTensorBuffer(input), "unlock input");
  CHECK(LiteRtRunCompiledModel(compiled, 0, 1, &input, n_out, outputs),
        "LiteRtRunCompiledModel");

  for (size_t i = 0; i < n_out; ++i) {
    const char* name = NULL;
    CHECK(LiteRtGetSignatureOutputName(sig, i, &name), "LiteRtGetSignatureOutputName");
    CHECK(LiteRtLockTensorBuffer(outputs[i], &data, kLiteRtTensorBufferLockModeRead),
          "lock output");
    printf("%s", name);
    for (size_t k = 0; k < out_bytes[i] / sizeof(float); ++k)
      printf(" %.9g", ((const float*)data)[k]);
    printf("\n");
    LiteRtUnlockTensorBuffer(outputs[i]);
    LiteRtDestroyTensorBuffer(outputs[i]);
  }
  LiteRtDestroyTensorBuffer(input);
  LiteRtDestroyCompiledModel(compiled);
  LiteRtDestroyOptions(options);
  LiteRtDestroyModel(model);
  LiteRtDestroyEnvironment(env);
  return 0;
}
