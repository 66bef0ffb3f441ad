"""Stateless batch normalisation: the kernels under the module classes.

    y, save_mean, save_invstd = batch_norm(x, running_mean, running_var, weight, bias,
                                           training=True, momentum=0.1, eps=1e-5)
    dx, dweight, dbias = batch_norm_backward(dy, x, save_mean, save_invstd, weight,
                                             training=True)

The signature of batch_norm follows torch.nn.functional.batch_norm; it also returns
the statistics it used (float64), which batch_norm_backward takes.
"""
from ._core import batch_norm, batch_norm_backward

__all__ = ["batch_norm", "batch_norm_backward"]
