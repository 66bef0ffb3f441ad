"""Run under mpiexec by tests/test_sync_mpi.py: every rank checks bnorm.SyncBatchNorm.

    mpiexec -n P python tests/mpi/sync_worker.py SEED EXAMPLES

Rank 0 draws the cases with Hypothesis and broadcasts them; every rank runs every
case on its part of the batch and compares its results with single-process bnorm
and with torch in float64 on the whole batch (the parts concatenated in rank order;
a float32 case of 1e4 + N(0, 1) is always among them), and the running statistics of every rank with each other, bit for bit. Failures are
collected rather than raised, so that no rank leaves a collective the others are
in; at the end every rank's failures are printed and the exit status is 1 if any.
Rank 0 prints the largest differences per dtype as one JSON line ("max-diffs: ...").
"""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from mpi4py import MPI

import bnorm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
failures: list[str] = []
# largest |difference| / (1 + |expected|) per (dtype, quantity, against)
max_diffs: dict[str, float] = {}

MODULES = {2: bnorm.BatchNorm1d, 3: bnorm.BatchNorm1d, 4: bnorm.BatchNorm2d, 5: bnorm.BatchNorm3d}
# Allowed |difference| / (1 + |expected|): a few roundings of the dtype (float16
# data has float32 parameters and statistics), plus float64 statistics merged in
# another order.
UNIT = {"float16": 2.0**-11, "float32": 2.0**-24, "float64": 2.0**-53}


@dataclasses.dataclass
class Case:
    ndim: int
    channels: int
    spatial: tuple[int, ...]
    sizes: list[int]
    dtype: str
    channels_last: bool
    affine: bool
    bias: bool
    track: bool
    momentum: float | None
    activation: str | None
    eps: float
    offset: float
    data_seed: int


@st.composite
def cases(draw: Any) -> Case:
    ndim = draw(st.integers(2, 5))
    dtype = draw(st.sampled_from(["float16", "float32", "float64"]))
    return Case(
        ndim=ndim,
        channels=draw(st.integers(1, 4)),
        spatial=tuple(draw(st.lists(st.integers(1, 4), min_size=ndim - 2, max_size=ndim - 2))),
        # uneven, with empty ranks; at least two values in the whole batch
        sizes=draw(st.lists(st.integers(0, 4), min_size=size, max_size=size).filter(lambda s: sum(s) >= 2)),
        dtype=dtype,
        channels_last=ndim >= 3 and draw(st.booleans()),
        affine=draw(st.booleans()),
        bias=draw(st.booleans()),
        track=draw(st.booleans()),
        momentum=draw(st.sampled_from([0.1, None, 0.7])),
        activation=draw(st.sampled_from([None, "relu"])),
        eps=draw(st.sampled_from([1e-5, 1e-3])),
        offset=draw(st.sampled_from([0.0, 1e4])) if dtype == "float32" else 0.0,
        data_seed=draw(st.integers(0, 2**32 - 1)),
    )


def draw_cases(hypothesis_seed: int, examples: int) -> list[Case]:
    drawn: list[Case] = []

    @seed(hypothesis_seed)
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    return drawn


def note(key: str, actual: Any, expected: Any, tol_units: float, dtype: str, what: str) -> None:
    """Records the scaled difference; a failure when above tol_units roundings."""
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        failures.append(f"rank {rank}: {what} {key}: shape {a.shape} != {e.shape}")
        return
    if a.size == 0:
        return
    both_nan = np.isnan(a) & np.isnan(e)
    scaled = np.where(both_nan, 0.0, np.abs(a - e) / (1 + np.abs(e)))
    worst = float(np.nanmax(np.where(np.isnan(scaled), np.inf, scaled)))
    name = f"{dtype} {key} vs {what}"
    max_diffs[name] = max(max_diffs.get(name, 0.0), worst)
    limit = tol_units * UNIT[dtype] + 1e-12
    if not worst <= limit:
        failures.append(f"rank {rank}: {name}: scaled difference {worst:.3g} > {limit:.3g}")


def part_of(whole: np.ndarray, case: Case) -> np.ndarray:
    start = sum(case.sizes[:rank])
    part = whole[start : start + case.sizes[rank]]
    if case.channels_last:  # (N, C, *spatial) indexing over (N, *spatial, C) memory
        part = np.moveaxis(np.ascontiguousarray(np.moveaxis(part, 1, -1)), -1, 1)
    return part


def run_case(case: Case, steps: int = 2) -> None:
    rng = np.random.default_rng(case.data_seed)
    dtype = np.dtype(case.dtype)
    pdt = np.dtype(np.float32) if dtype == np.float16 else dtype
    C, N = case.channels, sum(case.sizes)
    shape = (N, C, *case.spatial)
    options = dict(eps=case.eps, momentum=case.momentum, affine=case.affine,
                   track_running_stats=case.track, dtype=dtype, activation=case.activation)
    sync = bnorm.SyncBatchNorm(C, **options, bias=case.bias, comm=comm)
    single = MODULES[case.ndim](C, **options, bias=case.bias)
    gamma = (1 + 0.5 * rng.standard_normal(C)).astype(pdt)
    beta = (0.5 * rng.standard_normal(C)).astype(pdt)
    if case.affine:
        sync.gamma = single.gamma = gamma
        if case.bias:
            sync.beta = single.beta = beta
    t_mean = torch.zeros(C, dtype=torch.float64) if case.track else None
    t_var = torch.ones(C, dtype=torch.float64) if case.track else None
    for step in range(steps + 1):
        training = step < steps
        if not training:
            sync.eval(), single.eval()
            if case.track:  # stored in the parameters' dtype, as the modules (and torch's) store them
                t_mean, t_var = (torch.tensor(t.numpy().astype(pdt).astype(np.float64)) for t in (t_mean, t_var))
        x = (case.offset + rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y = sync(part_of(x, case))
        dx = sync.backward(part_of(dy, case))
        y1 = single(x)
        dx1 = single.backward(dy)
        start = sum(case.sizes[:rank])
        mine = slice(start, start + case.sizes[rank])
        # torch in float64 on the whole batch
        tx = torch.tensor(x.astype(np.float64), requires_grad=True)
        tw = torch.tensor(gamma.astype(np.float64), requires_grad=True) if case.affine else None
        tb = torch.tensor(beta.astype(np.float64), requires_grad=True) if case.affine and case.bias else None
        batch_stats = training or not case.track
        momentum = case.momentum
        if momentum is None:
            momentum = 1.0 / single.num_batches_tracked if case.track and single.num_batches_tracked else 0.0
        pre = torch.nn.functional.batch_norm(tx, t_mean, t_var, tw, tb, training=batch_stats,
                                             momentum=momentum, eps=case.eps)
        ty = torch.relu(pre) if case.activation == "relu" else pre
        ty.backward(torch.tensor(dy.astype(np.float64)))
        # near ReLU's kink, statistics rounded otherwise may put an element on the other side
        keep = np.abs(pre.detach().numpy()[mine]) > 1e-2
        dx, dx1, dx_torch = (np.asarray(d, np.float64)[keep] for d in (dx, dx1[mine], tx.grad.numpy()[mine]))
        note("y", y, y1[mine], 8, case.dtype, "single-process")
        note("dx", dx, dx1, 64, case.dtype, "single-process")
        note("y", y, ty.detach().numpy()[mine], 16, case.dtype, "torch float64")
        note("dx", dx, dx_torch, 64, case.dtype, "torch float64")
        if case.affine:
            total = np.asarray(sync.grad_gamma, np.float64).copy()
            comm.Allreduce(MPI.IN_PLACE, total)
            note("grad_gamma", total, single.grad_gamma, 16 * N, case.dtype, "single-process")
        if case.track:
            for name, t_stat in (("running_mean", t_mean), ("running_var", t_var)):
                mine_stat = getattr(sync, name)
                note(name, mine_stat, getattr(single, name), 8, case.dtype, "single-process")
                note(name, mine_stat, t_stat.numpy(), 8, case.dtype, "torch float64")
                if len(set(comm.allgather(mine_stat.tobytes()))) != 1:
                    failures.append(f"rank {rank}: {name} differs between ranks in {case}")
            if sync.num_batches_tracked != single.num_batches_tracked:
                failures.append(f"rank {rank}: num_batches_tracked {sync.num_batches_tracked} != "
                                f"{single.num_batches_tracked}")


def expect_error(kind: type[BaseException], words: list[str], call: Any) -> None:
    try:
        call()
    except kind as error:
        missing = [w for w in words if w not in str(error)]
        if missing:
            failures.append(f"rank {rank}: {kind.__name__} without {missing}: {error}")
    else:
        failures.append(f"rank {rank}: expected {kind.__name__} ({words})")


def check_errors() -> None:
    """Mismatches raise on every rank, naming every rank; the module keeps working."""
    bn = bnorm.SyncBatchNorm(3)
    good = np.ones((2, 3, 4), np.float32) * np.arange(4, dtype=np.float32)
    channels = np.zeros((2, 4, 4), np.float32) if rank == 0 else good
    expect_error(ValueError, ["rank 0", "4 channels", f"rank {size - 1}", "3 channels"], lambda: bn(channels))
    dtype = good.astype(np.float64) if rank == size - 1 else good
    expect_error(ValueError, ["float64", "float32"], lambda: bn(dtype))
    ndim = good[..., None] if rank == 0 else good
    expect_error(ValueError, ["4 dimensions", "3 dimensions"], lambda: bn(ndim))
    not_array = [[1.0]] if rank == 0 else good
    expect_error(ValueError, ["rank 0: x is not a float16, float32 or float64 numpy array"], lambda: bn(not_array))
    # one value per channel in the whole batch: PyTorch's error everywhere; one on a rank is fine
    one = np.ones((1 if rank == 0 else 0, 3), np.float32)
    expect_error(ValueError, ["Expected more than 1 value per channel when training"], lambda: bn(one))
    single_value = np.arange(3 * (1 if rank == 0 else 2), dtype=np.float32).reshape(-1, 3)
    if bn(single_value).shape != single_value.shape:
        failures.append(f"rank {rank}: one value on one rank should be fine")
    y = bn(good)  # still in step after the errors
    dy = good.astype(np.float64) if rank == 0 else np.ones_like(good)
    expect_error(ValueError, ["rank(s) [0]"], lambda: bn.backward(dy))
    bn.backward(np.ones_like(y))
    expect_error(TypeError, ["intracommunicator"], lambda: bnorm.SyncBatchNorm(3, comm="world"))  # type: ignore[arg-type]
    # out=: usable on every rank, or a ValueError on every rank
    out = np.empty_like(good)
    if bn(good, out=out) is not out or not np.array_equal(out, bn(good)):
        failures.append(f"rank {rank}: forward(out=) did not write out")
    expect_error(ValueError, ["rank 0", "out="], lambda: bn(good, out=good if rank == 0 else None))
    # eval with running statistics communicates nothing: ranks make different numbers of calls
    bn.eval()
    for _ in range(rank + 1):
        bn.backward(np.ones_like(bn(good)))
    bn.train()
    bn(good)  # and the ranks are still in step


def check_convert_and_subcommunicator() -> None:
    rng = np.random.default_rng(7)
    single = bnorm.BatchNorm2d(3, momentum=None, activation="relu", dtype=np.float64)
    single.gamma = rng.standard_normal(3)
    single(rng.standard_normal((4, 3, 2, 2)))  # some state to carry over
    sync = bnorm.SyncBatchNorm.convert(single, comm=comm)
    if sync.state_dict().keys() != single.state_dict().keys() or not all(
        np.array_equal(a, b) for a, b in zip(sync.state_dict().values(), single.state_dict().values())
    ):
        failures.append(f"rank {rank}: convert did not keep the state")
    if (sync.momentum, sync.activation, sync.dtype, sync.training) != (None, "relu", np.float64, True):
        failures.append(f"rank {rank}: convert did not keep the options: {sync!r}")
    loaded = bnorm.SyncBatchNorm(3, dtype=np.float64, comm=comm)
    loaded.load_state_dict(single.state_dict())
    if not all(np.array_equal(a, b) for a, b in zip(loaded.state_dict().values(), single.state_dict().values())):
        failures.append(f"rank {rank}: load_state_dict did not load the state")
    # a sub-communicator: even and odd ranks normalise their own batches
    color = rank % 2
    sub = comm.Split(color, rank)
    group = bnorm.SyncBatchNorm.convert(single, comm=sub)
    members = [r for r in range(size) if r % 2 == color]
    parts = [np.random.default_rng(100 + r).standard_normal((1 + r, 3, 2, 2)) for r in members]
    y = group(parts[members.index(rank)])
    reference = single.__copy__()
    y1 = reference(np.concatenate(parts))
    start = sum(len(p) for p in parts[: members.index(rank)])
    note("y", y, y1[start : start + len(y)], 8, "float64", "single-process (sub-communicator)")
    note("running_var", group.running_var, reference.running_var, 8, "float64", "single-process (sub-communicator)")
    sub.Free()
    # a communicator of one rank: the single-process module's bits
    alone = comm.Split(rank, 0)
    for dtype in (np.float16, np.float32, np.float64):
        x = (3 + rng.standard_normal((5, 3, 4, 2))).astype(dtype)
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1) if rank % 2 else x
        dy = rng.standard_normal(x.shape).astype(dtype)
        one = bnorm.SyncBatchNorm(3, dtype=dtype, momentum=None, activation="relu", comm=alone)
        plain = bnorm.BatchNorm2d(3, dtype=dtype, momentum=None, activation="relu")
        for _ in range(2):
            same = [np.array_equal(one(x), plain(x)), np.array_equal(one.backward(dy), plain.backward(dy))]
            same += [np.array_equal(getattr(one, a), getattr(plain, a))
                     for a in ("grad_gamma", "grad_beta", "running_mean", "running_var")]
            if not all(same):
                failures.append(f"rank {rank}: one rank alone differs from BatchNorm2d ({dtype.__name__}): {same}")
    alone.Free()


def check_unequal_spatial() -> None:
    """Spatial sizes may differ between ranks: against a float64 reference of all values."""
    rng = np.random.default_rng(11)
    shapes = [(r % 2 + 1, 2, 3 + r, 2) for r in range(size)]
    parts = [rng.standard_normal(s) for s in shapes]
    dys = [rng.standard_normal(s) for s in shapes]
    bn = bnorm.SyncBatchNorm(2, dtype=np.float64, affine=False)
    y, dx = bn(parts[rank]), bn.backward(dys[rank])
    flat = np.concatenate([np.moveaxis(p, 1, 0).reshape(2, -1) for p in parts], axis=1)
    flat_dy = np.concatenate([np.moveaxis(d, 1, 0).reshape(2, -1) for d in dys], axis=1)
    mean, var = flat.mean(axis=1), flat.var(axis=1)
    invstd = 1 / np.sqrt(var + bn.eps)
    xhat = (parts[rank] - mean[:, None, None]) * invstd[:, None, None]
    mean_dy = flat_dy.mean(axis=1)
    mean_dy_xhat = (flat_dy * (flat - mean[:, None]) * invstd[:, None]).mean(axis=1)
    dx_ref = invstd[:, None, None] * (dys[rank] - mean_dy[:, None, None] - xhat * mean_dy_xhat[:, None, None])
    note("y", y, xhat, 8, "float64", "float64 reference (unequal spatial sizes)")
    note("dx", dx, dx_ref, 64, "float64", "float64 reference (unequal spatial sizes)")
    n = flat.shape[1]
    note("running_var", bn.running_var, 0.9 + 0.1 * var * n / (n - 1), 8, "float64",
         "float64 reference (unequal spatial sizes)")


def main() -> None:
    hypothesis_seed, examples = int(sys.argv[1]), int(sys.argv[2])
    drawn = draw_cases(hypothesis_seed, examples) if rank == 0 else None
    for case in comm.bcast(drawn):
        before = len(failures)
        run_case(case)
        if len(failures) > before:
            failures.append(f"rank {rank}: in {case}")
    # always one large-offset case: float32 1e4 + N(0, 1), uneven parts and an empty rank
    large = Case(ndim=4, channels=3, spatial=(6, 5), sizes=[(r * 3) % 7 for r in range(size)], dtype="float32",
                 channels_last=False, affine=True, bias=True, track=True, momentum=0.1, activation=None, eps=1e-5,
                 offset=1e4, data_seed=3)
    run_case(large)
    check_errors()
    check_convert_and_subcommunicator()
    check_unequal_spatial()
    everyone = comm.gather(failures)
    diffs = comm.gather(max_diffs)
    if rank == 0:
        merged: dict[str, float] = {}
        for d in diffs:
            for k, v in d.items():
                merged[k] = max(merged.get(k, 0.0), v)
        print("max-diffs: " + json.dumps(dict(sorted(merged.items()))), flush=True)
        problems = [f for fs in everyone for f in fs]  # type: ignore[union-attr]
        for f in problems[:50]:
            print("FAILED", f, flush=True)
        print(f"sync_worker: {size} ranks, {examples} cases, {len(problems)} failures", flush=True)
    failed = comm.bcast(any(everyone) if rank == 0 else None)
    sys.exit(1 if failed else 0)

if __name__ == "__main__":
    main()
