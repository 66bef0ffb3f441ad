"""Benchmark bnorm against PyTorch's CPU kernels, plain NumPy and a memory copy.

    python benchmarks/compare.py [--quick | --smoke] [--threads N] [--no-scaling]
        [--cases resnet-256,small,...] [--repeat R] [--dram-mib M] [--json PATH] [--png PATH]

run from the repository root after `pip install -e ".[test]"` (bnorm, torch and
matplotlib). It refuses to run without bnorm, and writes only the raw results
(benchmarks/results.json, not tracked) unless --png asks for the chart; the
README's chart is `--png benchmarks/results.png`.

For every case (shape, dtype) and operation (training forward, eval forward,
backward after a training forward) all implementations are timed in one
process, interleaved, after a correctness check against torch; with N > 1
threads, bnorm (out=) and the faster torch call are timed again at 1 thread, so
that the table shows both libraries' scaling from 1 to N threads. See
benchmarks/README.md for what exactly is measured and how to read the table.
A benchmark reports: it exits 0 whether targets pass or miss.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _impls  # noqa: E402
import _report  # noqa: E402
from _impls import MODULE_OP, OP_LABELS, OPS, TOLERANCE, TRAFFIC, Problem  # noqa: E402
from _timing import time_interleaved  # noqa: E402


def log(msg: str) -> None:
    """Progress goes to stderr so stdout holds just the report."""
    print(msg, file=sys.stderr, flush=True)


def import_bnorm():
    """bnorm, or None and the reason it cannot be imported: a report without bnorm is refused."""
    try:
        import bnorm
    except Exception as e:  # noqa: BLE001 - any import failure is reported to the user
        return None, f"import bnorm failed: {type(e).__name__}: {e}"
    return bnorm, None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# Fraction of wall time other processes kept a runnable task waiting for a CPU
# above which a run (or a case, marked * in the table) is flagged as unreliable.
CONTENTION_LIMIT = 0.1


def cpu_stall_us() -> int | None:
    """Total microseconds some runnable task waited for a CPU (Linux PSI).

    This process never has more runnable threads than --threads, so stall
    time during the run means other processes competed for the cores.
    """
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", help="comma-separated subset of: " + ", ".join(_impls.CASES_BY_NAME)
                    + "; or custom shapes such as 16x32x8x8:float64 (default: all)")
    ap.add_argument("--quick", action="store_true", help="3 repetitions instead of 11, no extra warm-up call")
    ap.add_argument("--smoke", action="store_true",
                    help=f"check that the script runs, in seconds: the {_impls.SMOKE_CASE!r} case only (unless "
                    "--cases), 1 repetition, no warm-up call; the numbers mean nothing")
    ap.add_argument("--repeat", type=int, help="repetitions per implementation (default 11, --quick 3, --smoke 1)")
    ap.add_argument("--threads", type=int, default=2,
                    help="threads for bnorm, torch and the copy (default 2; NumPy is single-threaded)")
    ap.add_argument("--no-scaling", dest="scaling", action="store_false",
                    help="skip the second timing of bnorm (out=) and the faster torch call at 1 thread")
    ap.add_argument("--dram-mib", type=float, default=_report.DRAM_MIN_BYTES / 2**20,
                    help="outputs of at least this many MiB count as DRAM-sized in the allocating / out= summary "
                    "(default %(default)g: larger than the CI machine's L3)")
    ap.add_argument("--json", type=Path, default=HERE / "results.json", help="raw results (default %(default)s)")
    ap.add_argument("--png", type=Path, help="also write the chart there (needs matplotlib); the README's "
                    "chart is benchmarks/results.png (default: no chart)")
    args = ap.parse_args(argv)
    if args.quick and args.smoke:
        ap.error("--quick and --smoke exclude each other")
    if args.smoke and args.cases is None:
        args.cases = _impls.SMOKE_CASE
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3 if args.quick else 11
    args.warmup = 0 if args.quick or args.smoke else 1  # untimed calls before the (also untimed) inner-loop sizing
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    return args


def check(op: str, impls: list[_impls.Impl], reference: _impls.Impl, dtype) -> tuple[dict, dict]:
    """Run every implementation once and compare it with torch's result.

    Returns ({impl: relative error}, {impl: reason it is excluded from timing}).
    A wrong or failing implementation is not timed: a fast wrong kernel must
    never show up as a result.
    """
    errors, excluded = {}, {}
    ref = reference.outputs(reference.fn())
    for impl in impls:
        if impl is reference or impl.name in _impls.COPY_METHODS:
            continue
        try:
            if impl.setup:
                impl.setup()
            err = _impls.max_rel_error(impl.outputs(impl.fn()), ref)
        except Exception as e:  # noqa: BLE001 - report and carry on with the others
            excluded[impl.name] = f"error: {type(e).__name__}: {e}"
            log(f"    ! {impl.name} {OP_LABELS[op]} raised {type(e).__name__}: {e}")
            continue
        errors[impl.name] = err
        if err > TOLERANCE[dtype]:
            excluded[impl.name] = f"wrong: max relative error {err:.3g} vs {reference.name}"
            log(f"    ! {impl.name} {OP_LABELS[op]} differs from {reference.name}: max relative error "
                f"{err:.3g} > {TOLERANCE[dtype]:g}; not timed")
    return errors, excluded


def set_threads(bnorm, n: int) -> None:
    torch.set_num_threads(n)
    bnorm.set_num_threads(n)


def time_one_thread(bnorm, impls: list[_impls.Impl], names: list[str], args) -> dict:
    """`names` timed again, interleaved, with bnorm and torch at 1 thread (then back to --threads)."""
    fns = {i.name: i.fn for i in impls if i.name in names}
    set_threads(bnorm, 1)
    try:
        return time_interleaved(fns, repeat=args.repeat, warmup=args.warmup)
    finally:
        set_threads(bnorm, args.threads)


def timing_record(t) -> dict:
    return {"median_ms": t.median * 1e3, "min_ms": t.min * 1e3, "number": t.number,
            "samples_ms": [s * 1e3 for s in t.samples]}


def run_op(spec, op: str, impls: list[_impls.Impl], reference: _impls.Impl, args,
           known_wrong: dict | None = None, bnorm=None) -> dict:
    errors, excluded = check(op, impls, reference, spec.dtype)
    excluded.update(known_wrong or {})
    for impl in impls:
        if impl.setup and impl.name not in excluded:
            impl.setup()
    fns = {i.name: i.fn for i in impls if i.name not in excluded}
    timings = time_interleaved(fns, repeat=args.repeat, warmup=args.warmup)
    one_thread = {}
    torch_timed = [n for n in (_impls.TORCH_OUT, _impls.TORCH_ALLOC) if n in timings]
    if bnorm is not None and args.scaling and args.threads > 1 and _impls.BNORM_OUT in timings and torch_timed:
        # the torch call that was faster at --threads, so that 1 -> N is one call's scaling
        fastest_torch = min(torch_timed, key=lambda n: timings[n].median)
        one_thread = time_one_thread(bnorm, impls, [_impls.BNORM_OUT, fastest_torch], args)
    nbytes = int(np.prod(spec.shape)) * spec.dtype.itemsize
    return {
        "case": spec.name, "case_label": spec.label, "shape": list(spec.shape), "dtype": spec.dtype.name,
        "op": op, "group": spec.group, "channels_last": spec.channels_last, "small": spec.small,
        "tensor_bytes": nbytes, "traffic_bytes": TRAFFIC[op] * nbytes,
        "timings": {name: timing_record(t) for name, t in timings.items()},
        "timings_1_thread": {name: timing_record(t) for name, t in one_thread.items()},
        "errors": errors, "excluded": excluded,
    }


def run_case(spec, bnorm, args) -> list[dict]:
    t0, stall0 = time.perf_counter(), cpu_stall_us()
    p = Problem(spec)
    groups = {op: [] for op in OPS}
    builders = [_impls.torch_impls(p), _impls.numpy_impls(p)]
    # bnorm's training forward also updates running statistics: check them
    # once (one step from the same state as torch) and treat a mismatch like
    # a wrong output.
    train_wrong = {}
    try:
        builders.insert(0, _impls.bnorm_impls(bnorm, p))
        err = _impls.bnorm_running_stats_error(bnorm, p)
    except Exception as e:  # noqa: BLE001 - an API mismatch skips bnorm, not the run
        log(f"    ! bnorm failed on this case, skipped: {type(e).__name__}: {e}")
        builders = builders[-2:]
        err = 0.0
    if err > TOLERANCE[spec.dtype]:
        log(f"    ! bnorm running statistics differ from torch: max relative error {err:.3g}; "
            "training forward not timed")
        reason = f"wrong running statistics: max relative error {err:.3g}"
        train_wrong = {_impls.BNORM_OUT: reason, _impls.BNORM_ALLOC: reason}
    for built in builders:
        for op, impls in built.items():
            groups[op] += impls
    copies = _impls.copy_impls(p, args.threads)

    records = []
    for op in OPS:
        log(f"  {OP_LABELS[op]}")
        reference = next(i for i in groups[op] if i.name == _impls.TORCH_ALLOC)
        records.append(run_op(spec, op, groups[op] + copies, reference, args,
                              train_wrong if op == "train_fwd" else None, bnorm))
    if spec.small:
        log(f"  {OP_LABELS[MODULE_OP]}")
        try:
            impls = _impls.module_impls(bnorm, p)
        except Exception as e:  # noqa: BLE001
            log(f"    ! bnorm module failed, skipped: {type(e).__name__}: {e}")
            impls = _impls.module_impls(None, p)
        records.append(run_op(spec, MODULE_OP, impls, impls[0], args))
    elapsed = time.perf_counter() - t0
    stall1 = cpu_stall_us()
    stall = (stall1 - stall0) / 1e6 / elapsed if stall0 is not None and stall1 is not None else None
    for rec in records:
        rec["cpu_stall_fraction"] = stall
    log(f"  ({elapsed:.1f} s" + (f", CPU contention {stall:.0%})" if stall is not None else ")"))
    return records


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        specs = _impls.parse_cases(args.cases)
    except ValueError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    bnorm, bnorm_missing = import_bnorm()
    if bnorm is None:
        print(f"compare.py: no report without bnorm: {bnorm_missing}\n"
              "Install it first: `pip install -e .` in the repository root.", file=sys.stderr)
        return 2
    if args.png is not None and importlib.util.find_spec("matplotlib") is None:
        print("compare.py: --png needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    stall_start = cpu_stall_us()

    set_threads(bnorm, args.threads)
    simd = bnorm.simd_path()

    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "bnorm_threads": bnorm.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "bnorm": bnorm.__version__,
        "bnorm_simd_path": simd,
        "bnorm_file": bnorm.__file__,
        "repeat": args.repeat, "warmup": args.warmup, "quick": args.quick, "smoke": args.smoke,
        "scaling": args.scaling and args.threads > 1,
        "l3_bytes": _report.l3_bytes(),
        "dram_min_bytes": int(args.dram_mib * 2**20),
        "copy_methods": _impls.COPY_METHODS,
        "copy_note": "the report's copy is the faster of the two per row",
        "torch_kernels": {
            "forward": "torch.native_batch_norm (alloc) / torch.ops.aten.native_batch_norm.out (out=)",
            "backward": "torch.ops.aten.native_batch_norm_backward (alloc) / .out (out=; torch-generated "
                        "wrapper that allocates and copies)",
            "module": "torch.nn.BatchNorm*d forward + torch.autograd.grad",
        },
        "tolerance": {k.name: v for k, v in TOLERANCE.items()},
    }

    log(f"CPU: {meta['cpu_model']} ({meta['cpus_available']} CPUs available), {args.threads} threads")
    log(f"python {meta['python']}, numpy {meta['numpy']}, torch {meta['torch']}, "
        + f"bnorm {meta['bnorm']} (SIMD path {simd}) from {meta['bnorm_file']}")

    records = []
    for k, spec in enumerate(specs, 1):
        log(f"[{k}/{len(specs)}] {spec.label} {spec.dtype.name} ({spec.name})")
        records += run_case(spec, bnorm, args)
        gc.collect()  # release this case's buffers (up to ~2 GB) before the next

    summary_text, targets = _report.summary(records, meta["dram_min_bytes"])
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    stall_end = cpu_stall_us()
    contention = None
    if stall_start is not None and stall_end is not None:
        contention = (stall_end - stall_start) / 1e6 / meta["elapsed_s"]
    meta["cpu_stall_fraction"] = contention
    meta["loadavg_end"] = os.getloadavg()

    print(f"## bnorm benchmark — {meta['cpu_model']}, {args.threads} threads, median of {args.repeat}\n")
    print(f"python {meta['python']}, numpy {meta['numpy']}, torch {meta['torch']}, "
          + f"bnorm {meta['bnorm']} (SIMD {simd})")
    print()
    if contention is not None and contention > CONTENTION_LIMIT:
        print(f"**WARNING: other processes competed for the CPUs during {contention:.0%} of the run "
              "(/proc/pressure/cpu): timings are unreliable; rerun on an idle machine.**\n")
    print(_report.markdown_table(records, CONTENTION_LIMIT, args.threads))
    print()
    mt = _report.module_table(records)
    if mt:
        print(mt)
        print()
    print("torch (alloc): torch.native_batch_norm / aten.native_batch_norm_backward;"
          " torch (out=): aten.native_batch_norm.out / aten.native_batch_norm_backward.out"
          " (the latter a torch-generated allocate-and-copy wrapper).")
    print(f"copy: x (B bytes) into a preallocated buffer, the faster per row of torch's dst.copy_(src)"
          f" at {args.threads} threads and np.copyto split over {args.threads} Python threads."
          " numpy: single-threaded.")
    print("GB/s = minimal traffic / median (fwd: 2B, backward: 3B). torch/bnorm = faster torch variant /"
          f" {_report.BNORM_OUT}; torch/bnorm alloc = {_report.TORCH_ALLOC} / {_report.BNORM_ALLOC};"
          f" alloc/out= = {_report.BNORM_ALLOC} / {_report.BNORM_OUT}; bnorm/copy = copy GB/s / bnorm GB/s."
          f" * = case measured while other processes used the CPUs (> {CONTENTION_LIMIT:.0%} stall).")
    if meta["scaling"]:
        print(f"1T: {_report.BNORM_OUT} and the faster torch call at {args.threads} threads, timed again at 1 thread"
              f" (interleaved); 1→{args.threads}T = time at 1 thread / time at {args.threads} threads.")
    print()
    print(summary_text)
    if contention is not None and contention > CONTENTION_LIMIT:
        print(f"  (measured while other processes competed for the CPUs {contention:.0%} of the time: unreliable)")

    _report.write_json(args.json, meta, records, targets)
    print(f"\nraw results: {args.json}")
    if args.png is not None:
        _report.save_png(args.png, records, meta)
        print(f"chart: {args.png}")
    print(f"elapsed: {meta['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
