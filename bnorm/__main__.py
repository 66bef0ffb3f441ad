"""python -m bnorm: show the configuration, then run a training step on a realistic
batch and check it against the float64 reference (exit status 1 if a check fails)."""
import sys
import time
from typing import Callable

import numpy as np

import bnorm
from bnorm.testing import assert_batch_norm_close, reference

SHAPE = (32, 64, 56, 56)  # the input of a ResNet-50 stage-1 batch norm


def median_ms(run: Callable[[], object], repeats: int = 7) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> int:
    bnorm.show_config()
    rng = np.random.default_rng(0)
    channels = SHAPE[1]
    # An offset of 100 makes naive float32 variance formulas visibly wrong.
    x = (100.0 + 2.0 * rng.standard_normal(SHAPE)).astype(np.float32)
    dy = rng.standard_normal(SHAPE).astype(np.float32)
    bn = bnorm.BatchNorm2d(channels)
    bn.gamma[...] = rng.uniform(0.5, 1.5, channels)
    bn.beta[...] = rng.uniform(-0.5, 0.5, channels)

    y = bn(x)
    dx = bn.backward(dy)
    y_ref = reference.forward(x, bn.gamma, bn.beta)
    dx_ref, dgamma_ref, dbeta_ref = reference.backward(dy, x, bn.gamma)
    print(f"\ntraining step on float32 {SHAPE}, checked against the float64 reference:")
    print(f"  max |y  - ref|            {np.max(np.abs(y - y_ref)):.2e}")
    print(f"  max |dx - ref| / max|ref| {np.max(np.abs(dx - dx_ref)) / np.max(np.abs(dx_ref)):.2e}")
    print(f"  max |dgamma - ref| / max|ref| {np.max(np.abs(bn.grad_gamma - dgamma_ref)) / np.max(np.abs(dgamma_ref)):.2e}")
    print(f"  running_mean[:3] {np.array2string(bn.running_mean[:3], precision=4)}"
          f" (0.1 x the batch mean of about 100)")
    # The bounds for well-conditioned data: no x is passed, so the offset of 100 earns
    # no extra tolerance, and bnorm meets them anyway.
    M = x.size // channels
    try:
        assert_batch_norm_close(y, y_ref, np.float32, M, what="output")
        assert_batch_norm_close(dx, dx_ref, np.float32, M, what="grad_input")
        assert_batch_norm_close(bn.grad_gamma, dgamma_ref, np.float32, M, what="grad_weight")
        assert_batch_norm_close(bn.grad_beta, dbeta_ref, np.float32, M, what="grad_bias")
    except AssertionError as failure:
        print(f"\nCHECK FAILED: {failure}")
        return 1
    print("  all within bnorm.testing.assert_batch_norm_close's bounds for well-conditioned data")

    out = np.empty_like(x)
    forward_ms = median_ms(lambda: bn(x, out=out))
    backward_ms = median_ms(lambda: bn.backward(dy, out=out))
    copy_ms = median_ms(lambda: np.copyto(out, x))
    print(f"\ntimes (median of 7, {bnorm.get_num_threads()} threads): forward {forward_ms:.2f} ms, "
          f"backward {backward_ms:.2f} ms, single-threaded np.copyto of x {copy_ms:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
