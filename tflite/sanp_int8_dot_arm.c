/* The int8 kernel's dot products with the Arm dot-product instructions (SDOT, Armv8.2
 * FEAT_DotProd), for sanp_gated_conv_int8.c, which calls them only where the CPU
 * reports them (getauxval). This file alone is compiled with +dotprod: the rest of the
 * library runs on any arm64 CPU. */
#include <arm_neon.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

void sanp_int8_dots_sdot(const uint8_t* const base[8], size_t row_stride, int kh, int row,
                         const int8_t* panel, int32_t acc[8][16]);

/* acc[p][l] = sum over the kh kernel rows of the window bytes of pixel p (signed: the
 * map holds x itself on this path) times lane l's filter, the panel laid out as
 * [kh][row / 4][16 lanes][4 bytes]: per 4 bytes, one SDOT for each quarter of the
 * lanes. Two halves of 4 pixels keep 16 accumulators in registers. */
void sanp_int8_dots_sdot(const uint8_t* const base[8], size_t row_stride, int kh, int row,
                         const int8_t* panel, int32_t acc[8][16]) {
  for (int half = 0; half < 8; half += 4) {
    int32x4_t a[4][4];
    for (int p = 0; p < 4; ++p)
      for (int q = 0; q < 4; ++q) a[p][q] = vdupq_n_s32(0);
    for (int i = 0; i < kh; ++i) {
      const int8_t* w = panel + (size_t)i * row * 16;
      const uint8_t* x[4];
      for (int p = 0; p < 4; ++p) x[p] = base[half + p] + (size_t)i * row_stride;
      for (int k = 0; k < row; k += 4) {
        const int8x16_t w0 = vld1q_s8(w + (size_t)k * 16), w1 = vld1q_s8(w + (size_t)k * 16 + 16);
        const int8x16_t w2 = vld1q_s8(w + (size_t)k * 16 + 32), w3 = vld1q_s8(w + (size_t)k * 16 + 48);
        for (int p = 0; p < 4; ++p) {
          int32_t v;
          memcpy(&v, x[p] + k, 4);
          const int8x16_t xb = vreinterpretq_s8_s32(vdupq_n_s32(v));
          a[p][0] = vdotq_s32(a[p][0], w0, xb);
          a[p][1] = vdotq_s32(a[p][1], w1, xb);
          a[p][2] = vdotq_s32(a[p][2], w2, xb);
          a[p][3] = vdotq_s32(a[p][3], w3, xb);
        }
      }
    }
    for (int p = 0; p < 4; ++p)
      for (int q = 0; q < 4; ++q) vst1q_s32(acc[half + p] + 4 * q, a[p][q]);
  }
}
