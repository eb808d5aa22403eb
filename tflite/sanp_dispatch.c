/* The public kernel functions of sanp_gated_conv.h, forwarded to the variant of
 * sanp_gated_conv.c compiled for the best instruction set this CPU runs (see
 * sanp_isa in the header). One library then runs on any CPU of its architecture. */
#include <stdlib.h>
#include <string.h>

#include "sanp_gated_conv.h"

#define SANP_DECLARE_VARIANT(v)                                                            \
  const char* sanp_status_message_##v(SanpStatus status);                                  \
  SanpStatus sanp_gated_conv2d_output_shape_##v(const SanpTensor* x,                       \
                                                const SanpTensor* filter,                  \
                                                const SanpTensor* params,                  \
                                                int32_t out_dims[4]);                      \
  SanpStatus sanp_gated_conv2d_##v(const SanpTensor* x, const SanpTensor* scale,           \
                                   const SanpTensor* filter, const SanpTensor* bias,       \
                                   const SanpTensor* params, SanpTensor* out);             \
  SanpStatus sanp_se_gated_conv2d_##v(const SanpTensor* x, const SanpTensor* gate,         \
                                      const SanpTensor* filter, const SanpTensor* bias,    \
                                      const SanpTensor* params, const SanpTensor* residual,\
                                      SanpTensor* out, SanpTensor* decisions);             \
  SanpStatus sanp_se_gate_##v(const SanpTensor* x, const SanpTensor* gate,                 \
                              SanpTensor* scale, SanpTensor* decisions);

#define SANP_VARIANT_ENTRY(v, supported)                                                   \
  {#v, supported, sanp_gated_conv2d_##v, sanp_se_gated_conv2d_##v, sanp_se_gate_##v}

typedef struct {
  const char* name;
  int (*supported)(void);
  SanpStatus (*gated_conv2d)(const SanpTensor*, const SanpTensor*, const SanpTensor*,
                             const SanpTensor*, const SanpTensor*, SanpTensor*);
  SanpStatus (*se_gated_conv2d)(const SanpTensor*, const SanpTensor*, const SanpTensor*,
                                const SanpTensor*, const SanpTensor*, const SanpTensor*,
                                SanpTensor*, SanpTensor*);
  SanpStatus (*se_gate)(const SanpTensor*, const SanpTensor*, SanpTensor*, SanpTensor*);
} SanpIsa;

static int always(void) { return 1; }

SANP_DECLARE_VARIANT(generic)

#if defined(__x86_64__)
SANP_DECLARE_VARIANT(avx2)
SANP_DECLARE_VARIANT(avx512)

/* __builtin_cpu_supports also checks that the OS saves the wider registers. */
static int has_avx2(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static int has_avx512(void) {
  return has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
}

static const SanpIsa isas[] = {
    SANP_VARIANT_ENTRY(generic, always),
    SANP_VARIANT_ENTRY(avx2, has_avx2),
    SANP_VARIANT_ENTRY(avx512, has_avx512),
};
#else
static const SanpIsa isas[] = {SANP_VARIANT_ENTRY(generic, always)};
#endif

enum { ISA_COUNT = sizeof(isas) / sizeof(isas[0]) };

static const SanpIsa* current = &isas[0];

/* At load: $SANP_ISA if this CPU runs it, else the best one it runs. */
__attribute__((constructor)) static void choose_isa(void) {
  const char* wanted = getenv("SANP_ISA");
  if (wanted != NULL && sanp_set_isa(wanted) == 0) return;
  for (int i = ISA_COUNT - 1; i >= 0; --i) {
    if (isas[i].supported()) {
      current = &isas[i];
      return;
    }
  }
}

int sanp_isa_count(void) { return ISA_COUNT; }

const char* sanp_isa_name(int index) {
  return index >= 0 && index < ISA_COUNT ? isas[index].name : NULL;
}

int sanp_isa_supported(int index) {
  return index >= 0 && index < ISA_COUNT && isas[index].supported();
}

const char* sanp_isa(void) { return current->name; }

int sanp_set_isa(const char* name) {
  for (int i = 0; i < ISA_COUNT; ++i) {
    if (name != NULL && strcmp(name, isas[i].name) == 0 && isas[i].supported()) {
      current = &isas[i];
      return 0;
    }
  }
  return -1;
}

const char* sanp_status_message(SanpStatus status) {
  return sanp_status_message_generic(status);
}

SanpStatus sanp_gated_conv2d_output_shape(const SanpTensor* x, const SanpTensor* filter,
                                          const SanpTensor* params, int32_t out_dims[4]) {
  return sanp_gated_conv2d_output_shape_generic(x, filter, params, out_dims);
}

SanpStatus sanp_gated_conv2d(const SanpTensor* x, const SanpTensor* scale,
                             const SanpTensor* filter, const SanpTensor* bias,
                             const SanpTensor* params, SanpTensor* out) {
  return current->gated_conv2d(x, scale, filter, bias, params, out);
}

SanpStatus sanp_se_gated_conv2d(const SanpTensor* x, const SanpTensor* gate,
                                const SanpTensor* filter, const SanpTensor* bias,
                                const SanpTensor* params, const SanpTensor* residual,
                                SanpTensor* out, SanpTensor* decisions) {
  return current->se_gated_conv2d(x, gate, filter, bias, params, residual, out, decisions);
}

SanpStatus sanp_se_gate(const SanpTensor* x, const SanpTensor* gate, SanpTensor* scale,
                        SanpTensor* decisions) {
  return current->se_gate(x, gate, scale, decisions);
}
