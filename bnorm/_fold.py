"""Folding an eval-mode batch norm into the convolution or linear layer before it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ._core import _BatchNorm


def fold(bn: _BatchNorm, weight: npt.ArrayLike,
         bias: npt.ArrayLike | None = None) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Return (weight, bias) of a layer equal to the given layer followed by `bn` in eval mode.

    `weight` is the preceding convolution's or linear layer's weight, its output
    channels along axis 0 (PyTorch's layout: (C_out, C_in, *kernel) or (C_out, C_in));
    `bias` its bias (None for none). With s = gamma / sqrt(running_var + eps):
    weight' = weight * s (per output channel), bias' = (bias - running_mean) * s + beta.
    Computed in float64 and returned in weight's dtype. A fused ReLU is not part of the
    fold: apply max(0, .) after the folded layer.
    """
    if not bn.track_running_stats:
        raise ValueError("fold: the module has track_running_stats=False, so eval mode uses each batch's "
                         "statistics and cannot be folded into fixed weights")
    weight = np.asarray(weight)
    if weight.dtype.kind != "f":
        raise TypeError(f"fold: weight must be a float array, got dtype {weight.dtype}")
    if weight.ndim < 1 or weight.shape[0] != bn.num_features:
        raise ValueError(f"fold: weight's axis 0 must be the {bn.num_features} output channels, "
                         f"got shape {weight.shape}")
    channels = bn.num_features
    if bias is None:
        bias = np.zeros(channels)
    bias = np.asarray(bias, dtype=np.float64)
    if bias.shape != (channels,):
        raise ValueError(f"fold: bias must have shape ({channels},), got {bias.shape}")
    gamma = np.ones(channels) if bn.gamma is None else bn.gamma.astype(np.float64)
    beta = np.zeros(channels) if bn.beta is None else bn.beta.astype(np.float64)
    scale = gamma / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    folded_weight = weight.astype(np.float64) * scale.reshape((channels,) + (1,) * (weight.ndim - 1))
    folded_bias = (bias - bn.running_mean) * scale + beta
    return folded_weight.astype(weight.dtype), folded_bias.astype(weight.dtype)
