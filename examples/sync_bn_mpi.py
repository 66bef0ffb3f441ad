"""Data-parallel training with bnorm.SyncBatchNorm over MPI, beside one process.

    mpiexec -n 2 python examples/sync_bn_mpi.py [--steps 200]

The network of batchnorm_paper_figure1.ipynb (examples/mlp.py: three sigmoid layers of
100 units with batch norm, on scikit-learn's 8x8 digits) trained with SGD on batches of
60. Each rank holds an uneven part of every batch; its BatchNorm1d layers are
SyncBatchNorm, so they normalise with the statistics of the whole batch, and the
gradients of the weights (and of gamma and beta, which SyncBatchNorm leaves as each
rank's contribution) are summed with one Allreduce each. Rank 0 also trains the same
network in one process on the whole batches and prints both loss curves; the script
asserts that they agree to float64 rounding.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from mpi4py import MPI
from sklearn.datasets import load_digits

import bnorm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from mlp import MLP, softmax_cross_entropy  # noqa: E402  (the notebook's network)

BATCH, LR, SEED = 60, 0.5, 0


def data() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    x = digits.data - digits.data.mean(axis=0)
    return x / (x.std(axis=0) + 1e-8), digits.target


def parallel_model(comm: MPI.Intracomm) -> MLP:
    model = MLP(64, (100, 100, 100), 10, batch_norm=True, seed=SEED)
    model.bn = [bnorm.SyncBatchNorm.convert(bn, comm=comm) for bn in model.bn]
    return model


def step(model: MLP, x: np.ndarray, y: np.ndarray, batch: int, comm: MPI.Intracomm | None) -> float:
    """One SGD step on this rank's part (x, y) of a batch of `batch` samples; the loss of
    the whole batch. comm None: one process, the part is the batch."""
    logits = model.forward(x)
    loss, dlogits = softmax_cross_entropy(logits, y) if len(y) else (0.0, np.zeros_like(logits))
    share = len(y) / batch  # the mean over the whole batch: this part's weight
    loss, dlogits = loss * share, dlogits * share
    model.backward(dlogits)
    if comm is not None:
        loss = comm.allreduce(loss)
        gradients = [g for g in model.dW + model.db if g is not None]
        gradients += [g for bn in model.bn for g in (bn.grad_gamma, bn.grad_beta)]
        for g in gradients:  # each rank's contribution -> the whole batch's gradient
            comm.Allreduce(MPI.IN_PLACE, g)
    model.sgd_step(LR)
    return float(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    steps = parser.parse_args().steps
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    x, y = data()
    order = np.random.default_rng(SEED).permutation(len(x))
    # uneven parts: rank r gets a share growing with r (rank 0 the smallest)
    weights = np.arange(1, size + 1)
    edges = np.concatenate([[0], np.cumsum(weights)]) * BATCH // weights.sum()
    model = parallel_model(comm)
    single = MLP(64, (100, 100, 100), 10, batch_norm=True, seed=SEED) if rank == 0 else None
    if rank == 0:
        print(f"{size} ranks, parts of each batch of {BATCH}: {np.diff(edges).tolist()}")
        print(f"{'step':>5} {'loss, ' + str(size) + ' ranks':>18} {'loss, 1 process':>18} {'difference':>11}")
    worst = 0.0
    batches = len(x) // BATCH
    for s in range(steps):
        idx = order[(s % batches) * BATCH : (s % batches + 1) * BATCH]
        mine = idx[edges[rank] : edges[rank + 1]]
        loss = step(model, x[mine], y[mine], BATCH, comm)
        if single is not None:
            reference = step(single, x[idx], y[idx], BATCH, None)
            worst = max(worst, abs(loss - reference))
            if s % max(1, steps // 10) == 0 or s == steps - 1:
                print(f"{s:>5} {loss:>18.12f} {reference:>18.12f} {loss - reference:>11.1e}", flush=True)
    if rank == 0:
        assert worst < 1e-9, f"the data-parallel loss left the single-process one by {worst:.3g}"
        print(f"largest difference of the loss curves: {worst:.2g} (float64): equal to rounding")


if __name__ == "__main__":
    main()
