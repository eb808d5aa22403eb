/* A zero-filled SanpTensor of exactly its shape's size, for the fuzz test and the
 * micro-benchmark (standalone programs; the caller frees t.data). */
#ifndef SANP_TEST_TENSOR_H_
#define SANP_TEST_TENSOR_H_

#include <stdlib.h>
#include <string.h>

#include "sanp_gated_conv.h"
#include "sanp_geometry.h"

static inline SanpTensor sanp_test_tensor(int dtype, int rank, const int* dims) {
  SanpTensor t;
  memset(&t, 0, sizeof(t));
  t.dtype = dtype;
  t.rank = rank;
  size_t count = 1;
  for (int i = 0; i < rank; ++i) { t.dims[i] = dims[i]; count *= (size_t)dims[i]; }
  const size_t size = sanp_element_size(dtype);
  t.bytes = count * size;
  t.data = calloc(count, size);
  return t;
}

#endif /* SANP_TEST_TENSOR_H_ */
