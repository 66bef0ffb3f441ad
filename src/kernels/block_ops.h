/*
 * Inner loops over one block. For channel-major (NCHW) data a block is part of one
 * channel: `rows` rows of `width` contiguous elements, row r starting `stride`
 * elements after row r - 1; outputs use the same offsets as inputs. For
 * channels-last data a block is a run of whole rows holding every channel. One table per dtype and per instruction-set level; the tables
 * are built from one source (block_template.h) compiled once per level, and
 * dispatch.c picks the level at import.
 */
#ifndef BN_BLOCK_OPS_H
#define BN_BLOCK_OPS_H

#include <stdint.h>

#include "bnorm_kernels.h"

/* Per-channel coefficients of the output loops:
 *   z   = relu_scale * (x - mean) + relu_shift   the forward's pre-activation
 *   dy' = dy, or 0 where z rounds to <= 0           (with BN_RELU_MASK)
 *   out = k_const + k_xmu * (x - mean) + k_dy * dy', clamped at 0 with BN_RELU_CLAMP */
typedef struct {
    double mean, k_dy, k_xmu, k_const, relu_scale, relu_shift;
} bn_coefs;

/* Channels-last output and gradient loops, and output_rows, read the coefficients
 * converted to the type they compute in, as this many vectors over channels
 * (cl_set_coefs);
 * a buffer of BN_CL_COEFS * C doubles holds them for every dtype. */
#define BN_CL_COEFS 7

/* Which terms an output loop computes. */
enum { BN_USE_X = 1, BN_USE_DY = 2, BN_RELU_CLAMP = 4, BN_RELU_MASK = 8 };

/* Whether an output loop computing `terms` reads coefficient vector k (in
 * compute_coefs' order: mean_hi, mean_lo, k_dy, k_xmu, k_const, relu_scale,
 * relu_shift; see output_value), so that copies of the coefficients move only
 * those. */
static inline int bn_coef_read(int k, int terms)
{
    static const int needs[BN_CL_COEFS] = {BN_USE_X | BN_RELU_MASK, BN_USE_X | BN_RELU_MASK, BN_USE_DY, BN_USE_X,
                                           -1, BN_RELU_MASK, BN_RELU_MASK};
    return (needs[k] & terms) != 0;
}

/* The combinations the kernels use: forward (with or without ReLU), gradient with
 * batch statistics and with constant ones (each with or without ReLU). */
#define BN_FOR_EACH_TERMS(CASE)                                                    \
    CASE(BN_USE_X) CASE(BN_USE_X | BN_RELU_CLAMP) CASE(BN_USE_X | BN_USE_DY)       \
    CASE(BN_USE_X | BN_USE_DY | BN_RELU_MASK) CASE(BN_USE_DY) CASE(BN_USE_DY | BN_RELU_MASK)

typedef struct {
    /* sum of x */
    double (*sum)(const void *x, int64_t rows, int64_t width, int64_t stride);
    /* sum of dy' and of dy' * (x - mean), dy' masked by the forward's ReLU when relu_mask */
    void (*grad_sums)(const void *x, const void *dy, int64_t rows, int64_t width, int64_t stride,
                      const bn_coefs *k, int relu_mask, double *sum_dy, double *sum_dy_xmu);
    /* sum of d = x - shift and of d^2 (the centred sums when shift is the mean) */
    void (*shifted_sums)(const void *x, int64_t rows, int64_t width, int64_t stride, double shift, double *sum_d,
                         double *sum_d2);
    /* sum_d, sum_d2 and sum_dy, sum_dy_xmu as shifted_sums and grad_sums compute
     * them, accumulated in BN_COMPUTE lanes instead of double: each lane sums at most
     * BN_STRETCH values before it is folded into a double (docs/numerics.md gives the
     * error bound). NULL where BN_COMPUTE is double. A float lane can overflow where
     * a double would not: the schedules redo a block with non-finite results (and
     * moments whose shift lies too far from the mean) with the double loops. */
    void (*lane_shifted_sums)(const void *x, int64_t rows, int64_t width, int64_t stride, double shift,
                              double *sum_d, double *sum_d2);
    void (*lane_grad_sums)(const void *x, const void *dy, int64_t rows, int64_t width, int64_t stride,
                           const bn_coefs *k, int relu_mask, double *sum_dy, double *sum_dy_xmu);
    /* out from x and dy (see bn_coefs); stream: write whole cache lines with
     * non-temporal stores */
    void (*output)(const void *x, const void *dy, void *out, int64_t rows, int64_t width, int64_t stride,
                   const bn_coefs *k, int terms, int stream);
    /* rows first .. first + count of a whole (N, C, width) array, row q of channel
     * q % channels, with the coefficient vectors of cl_set_coefs */
    void (*output_rows)(const void *x, const void *dy, void *out, int64_t first, int64_t count, int64_t width,
                        int64_t channels, const void *cl_coefs, int terms, int stream);

    /* Channels-last blocks: `rows` rows of `channels` contiguous values; the
     * results are vectors over channels. */
    void (*cl_sum)(const void *x, int64_t rows, int64_t channels, double *sum);
    void (*cl_shifted_sums)(const void *x, int64_t rows, int64_t channels, const double *shift, double *sum_d,
                            double *sum_d2);
    /* the coefficients of channels c0 .. c1 into `cl_coefs` (BN_CL_COEFS vectors of
     * `channels`), from the vector of means and the vectors `coef` of k_dy, k_xmu,
     * k_const, relu_scale and relu_shift (bn_coefs' order) over `channels` */
    void (*cl_set_coefs)(const double *mean, const double *coef, int64_t c0, int64_t c1, int64_t channels,
                         void *cl_coefs);
    void (*cl_grad_sums)(const void *x, const void *dy, int64_t rows, int64_t channels, const double *mean,
                         const void *cl_coefs, int relu_mask, double *sum_dy, double *sum_dy_xmu);
    /* the float-lane variants of cl_shifted_sums and cl_grad_sums (see lane_shifted_sums) */
    void (*cl_lane_shifted_sums)(const void *x, int64_t rows, int64_t channels, const double *shift, double *sum_d,
                                 double *sum_d2);
    void (*cl_lane_grad_sums)(const void *x, const void *dy, int64_t rows, int64_t channels, const double *mean,
                              const void *cl_coefs, int relu_mask, double *sum_dy, double *sum_dy_xmu);
    void (*cl_output)(const void *x, const void *dy, void *out, int64_t rows, int64_t channels, const void *cl_coefs,
                      int terms, int stream);
} bn_block_ops;

/* Index by bn_dtype; the float16 entry is all NULL where the compiler lacks _Float16. */
extern const bn_block_ops bn_ops_baseline[BN_DTYPE_COUNT];
#if defined(BN_HAVE_X86_LEVELS)
extern const bn_block_ops bn_ops_avx2[BN_DTYPE_COUNT];
extern const bn_block_ops bn_ops_avx512[BN_DTYPE_COUNT];
#endif

#endif
