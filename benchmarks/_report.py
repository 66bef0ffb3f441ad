"""Tables, target summary, JSON and chart for benchmarks/compare.py.

A result record is a dict (JSON-ready) for one (case, operation):
    case, shape, dtype, op, group (of the targets, or None), channels_last, tensor_bytes, traffic_bytes,
    timings: {impl: {median_ms, min_ms, number, samples_ms}},
    errors: {impl: relative error vs torch}, excluded: {impl: reason}
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from _impls import (BNORM_ALLOC, BNORM_OUT, COPY_NUMPY, COPY_TORCH, MODULE_OP, OP_LABELS, OPS,
                    TORCH_ALLOC, TORCH_OUT)

# Targets from the project's issue.
SPEEDUP_TARGETS = {"train_fwd": 3.5, "backward": 2.5}  # bnorm at least this many times faster than torch
COPY_TARGETS = {"train_fwd": 1.5, "eval_fwd": 1.2}  # bnorm time at most this many copies (traffic-normalised)
MODULE_TARGET = 1.0  # small batch module fwd+bwd: bnorm not slower than torch + autograd
LEVEL = 0.95  # torch/bnorm at or above this counts as level with torch (memory-bound rows at parity)
ALLOC_TARGETS = {"median": 1.1, "max": 1.3}  # bnorm (alloc) / bnorm (out=) on DRAM-sized rows
# Outputs at least this large count as DRAM-sized for the allocating target: larger than the
# 32 MiB L3 of the CI machine. Fixed rather than read from the CPU, so runs compare across
# machines, and because a virtual machine may report its host's whole L3 (480 MiB seen).
DRAM_MIN_BYTES = 32 << 20

TORCH_MODULE = "torch nn module + autograd"
BNORM_MODULE = "bnorm module"
BNORM_MODULE_OUT = "bnorm module (out=)"


def median_ms(rec: dict, impl: str) -> float | None:
    """Median time of one implementation; "copy" is the faster of the two copies."""
    if impl == "copy":
        times = [t for t in (median_ms(rec, COPY_TORCH), median_ms(rec, COPY_NUMPY)) if t is not None]
        return min(times) if times else None
    t = rec["timings"].get(impl)
    return t["median_ms"] if t else None


def copy_method(rec: dict) -> str | None:
    t, n = median_ms(rec, COPY_TORCH), median_ms(rec, COPY_NUMPY)
    if t is None or n is None:
        return COPY_TORCH if t is not None else (COPY_NUMPY if n is not None else None)
    return COPY_TORCH if t <= n else COPY_NUMPY


def torch_best_ms(rec: dict) -> float | None:
    """The faster of torch's two call styles (see _impls.torch_impls)."""
    times = [t for t in (median_ms(rec, TORCH_OUT), median_ms(rec, TORCH_ALLOC)) if t is not None]
    return min(times) if times else None


def gbps(rec: dict, impl: str) -> float | None:
    """Effective bandwidth: the op's minimal traffic divided by its median time."""
    t = median_ms(rec, impl)
    traffic = rec["tensor_bytes"] * 2 if impl == "copy" else rec["traffic_bytes"]
    return traffic / (t * 1e-3) / 1e9 if t else None


def speedup_vs_torch(rec: dict, impl: str = BNORM_OUT) -> float | None:
    t, ref = median_ms(rec, impl), torch_best_ms(rec)
    return ref / t if t and ref else None


def speedup_alloc(rec: dict) -> float | None:
    """The allocating pairing: torch (alloc) / bnorm (alloc)."""
    t, ref = median_ms(rec, BNORM_ALLOC), median_ms(rec, TORCH_ALLOC)
    return ref / t if t and ref else None


def alloc_over_out(rec: dict) -> float | None:
    """What allocating the output costs bnorm: bnorm (alloc) / bnorm (out=)."""
    a, o = median_ms(rec, BNORM_ALLOC), median_ms(rec, BNORM_OUT)
    return a / o if a and o else None


def one_thread_ms(rec: dict, library: str) -> tuple[str, float] | None:
    """(impl, median ms at 1 thread) of bnorm (out=) or of the torch call timed at 1 thread."""
    for name, t in rec.get("timings_1_thread", {}).items():
        if name.startswith(library):
            return name, t["median_ms"]
    return None


def thread_scaling(rec: dict, library: str) -> float | None:
    """Time at 1 thread / time at the run's thread count, of the same call."""
    one = one_thread_ms(rec, library)
    many = median_ms(rec, one[0]) if one else None
    return one[1] / many if one and many else None


def l3_bytes() -> int | None:
    """Size of the CPU's L3 cache (Linux), or None."""
    try:
        size = os.sysconf("SC_LEVEL3_CACHE_SIZE")
        if size > 0:
            return size
    except (ValueError, OSError, AttributeError):
        pass
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            if (index / "level").read_text().strip() == "3":
                text = (index / "size").read_text().strip().upper()
                units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
                return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        except (OSError, ValueError):
            continue
    return None


def dram_sized(rec: dict, min_bytes: int = DRAM_MIN_BYTES) -> bool:
    return rec["tensor_bytes"] >= min_bytes


def ratio_to_copy(rec: dict, impl: str = BNORM_OUT) -> float | None:
    """Time relative to a copy moving the same number of bytes.

    The copy reads and writes the tensor once (2 B of traffic). Forward ops
    move 2 B too, so this is plainly t / t_copy; backward moves 3 B (reads x
    and dy, writes dx), so the copy time is scaled by 3/2 — equivalently, the
    copy's bandwidth divided by the op's effective bandwidth.
    """
    b, c = gbps(rec, impl), gbps(rec, "copy")
    return c / b if b and c else None


def derived(rec: dict) -> dict:
    return {
        "torch_best_ms": torch_best_ms(rec),
        "bnorm_gbps": gbps(rec, BNORM_OUT),
        "copy_gbps": gbps(rec, "copy"),
        "copy_method": copy_method(rec),
        "speedup_vs_torch": speedup_vs_torch(rec),
        "speedup_vs_torch_alloc": speedup_alloc(rec),
        "bnorm_alloc_over_out": alloc_over_out(rec),
        "bnorm_thread_scaling": thread_scaling(rec, "bnorm"),
        "torch_thread_scaling": thread_scaling(rec, "torch"),
        "bnorm_over_copy": ratio_to_copy(rec),
    }


# --------------------------------------------------------------------------
# Markdown


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.0f}{unit}"
    return f"{v:.3g}{unit}"


def _time_cell(rec: dict, impl: str) -> str:
    if impl in rec.get("excluded", {}):
        return "WRONG" if rec["excluded"][impl].startswith("wrong") else "error"
    return _fmt(median_ms(rec, impl))


def _ratio(v: float | None) -> str:
    return f"{v:.2f}x" if v else "–"


def markdown_table(records: list[dict], contention_limit: float = 0.1, threads: int = 2) -> str:
    """One row per case and op; '*' after the op marks a case measured under CPU contention.
    With 1-thread timings in the records, four more columns show both libraries' scaling."""
    impls = [BNORM_OUT, BNORM_ALLOC, TORCH_OUT, TORCH_ALLOC, "numpy", "copy"]
    scaling = any(r.get("timings_1_thread") for r in records)
    head = (["shape", "dtype", "op"] + [f"{i} ms" for i in impls]
            + ["bnorm GB/s", "copy GB/s", "torch/bnorm", "torch/bnorm alloc", "alloc/out=", "bnorm/copy"])
    if scaling:
        head += ["bnorm 1T ms", f"bnorm 1→{threads}T", "torch 1T ms", f"torch 1→{threads}T"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for rec in records:
        if rec["op"] == MODULE_OP:
            continue
        s = speedup_vs_torch(rec)
        stall = rec.get("cpu_stall_fraction")
        mark = " *" if stall is not None and stall > contention_limit else ""
        cells = [rec["case_label"], rec["dtype"], OP_LABELS[rec["op"]] + mark]
        cells += [_time_cell(rec, i) for i in impls]
        cells += [_fmt(gbps(rec, BNORM_OUT)), _fmt(gbps(rec, "copy")), _ratio(s), _ratio(speedup_alloc(rec)),
                  _fmt(alloc_over_out(rec)), _fmt(ratio_to_copy(rec))]
        if scaling:
            for library in ("bnorm", "torch"):
                one = one_thread_ms(rec, library)
                cells += [_fmt(one[1]) if one else "–", _fmt(thread_scaling(rec, library), "x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def module_table(records: list[dict]) -> str:
    mods = [r for r in records if r["op"] == MODULE_OP]
    if not mods:
        return ""
    impls = [BNORM_MODULE, BNORM_MODULE_OUT, TORCH_MODULE]
    head = ["shape", "dtype"] + [f"{i} ms" for i in impls] + ["torch/bnorm module"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for rec in mods:
        s = speedup_vs_torch_module(rec)
        cells = [rec["case_label"], rec["dtype"]] + [_time_cell(rec, i) for i in impls]
        cells.append(f"{s:.2f}x" if s else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speedup_vs_torch_module(rec: dict) -> float | None:
    t, ref = median_ms(rec, BNORM_MODULE), median_ms(rec, TORCH_MODULE)
    return ref / t if t and ref else None


# --------------------------------------------------------------------------
# Targets


def _verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def summary(records: list[dict], dram_min_bytes: int = DRAM_MIN_BYTES) -> tuple[str, dict]:
    """Per target group (dtype and layout) and op: medians over its shapes vs the targets;
    then the rows behind torch in either pairing, and what allocating costs on DRAM-sized rows."""
    lines, out = [], {}
    lines.append("Summary: per group, the median over its shapes (four ResNet-50, one Inception-v3); bnorm = "
                 f"'{BNORM_OUT}', torch = the faster torch variant, copy ratio traffic-normalised.")
    for group in dict.fromkeys(r["group"] for r in records if r["group"]):
        n_shapes = len({r["case"] for r in records if r["group"] == group})
        lines.append(f"{group} ({n_shapes} shapes):")
        out[group] = {}
        for op in OPS:
            recs = [r for r in records if r["group"] == group and r["op"] == op]
            if recs:
                text, out[group][op] = _op_summary(op, recs)
                lines.append(f"  {OP_LABELS[op]:<15} {text}")
    for rec in (r for r in records if r["op"] == MODULE_OP):
        s = speedup_vs_torch_module(rec)
        if BNORM_MODULE in rec.get("excluded", {}):
            s = None
        v = _verdict(s, MODULE_TARGET, True)
        b, t = median_ms(rec, BNORM_MODULE), median_ms(rec, TORCH_MODULE)
        lines.append(f"  {'module fwd+bwd':<15} {rec['case_label']} {rec['dtype']}: bnorm {_fmt(b and b * 1e3)} us vs "
                     f"torch + autograd {_fmt(t and t * 1e3)} us -> {_fmt(s, 'x')} (target: not slower) {v}")
        out[f"{MODULE_OP}:{rec['case']}"] = {"speedup_vs_torch_module": s, "verdict": v}
    rows = [r for r in records if r["op"] != MODULE_OP]
    for key, label, fn in (("behind_out", f"'{BNORM_OUT}' vs the faster torch call", speedup_vs_torch),
                           ("behind_alloc", f"'{BNORM_ALLOC}' vs '{TORCH_ALLOC}'", speedup_alloc)):
        timed = [r for r in rows if fn(r) is not None]
        behind = [r for r in timed if fn(r) < LEVEL]
        out[key] = [f"{r['case']} {r['op']}" for r in behind]
        lines.append(f"Rows behind torch (torch/bnorm < {LEVEL}), {label}: {len(behind)} of {len(timed)}"
                     + (": " + ", ".join(f"{r['case_label']} {r['dtype']} {OP_LABELS[r['op']]} {fn(r):.2f}x"
                                         for r in behind) if behind else ""))
    costs = [c for c in (alloc_over_out(r) for r in rows if dram_sized(r, dram_min_bytes)) if c is not None]
    where = f"outputs >= {dram_min_bytes / 2**20:g} MiB"
    if costs:
        med, top = statistics.median(costs), max(costs)
        v = "PASS" if med <= ALLOC_TARGETS["median"] and top <= ALLOC_TARGETS["max"] else "MISS"
        lines.append(f"Allocating / out= ('{BNORM_ALLOC}' / '{BNORM_OUT}') over {len(costs)} rows with {where}: "
                     f"median {med:.2f}x, max {top:.2f}x (target median <= {ALLOC_TARGETS['median']}x, "
                     f"none above {ALLOC_TARGETS['max']}x) {v}")
        out["alloc_over_out"] = {"median": med, "max": top, "rows": len(costs), "verdict": v}
    else:
        lines.append(f"Allocating / out=: no timed rows with {where}")
    return "\n".join(lines), out


def _op_summary(op: str, recs: list[dict]) -> tuple[str, dict]:
    """One op of one group: the medians, each against its target."""
    # A kernel that failed the correctness check has no timing: it misses.
    wrong = any(BNORM_OUT in r.get("excluded", {}) for r in recs)
    speeds = [s for s in map(speedup_vs_torch, recs) if s is not None]
    ratios = [c for c in map(ratio_to_copy, recs) if c is not None]
    sp = statistics.median(speeds) if speeds and not wrong else None
    cr = statistics.median(ratios) if ratios and not wrong else None
    parts = []
    entry = {"speedup_vs_torch": sp, "bnorm_over_copy": cr, "shapes": len(recs)}
    for key, value, targets, higher, text, relation in (
            ("speedup", sp, SPEEDUP_TARGETS, True, "faster than torch", ">="),
            ("copy", cr, COPY_TARGETS, False, "copy", "<=")):
        if op in targets:
            v = _verdict(value, targets[op], higher)
            entry[f"{key}_target"], entry[f"{key}_verdict"] = targets[op], v
            parts.append(f"{_fmt(value, 'x')} {text} (target {relation} {targets[op]}x) {v}")
        else:
            parts.append(f"{_fmt(value, 'x')} {text} (no target)")
    scaling = {lib: [v for v in (thread_scaling(r, lib) for r in recs) if v is not None] for lib in ("bnorm", "torch")}
    if scaling["bnorm"] and scaling["torch"]:
        entry["thread_scaling"] = {lib: statistics.median(v) for lib, v in scaling.items()}
        parts.append("from 1 thread: bnorm {bnorm:.2f}x, torch {torch:.2f}x faster".format(**entry["thread_scaling"]))
    if wrong:
        parts.append("bnorm output WRONG on some shape")
    return "; ".join(parts), entry


# --------------------------------------------------------------------------
# Files


def write_json(path: Path, meta: dict, records: list[dict], targets: dict) -> None:
    for rec in records:
        rec["derived"] = derived(rec) if rec["op"] != MODULE_OP else {
            "speedup_vs_torch_module": speedup_vs_torch_module(rec)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "targets": targets, "results": records}, f, indent=1)
        f.write("\n")


def _case_label(rec: dict) -> str:
    """Short multi-line tick label: 'N×C', spatial dims, dtype."""
    shape = rec["shape"]
    spatial = "×".join(map(str, shape[2:])) or "-"
    layout = "\nNHWC" if rec.get("channels_last") else ""
    return f"{shape[0]}×{shape[1]}\n{spatial}\n{rec['dtype']}{layout}"


def _target_line(ax, y: float, color: str, text: str) -> None:
    """A dotted horizontal target line, labelled at its right end."""
    ax.axhline(y, color=color, linestyle=":", linewidth=2)
    ax.annotate(text, (1.0, y), xycoords=("axes fraction", "data"), xytext=(-3, 3), textcoords="offset points",
                ha="right", va="bottom", fontsize=8, color=color, fontweight="bold")


def _plain_log_ticks(ax, suffix: str) -> None:
    """Log axis with readable ticks (0.5x, 1x, 2x, ...) instead of 2x10^0 labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator
    lo, hi = ax.get_ylim()
    hi *= 1.25  # headroom for the value labels above the bars
    ax.set_ylim(lo, hi)
    ticks = [t for m in (0.01, 0.1, 1, 10, 100, 1000) for t in (m, 2 * m, 3 * m, 5 * m) if lo <= t <= hi]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{suffix}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def save_png(path: Path, records: list[dict], meta: dict) -> bool:
    """Top: time relative to a copy, per op, one bar group per case.
    Bottom: bnorm's speedup over torch per case and op, with the targets."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # file output only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    ops = [op for op in OPS if any(r["op"] == op for r in records)]
    if not ops:
        return False
    # one full-width row per op, then the speed-up panel: room for a label per case
    n_cases = len({r["case"] for r in records})
    fig = plt.figure(figsize=(max(12.0, 0.8 * n_cases), 5.0 * (len(ops) + 1)))
    grid = fig.add_gridspec(len(ops) + 1, 1, hspace=0.6)

    # --- top row: time / copy. Cache-resident (small) cases are left out:
    # a copy of a few hundred KB runs from cache, so the ratio says nothing
    # about memory bandwidth there.
    series = [(BNORM_OUT, "#1f77b4"), (BNORM_ALLOC, "#9ecae1"), ("torch (best)", "#d62728"), ("numpy", "#7f7f7f")]
    width = 0.8 / len(series)
    top_axes = []
    for j, op in enumerate(ops):
        ax = fig.add_subplot(grid[j, 0], sharey=top_axes[0] if top_axes else None)
        top_axes.append(ax)
        recs = [r for r in records if r["op"] == op and not r["small"]]
        for k, (impl, color) in enumerate(series):
            xs, ys = [], []
            for i, rec in enumerate(recs):
                if impl == "torch (best)":
                    t, c = torch_best_ms(rec), gbps(rec, "copy")
                    v = c * (t * 1e-3) * 1e9 / rec["traffic_bytes"] if t and c else None
                else:
                    v = ratio_to_copy(rec, impl)
                if v is not None:
                    xs.append(i + (k - (len(series) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width, color=color, label=impl)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1.2, label="copy (memory limit)")
        if op in COPY_TARGETS:
            _target_line(ax, COPY_TARGETS[op], "green", f"target <= {COPY_TARGETS[op]}x")
        ax.set_yscale("log")
        ax.set_xticks(range(len(recs)))
        ax.set_xticklabels([_case_label(r) for r in recs], fontsize=9)
        ax.set_title(f"{OP_LABELS[op]}: time / copy of the same traffic", fontsize=11)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_ylabel("x copy time (log, lower is better)")
    _plain_log_ticks(top_axes[0], "x")  # shared y axis: applies to the whole row
    handles, names = top_axes[0].get_legend_handles_labels()
    top_axes[0].legend(handles, names, loc="lower center", bbox_to_anchor=(0.5, 1.09),
                                        ncol=len(handles), fontsize=9, frameon=False)

    # --- bottom row, one wide panel: speedup of bnorm (out=) over torch.
    ax = fig.add_subplot(grid[len(ops), 0])
    cases = list(dict.fromkeys(r["case"] for r in records))
    labels = {r["case"]: _case_label(r) for r in records}
    bars = [(op, OP_LABELS[op], speedup_vs_torch) for op in ops]
    if any(r["op"] == MODULE_OP for r in records):
        bars.append((MODULE_OP, "module fwd+bwd (vs nn.BatchNorm2d + autograd)", speedup_vs_torch_module))
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    width = 0.8 / len(bars)
    for k, (op, label, fn) in enumerate(bars):
        xs, ys = [], []
        for i, case in enumerate(cases):
            rec = next((r for r in records if r["case"] == case and r["op"] == op), None)
            v = fn(rec) if rec else None
            if v is not None:
                xs.append(i + (k - (len(bars) - 1) / 2) * width)
                ys.append(v)
        drawn = ax.bar(xs, ys, width, color=colors[k % len(colors)], label=label)
        for bar, v in zip(drawn, ys):
            ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1.2, label="as fast as torch")
    for op, target in SPEEDUP_TARGETS.items():
        if op in ops:
            # In the legend, not on the line: the two targets are close on a log axis.
            ax.axhline(target, color=colors[ops.index(op)], linestyle=":", linewidth=2,
                       label=f"{OP_LABELS[op]} target >= {target}x")
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([labels[c] for c in cases], fontsize=9)
    ax.set_ylabel("bnorm speedup over torch (log scale, higher is better)")
    _plain_log_ticks(ax, "x")
    ax.set_title("bnorm (out=) vs the faster torch call", fontsize=11)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=4, frameon=False)

    fig.suptitle(f"bnorm {meta.get('bnorm') or '(not available)'} vs torch {meta['torch']} vs NumPy: "
                 f"{meta['cpu_model']}, {meta['threads']} threads, medians of {meta['repeat']}", fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True
