/* What an app calls from native code (an Android app's JNI layer) to run models
 * exported with kind="kernels" through LiteRT's CompiledModel C API: register the
 * sanp custom ops on the options, then compile. See run_model.c for the whole call
 * sequence. */
#ifndef SANP_LITERT_H_
#define SANP_LITERT_H_

#include "litert_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Adds SanpGatedConv2D, SanpSEGatedConv2D and SanpSEGate (version 1 each) to `options`
 * with LiteRtAddCustomOpKernelOption. kLiteRtStatusOk, or the first failure. */
LiteRtStatus sanp_register_kernels(LiteRtOptions options);

#ifdef __cplusplus
}
#endif

#endif /* SANP_LITERT_H_ */
