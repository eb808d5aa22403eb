/* Micro-benchmark of the SE-gated convolution on the shapes of a hard-pruned ResNet-20
 * (make bench): 3x3 stride-1 layers whose gate opens k_out of C_out channels on an
 * input with k_in live channels, timed as sanp_se_gated_conv2d (gate included) and as
 * sanp_se_gate alone; median of `runs` calls after warm-up, 1 thread.
 *
 *   bench_gated_conv [runs] [case]   (case: the row to time alone; default all)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sanp_gated_conv.h"
#include "sanp_test_tensor.h"


static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

static int by_value(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

/* Median time in us of `runs` calls of the fused op (gate = 0) or the gate alone (1). */
static double time_calls(int which, int runs, SanpTensor* t) {
  double* times = malloc(sizeof(double) * (size_t)runs);
  for (int n = -runs / 10 - 1; n < runs; ++n) {
    const double start = now_us();
    SanpStatus s = which == 0 ? sanp_se_gated_conv2d(&t[0], &t[1], &t[2], &t[3], &t[4], NULL,
                                                     &t[5], &t[6])
                              : sanp_se_gate(&t[0], &t[1], &t[7], &t[6]);
    if (s != SANP_OK) { fprintf(stderr, "%s\n", sanp_status_message(s)); exit(1); }
    if (n >= 0) times[n] = now_us() - start;
  }
  qsort(times, (size_t)runs, sizeof(double), by_value);
  const double median = times[runs / 2];
  free(times);
  return median;
}

int main(int argc, char** argv) {
  const int runs = argc > 1 ? atoi(argv[1]) : 2000, only = argc > 2 ? atoi(argv[2]) : -1;
  const int cases[][5] = {  /* size, C_in, C_out, live inputs, open outputs */
      {32, 16, 16, 16, 1}, {32, 16, 16, 1, 16}, {16, 32, 32, 32, 1}, {16, 32, 32, 1, 32},
      {8, 64, 64, 64, 1},  {8, 64, 64, 1, 64},  {32, 3, 16, 3, 16},   {32, 16, 16, 16, 16},
      {16, 32, 32, 30, 32}, {8, 64, 64, 64, 64}, {8, 64, 64, 40, 40}, {8, 64, 64, 64, 32}};
  printf("| input | live in | open out | MACs (k) | fused op us | GMAC/s | gate alone us |\n");
  printf("|---|---|---|---|---|---|---|\n");
  for (int k = 0; k < (int)(sizeof(cases) / sizeof(cases[0])); ++k) {
    if (only >= 0 && k != only) continue;
    const int hw = cases[k][0], c = cases[k][1], c_out = cases[k][2], live = cases[k][3];
    const int open = cases[k][4];
    const int hidden = 4;
    SanpTensor t[8];
    t[0] = sanp_test_tensor(SANP_FLOAT32, 4, (int[]){1, hw, hw, c});
    t[1] = sanp_test_tensor(SANP_FLOAT32, 2, (int[]){hidden + 1, c + 1 + c_out});
    t[2] = sanp_test_tensor(SANP_FLOAT32, 4, (int[]){c_out, 3, 3, c});
    t[3] = sanp_test_tensor(SANP_FLOAT32, 1, (int[]){c_out});
    t[4] = sanp_test_tensor(SANP_INT32, 3, (int[]){hw, hw, SANP_PARAM_COUNT});
    t[5] = sanp_test_tensor(SANP_FLOAT32, 4, (int[]){1, hw, hw, c_out});
    t[6] = sanp_test_tensor(SANP_FLOAT32, 2, (int[]){1, c_out});
    t[7] = sanp_test_tensor(SANP_FLOAT32, 3, (int[]){1, 1, c_out});
    float* x = t[0].data;
    for (int p = 0; p < hw * hw; ++p)  /* live channels: the first `live`, values >= 0 */
      for (int r = 0; r < live; ++r) x[p * c + r] = (float)((p * 7 + r * 3) % 11) * 0.1f;
    float* gate = t[1].data;  /* h = relu(b1) = 1; g[c] = W2[0, c]: +1 opens, -1 closes */
    gate[c] = 1.0f;
    for (int o = 0; o < c_out; ++o) gate[c + 1 + o] = o < open ? 1.0f : -1.0f;
    float* w = t[2].data;
    for (int i = 0; i < c_out * 9 * c; ++i) w[i] = (float)(i % 13) * 0.01f - 0.06f;
    int32_t* params = t[4].data;
    params[0] = 1; params[1] = 1; params[2] = 1; params[3] = 1; params[4] = 1;
    const double fused = time_calls(0, runs, t), alone = time_calls(1, runs, t);
    const double macs = (double)hw * hw * 9 * live * open;
    printf("| %dx%dx%d | %d | %d / %d | %.0f | %.2f | %.1f | %.2f |\n", hw, hw, c, live, open,
           c_out, macs / 1e3, fused, macs / fused / 1e3, alone);
    for (int i = 0; i < 8; ++i) free(t[i].data);
  }
  return 0;
}
