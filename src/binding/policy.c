/*
 * PyTorch's train/eval rules for the statistics of a forward, in one place for the
 * module type (batchnorm_type.c) and the functional layer (functional.c):
 *   - batch statistics when training or without running statistics, else the running ones;
 *   - a training forward with running statistics counts the batch and blends the batch
 *     mean and unbiased variance into them with weight momentum, or 1 / num_batches_tracked
 *     for momentum=None (a cumulative average).
 */
#include <limits.h>
#include <math.h>

#include "binding.h"

int bn_uses_batch_stats(int training, int has_running_stats) { return training || !has_running_stats; }

bn_status bn_run_forward(const bn_forward_call *call)
{
    const int has_running = call->running_mean != NULL;
    if (!bn_uses_batch_stats(call->training, has_running)) {
        bn_stats_from_running(call->dtype, call->dims.c, call->running_mean, call->running_var, call->eps, call->mean,
                              call->invstd);
        return bn_forward_eval(call->dtype, call->dims, call->x, call->y, call->gamma, call->beta, call->mean,
                               call->invstd, call->relu);
    }
    const bn_status status = bn_forward_train(call->dtype, call->dims, call->x, call->y, call->gamma, call->beta,
                                              call->eps, call->relu, call->mean, call->var, call->invstd);
    if (status != BN_OK || !call->training || !has_running)
        return status;
    long long *tracked = call->num_batches_tracked;
    if (tracked != NULL && *tracked < LLONG_MAX)
        (*tracked)++;
    const int64_t count = call->dims.n * call->dims.s;
    if (count > 0) {
        const double momentum = isnan(call->momentum) ? 1.0 / (double)*tracked : call->momentum;
        bn_update_running(call->dtype, call->dims.c, call->running_mean, call->running_var, call->mean, call->var,
                          count, momentum);
    }
    return status;
}
