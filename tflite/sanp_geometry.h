/* Tensor checks and the convolution geometry shared by the float and int8 kernels
 * (sanp_gated_conv.c, sanp_gated_conv_int8.c): every rank, dtype, shape and buffer size
 * is checked before any data is read. */
#ifndef SANP_GEOMETRY_H_
#define SANP_GEOMETRY_H_

#include <stddef.h>
#include <stdint.h>

#include "sanp_gated_conv.h"

static inline size_t sanp_element_size(int dtype) { return dtype == SANP_INT8 ? 1 : 4; }

/* Rank, dtype and dims of `t`; with_data: also a buffer large enough for them. */
static inline SanpStatus check_tensor(const SanpTensor* t, int dtype, int rank, int with_data) {
  if (t == NULL || t->rank != rank) return SANP_ERROR_RANK;
  if (t->dtype != dtype) return SANP_ERROR_DTYPE;
  size_t count = 1;
  for (int i = 0; i < rank; ++i) {
    if (t->dims[i] <= 0 || t->dims[i] > (1 << 24)) return SANP_ERROR_SHAPE;
    count *= (size_t)t->dims[i];
    if (count > ((size_t)1 << 31)) return SANP_ERROR_SHAPE;
  }
  if (with_data && (t->data == NULL || t->bytes < count * sanp_element_size(dtype)))
    return SANP_ERROR_SIZE;
  return SANP_OK;
}

static inline SanpStatus check(const SanpTensor* t, int dtype, int rank) {
  return check_tensor(t, dtype, rank, 1);
}

typedef struct {
  int h, w, c_in, c_out, kh, kw, out_h, out_w, sh, sw, pt, pl, act;
} Geometry;

static inline SanpStatus geometry(const SanpTensor* x, const SanpTensor* filter,
                                  const SanpTensor* params, int dtype, int read_params,
                                  Geometry* g) {
  SanpStatus s;
  if ((s = check_tensor(x, dtype, 4, read_params)) != SANP_OK) return s;
  if ((s = check_tensor(filter, dtype, 4, read_params)) != SANP_OK) return s;
  if ((s = check_tensor(params, SANP_INT32, 3, read_params)) != SANP_OK) return s;
  if (x->dims[0] != 1) return SANP_ERROR_SHAPE;
  if (filter->dims[3] != x->dims[3]) return SANP_ERROR_SHAPE;
  if (params->dims[2] != SANP_PARAM_COUNT) return SANP_ERROR_SHAPE;
  g->h = x->dims[1]; g->w = x->dims[2]; g->c_in = x->dims[3];
  g->c_out = filter->dims[0]; g->kh = filter->dims[1]; g->kw = filter->dims[2];
  g->out_h = params->dims[0]; g->out_w = params->dims[1];
  if (!read_params) return SANP_OK;
  const int32_t* p = (const int32_t*)params->data;
  g->sh = p[0]; g->sw = p[1]; g->pt = p[2]; g->pl = p[3]; g->act = p[4];
  if (g->sh < 1 || g->sw < 1 || g->sh > 64 || g->sw > 64) return SANP_ERROR_PARAMS;
  if (g->pt < 0 || g->pl < 0 || g->pt >= g->kh || g->pl >= g->kw) return SANP_ERROR_PARAMS;
  if (g->act < 0 || g->act > 2) return SANP_ERROR_PARAMS;
  /* Every output pixel must see at least one input row and column. */
  if ((g->out_h - 1) * g->sh - g->pt >= g->h || (g->out_w - 1) * g->sw - g->pl >= g->w)
    return SANP_ERROR_PARAMS;
  return SANP_OK;
}

#endif /* SANP_GEOMETRY_H_ */
