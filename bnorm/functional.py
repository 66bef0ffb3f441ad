"""Stateless batch normalisation: the kernels under the module classes.

    y, save_mean, save_invstd = batch_norm(x, running_mean, running_var, weight, bias,
                                           training=True, momentum=0.1, eps=1e-5)
    dx, dweight, dbias = batch_norm_backward(dy, x, save_mean, save_invstd, weight,
                                             training=True)

The signature of batch_norm follows torch.nn.functional.batch_norm; it also returns
the statistics it used (float64), which batch_norm_backward takes.

The split phases normalise a batch split over processes as one batch (see
docs/sync.rst; bnorm.SyncBatchNorm drives them over MPI):

    moments = batch_norm_stats(x_part)                            # (3, C) float64
    mean, invstd, count = batch_norm_gather_stats_with_counts(np.stack(all_gather(moments)))
    y_part = batch_norm_elemt(x_part, mean, invstd, weight, bias)
    sums = sum(all_gather(batch_norm_backward_reduce(dy_part, x_part, mean, invstd)))
    dx_part = batch_norm_backward_elemt(dy_part, x_part, mean, invstd, sums, count, weight)
"""
from ._core import (
    batch_norm,
    batch_norm_backward,
    batch_norm_backward_elemt,
    batch_norm_backward_reduce,
    batch_norm_elemt,
    batch_norm_gather_stats_with_counts,
    batch_norm_stats,
)

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_stats",
    "batch_norm_gather_stats_with_counts",
    "batch_norm_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
]
