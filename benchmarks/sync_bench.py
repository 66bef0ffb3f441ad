"""SyncBatchNorm over 2 MPI ranks against one process, at equal total cores.

    python benchmarks/sync_bench.py [--shape 32x256x56x56] [--repeat 7] [--rounds 2]

Times forward + backward (training mode, float32, NCHW) of
  - one process with 2 threads (bnorm.BatchNorm2d) on the whole batch, and
  - `mpiexec -n 2`, 1 thread per rank (bnorm.SyncBatchNorm) on half the batch each,
and the time the ranks spend in SyncBatchNorm's all-gathers (which includes waiting
for the slower rank). Each round runs the single process, then the two ranks, each in
a fresh process, `repeat` steps after a warm-up; figures are medians of wall-clock
times over all rounds. Every step of the ranks starts at a barrier and counts as long
as its slower rank. Target (issue 13): sync forward + backward within 1.3x of the
single process. Wall-clock figures on a shared machine are noisy: compare rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve()


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("x"))


def single(shape: tuple[int, ...], repeat: int) -> dict[str, list[float]]:
    import bnorm

    bnorm.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    bn = bnorm.BatchNorm2d(shape[1])
    times: dict[str, list[float]] = {"forward": [], "backward": []}
    for i in range(repeat + 2):
        t0 = time.perf_counter()
        bn(x)
        t1 = time.perf_counter()
        bn.backward(dy)
        t2 = time.perf_counter()
        if i >= 2:  # warm-up: page faults of the first outputs, thread start
            times["forward"].append(t1 - t0)
            times["backward"].append(t2 - t1)
    return times


class TimedComm:
    """The communicator with the time spent in allgather added up."""

    def __init__(self, comm: Any) -> None:
        self.comm, self.seconds = comm, 0.0

    def allgather(self, value: Any) -> Any:
        t = time.perf_counter()
        result = self.comm.allgather(value)
        self.seconds += time.perf_counter() - t
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.comm, name)


def ranks(shape: tuple[int, ...], repeat: int) -> dict[str, list[float]] | None:
    from mpi4py import MPI

    import bnorm

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    part = (shape[0] // size, *shape[1:])
    rng = np.random.default_rng(1 + rank)
    x = rng.standard_normal(part, dtype=np.float32)
    dy = rng.standard_normal(part, dtype=np.float32)
    bn = bnorm.SyncBatchNorm(shape[1], comm=comm)
    timed = TimedComm(comm)
    bn._comm = timed  # type: ignore[assignment]
    times: dict[str, list[float]] = {"forward": [], "backward": [], "comm forward": [], "comm backward": []}
    for i in range(repeat + 2):
        comm.Barrier()
        timed.seconds = 0.0
        t0 = time.perf_counter()
        bn(x)
        t1 = time.perf_counter()
        comm_forward, timed.seconds = timed.seconds, 0.0
        bn.backward(dy)
        t2 = time.perf_counter()
        step = np.array([t1 - t0, t2 - t1, comm_forward, timed.seconds])
        comm.Allreduce(MPI.IN_PLACE, step, op=MPI.MAX)  # a step lasts as long as its slower rank
        if i >= 2:
            for key, value in zip(times, step):
                times[key].append(float(value))
    return times if rank == 0 else None


def run_child(role: str, shape: str, repeat: int) -> dict[str, list[float]]:
    env = {**os.environ, "BNORM_NUM_THREADS": "1" if role == "ranks" else "2"}
    command = [sys.executable, str(HERE), "--role", role, "--shape", shape, "--repeat", str(repeat)]
    if role == "ranks":
        mpiexec = pathlib.Path(sys.executable).parent / "mpiexec"
        command = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", "2", *command]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32x256x56x56")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--role", choices=["single", "ranks"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = parse_shape(args.shape)
    if args.role == "single":
        print(json.dumps(single(shape, args.repeat)))
        return
    if args.role == "ranks":
        result = ranks(shape, args.repeat)
        if result is not None:
            print(json.dumps(result))
        return
    merged: dict[str, dict[str, list[float]]] = {"single": {}, "ranks": {}}
    for _ in range(args.rounds):
        for role in ("single", "ranks"):
            for key, values in run_child(role, args.shape, args.repeat).items():
                merged[role].setdefault(key, []).extend(values)
    med = {role: {k: statistics.median(v) for k, v in d.items()} for role, d in merged.items()}
    one = med["single"]["forward"] + med["single"]["backward"]
    two = med["ranks"]["forward"] + med["ranks"]["backward"]
    n = len(merged["single"]["forward"])
    print(f"shape {args.shape} float32 NCHW, medians of {n} steps ({args.rounds} rounds x {args.repeat}), "
          "wall-clock ms (noisy on a shared machine)")
    print(f"  1 process x 2 threads:  forward {1e3 * med['single']['forward']:7.2f}  "
          f"backward {1e3 * med['single']['backward']:7.2f}  total {1e3 * one:7.2f}")
    print(f"  2 ranks x 1 thread:     forward {1e3 * med['ranks']['forward']:7.2f}  "
          f"backward {1e3 * med['ranks']['backward']:7.2f}  total {1e3 * two:7.2f}")
    print(f"  in the all-gathers:     forward {1e3 * med['ranks']['comm forward']:7.2f}  "
          f"backward {1e3 * med['ranks']['comm backward']:7.2f}  (includes waiting for the slower rank)")
    print(f"  sync / single: {two / one:.2f}x (target <= 1.3x): {'PASS' if two <= 1.3 * one else 'MISS'}")


if __name__ == "__main__":
    main()
