/*
 * bnorm kernels: batch normalisation over contiguous (N, C, S) arrays.
 *
 * Plain C11, no Python: the binding layer (module.c, batchnorm_type.c) validates
 * arguments, allocates arrays and calls these functions with the GIL released.
 * Element (n, c, s), S being the product of the spatial sizes (1 for (N, C) input),
 * lives at x[(n * C + c) * S + s] (channel-major, NCHW), or at x[(n * S + s) * C + c]
 * when channels_last is set (NHWC). Outputs have the layout of the inputs.
 *
 * Every result is independent of the thread count: each channel is cut into blocks
 * whose boundaries depend only on the shape, and per-block partial results are
 * merged in block order. float64 data accumulates in double; float32 and float16
 * data in float lanes over stretches of a few values, folded into double, with blocks
 * that would not meet the stated bound redone in double (docs/numerics.md). Blocks
 * and channels merge in double.
 */
#ifndef BN_KERNELS_H
#define BN_KERNELS_H

#include <stdint.h>

/* The dtype of the data (x, y, dy, dx) and of the parameters that go with it: one
 * table, dtypes.h. Statistics and gradient sums are returned in double whatever the
 * dtype; outputs are computed in float for float32 and float16 data. */
#include "dtypes.h"

typedef enum { BN_OK = 0, BN_NO_MEMORY = 1 } bn_status;

typedef struct {
    int64_t n, c, s;
    int channels_last;
} bn_dims;

/* Training forward: batch mean and biased variance per channel, then
 * y = (x - mean) * invstd * gamma + beta, and y = max(0, y) when relu is set.
 * gamma and beta (length C) may be NULL for 1 and 0. Writes mean, var (biased)
 * and invstd (length C). Channels with no elements (N * S == 0) get NaN statistics. */
bn_status bn_forward_train(bn_dtype dtype, bn_dims dims, const void *x, void *y, const void *gamma,
                           const void *beta, double eps, int relu, double *mean, double *var, double *invstd);

/* Forward with given statistics (eval mode). */
bn_status bn_forward_eval(bn_dtype dtype, bn_dims dims, const void *x, void *y, const void *gamma,
                          const void *beta, const double *mean, const double *invstd, int relu);

/* Backward of the forward with the same gamma, beta, statistics and relu.
 * batch_stats != 0: mean/invstd are x's own batch statistics and the gradient
 * flows through them; batch_stats == 0: they are constants (eval mode). With relu,
 * dy is masked where the forward's output was 0. dgamma and dbeta (length C) may be
 * NULL when not wanted. */
bn_status bn_backward(bn_dtype dtype, bn_dims dims, const void *x, const void *dy, void *dx, const void *gamma,
                      const void *beta, const double *mean, const double *invstd, int batch_stats, int relu,
                      void *dgamma, void *dbeta);

/* running <- (1 - momentum) * running + momentum * batch, with the batch variance
 * made unbiased by count / (count - 1). */
void bn_update_running(bn_dtype dtype, int64_t channels, void *running_mean, void *running_var,
                       const double *mean, const double *var, int64_t count, double momentum);

/* mean and invstd = 1 / sqrt(var + eps) in double from running statistics of the dtype. */
void bn_stats_from_running(bn_dtype dtype, int64_t channels, const void *running_mean,
                           const void *running_var, double eps, double *mean, double *invstd);

/* ---- split phases: the training kernels cut where statistics are synchronised ----
 *
 * A batch split into parts (one per process) is normalised as one: each part's
 * moments (bn_local_moments), all parts' moments merged in part order
 * (bn_merge_moments, the same bits wherever it runs), each part's output
 * (bn_forward_eval with the merged statistics); backward: each part's gradient sums
 * (bn_grad_sums), their sum over the parts in part order, each part's dx
 * (bn_backward_from_sums). With a single part every result has the bits of the
 * fused kernels above. */

/* Writes this part's moments per channel to moments (3 * C doubles): count, then
 * mean, then M2 (the centred sum of squares), each a row of C. An empty part has
 * count, mean and M2 0, which the merge skips. */
bn_status bn_local_moments(bn_dtype dtype, bn_dims dims, const void *x, double *moments);

/* Merges `parts` arrays of moments (3 * C doubles each, as bn_local_moments writes
 * them, one after the other) in order with Chan's formula into the count, mean,
 * biased variance and invstd = 1 / sqrt(var + eps) of each channel; NaN statistics
 * where the total count is 0. */
void bn_merge_moments(int64_t parts, int64_t channels, const double *moments, double eps, double *count,
                      double *mean, double *var, double *invstd);

/* This part's sum(dy') and sum(dy' * (x - mean)) per channel, dy' masked where the
 * forward with gamma, beta, mean, invstd and relu output 0. */
bn_status bn_grad_sums(bn_dtype dtype, bn_dims dims, const void *x, const void *dy, const void *gamma,
                       const void *beta, const double *mean, const double *invstd, int relu, double *sum_dy,
                       double *sum_dy_xmu);

/* dx of this part, the statistics being those of the whole batch of `count` values
 * per channel whose gradient sums (over every part) are sum_dy and sum_dy_xmu. */
bn_status bn_backward_from_sums(bn_dtype dtype, bn_dims dims, const void *x, const void *dy, void *dx,
                                const void *gamma, const void *beta, const double *mean, const double *invstd,
                                const double *sum_dy, const double *sum_dy_xmu, int64_t count, int relu);

#endif
