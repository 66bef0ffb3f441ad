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
 * merged in block order. All accumulation is in double precision.
 */
#ifndef BN_KERNELS_H
#define BN_KERNELS_H

#include <stdint.h>

/* The dtype of the data (x, y, dy, dx) and of the parameters that go with it: one
 * table, dtypes.h. Data of every dtype is computed in double where it accumulates. */
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

#endif
