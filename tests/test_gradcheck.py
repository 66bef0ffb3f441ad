"""The module's backward against central finite differences of its forward (float64).

For L = sum(w * bn(x)) with random w, bn.backward(w) must be dL/dx and set
grad_gamma = dL/dgamma, grad_beta = dL/dbeta.  The numerical derivatives
perturb x, gamma and beta in place (gamma and beta through the module's own
arrays, which the contract makes modifiable in place).
"""

import numpy as np
import pytest

import bnorm

CLASSES = {2: bnorm.BatchNorm1d, 3: bnorm.BatchNorm1d, 4: bnorm.BatchNorm2d, 5: bnorm.BatchNorm3d}
SHAPES = [(7, 2), (3, 2, 4), (2, 3, 3, 2), (2, 2, 2, 3, 2)]
MODES = {
    "train": {"training": True},
    "eval": {"training": False},  # running statistics: constants
    "eval-untracked": {"training": False, "track_running_stats": False},  # batch statistics again
}


def make_module(shape, rng, mode, affine=True):
    options = dict(MODES[mode])
    training = options.pop("training")
    bn = CLASSES[len(shape)](shape[1], eps=1e-3, affine=affine, dtype=np.float64, **options)
    if affine:
        bn.gamma[...] = rng.uniform(-2.0, 2.0, shape[1])
        bn.beta[...] = rng.normal(size=shape[1])
    if bn.track_running_stats:
        bn.running_mean[...] = rng.normal(size=shape[1])
        bn.running_var[...] = rng.uniform(0.5, 2.0, shape[1])
    return bn.train(training)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}D")
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
def test_backward_matches_finite_differences(checks, rng, shape, mode, affine):
    bn = make_module(shape, rng, mode, affine)
    x = 0.5 + rng.standard_normal(shape)
    w = rng.standard_normal(shape)

    def loss():
        return float(np.sum(w * bn(x)))

    bn(x)
    dx = bn.backward(w)
    analytic = {"dx": (dx, x)}
    if affine:
        analytic["dgamma"] = (bn.grad_gamma.copy(), bn.gamma)
        analytic["dbeta"] = (bn.grad_beta.copy(), bn.beta)
    for name, (gradient, wrt) in analytic.items():
        checks.assert_gradient_close(gradient, checks.numerical_gradient(loss, wrt), what=name)
