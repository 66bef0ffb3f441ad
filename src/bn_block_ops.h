/*
 * Inner loops over one block. For channel-major (NCHW) data a block is part of one
 * channel: `rows` rows of `width` contiguous elements, row r starting `stride`
 * elements after row r - 1; outputs use the same offsets as inputs. For
 * channels-last data a block is a run of whole rows holding every channel. One table per dtype and per instruction-set level; the tables
 * are built from one source (bn_block_template.h) compiled once per level, and
 * bn_dispatch.c picks the level at import.
 */
#ifndef BN_BLOCK_OPS_H
#define BN_BLOCK_OPS_H

#include <stdint.h>

#include "bn_kernels.h"

typedef struct {
    /* sum of x */
    double (*sum)(const void *x, int64_t rows, int64_t width, int64_t stride);
    /* sum of (x - mean) and of (x - mean)^2 */
    void (*centered)(const void *x, int64_t rows, int64_t width, int64_t stride, double mean,
                     double *sum_d, double *sum_d2);
    /* sum of dy and of dy * (x - mean) */
    void (*grad_sums)(const void *x, const void *dy, int64_t rows, int64_t width, int64_t stride,
                      double mean, double *sum_dy, double *sum_dy_xmu);
    /* out = k_const + k_xmu * (x - mean) + k_dy * dy; x or dy may be NULL: no such term.
     * stream: write whole cache lines with non-temporal stores. */
    void (*linear)(const void *x, const void *dy, void *out, int64_t rows, int64_t width, int64_t stride,
                   double mean, double k_dy, double k_xmu, double k_const, int stream);

    /* Channels-last blocks: `rows` rows of `channels` contiguous values; the
     * results are vectors over channels. */
    void (*cl_sum)(const void *x, int64_t rows, int64_t channels, double *sum);
    void (*cl_centered)(const void *x, int64_t rows, int64_t channels, const double *mean, double *sum_d,
                        double *sum_d2);
    void (*cl_grad_sums)(const void *x, const void *dy, int64_t rows, int64_t channels, const double *mean,
                         double *sum_dy, double *sum_dy_xmu);
    void (*cl_linear)(const void *x, const void *dy, void *out, int64_t rows, int64_t channels,
                      const double *mean, const double *k_dy, const double *k_xmu, const double *k_const);
} bn_block_ops;

/* Index by bn_dtype; the float16 entry is all NULL where the compiler lacks _Float16. */
extern const bn_block_ops bn_ops_baseline[BN_DTYPE_COUNT];
#if defined(BN_HAVE_X86_LEVELS)
extern const bn_block_ops bn_ops_avx2[BN_DTYPE_COUNT];
extern const bn_block_ops bn_ops_avx512[BN_DTYPE_COUNT];
#endif

#endif
