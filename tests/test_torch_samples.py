"""PyTorch's own test samples, run through bnorm.

The samples are the ones torch's test suite feeds its batch norm:
``op_db``'s OpInfos ``nn.functional.batch_norm``, ``native_batch_norm`` and
``_native_batch_norm_legit`` (each sample also as its ``.noncontiguous()`` twin,
passed to bnorm as strided NumPy views of the same memory), and ``module_db``'s
ModuleInfos of ``nn.BatchNorm1d/2d/3d`` (inputs and error inputs), all from the
pinned torch.  Nobody on this project wrote them.

Each sample is mapped onto ``bnorm.functional`` or bnorm's module with the same
arguments; torch, run on float64 copies with autograd, gives the expected
values, and ``bnorm.testing.assert_batch_norm_close`` judges them with
tolerances derived from the sample's dtype.  A sample where bnorm raises while
torch does not (or the reverse), or where any value differs, is a difference;
the test asserts that the differences are exactly ``KNOWN_DIFFERENCES``, whose
reasons README.md's compatibility notes list: a new difference fails, and so
does a listed one that has gone away.

torch is a test dependency: without it these tests fail (the ``torch``
fixture), they never skip.  torch's sample modules also need ``expecttest``.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bnorm
from bnorm import functional as F
from bnorm.testing import assert_batch_norm_close

OPS = ("nn.functional.batch_norm", "native_batch_norm", "_native_batch_norm_legit")
MODULES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
README = Path(__file__).resolve().parent.parent / "README.md"

# Why bnorm differs from torch on a sample: README.md's compatibility notes have one
# bullet for each, starting with its label in bold.
ONE_D = "1-D input"
EPS_AT_CONSTRUCTION = "eps checked at construction"
REASONS = {
    ONE_D: "torch's batch_norm also takes an empty 1-D input of shape (0,); bnorm needs "
           "(N, C, ...) input and raises ValueError",
    EPS_AT_CONSTRUCTION: "BatchNorm*d(C, eps=e) with e <= 0 raises torch's ValueError "
                         "'eps must be positive...' in the constructor, torch at the first forward",
}

# sample key (op_key, module_key, module_error_key) -> label in REASONS
KNOWN_DIFFERENCES: dict[str, str] = {
    "nn.functional.batch_norm #3 x(0,) training momentum=0.1 eps=1e-05 no weight/bias": ONE_D,
    "nn.functional.batch_norm #4 x(0,) eval momentum=0.1 eps=1e-05 no weight/bias": ONE_D,
    "nn.functional.batch_norm.noncontiguous() #3 x(0,) training momentum=0.1 eps=1e-05 "
    "no weight/bias": ONE_D,
    "nn.functional.batch_norm.noncontiguous() #4 x(0,) eval momentum=0.1 eps=1e-05 "
    "no weight/bias": ONE_D,
    "nn.BatchNorm1d.error_inputs #0 (10,) {'eps': -1.0}": EPS_AT_CONSTRUCTION,
    "nn.BatchNorm1d.error_inputs #1 (10,) {'eps': 0.0}": EPS_AT_CONSTRUCTION,
    "nn.BatchNorm2d.error_inputs #0 (10,) {'eps': -1.0}": EPS_AT_CONSTRUCTION,
    "nn.BatchNorm2d.error_inputs #1 (10,) {'eps': 0.0}": EPS_AT_CONSTRUCTION,
    "nn.BatchNorm3d.error_inputs #0 (10,) {'eps': -1.0}": EPS_AT_CONSTRUCTION,
    "nn.BatchNorm3d.error_inputs #1 (10,) {'eps': 0.0}": EPS_AT_CONSTRUCTION,
}


@pytest.fixture(autouse=True)
def torch_single_threaded(torch: Any) -> Iterator[None]:
    """torch on one thread: on these tiny samples its thread pool only waits (40 ms a call
    measured on a 2-core machine under a load of 9, against well under 1 ms on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------
# torch's samples
# ----------------------------------------------------------------------------

def _torch_testing(module: str) -> Any:
    """A module of torch.testing._internal; a clear failure (never a skip) when it cannot load."""
    import importlib

    try:
        return importlib.import_module(f"torch.testing._internal.{module}")
    except ImportError as exc:
        pytest.fail(f"torch's test samples need torch's test dependencies ({exc}); "
                    "install bnorm's test extras: pip install -e \".[test]\"", pytrace=False)


def _op_info(name: str) -> Any:
    op_db = _torch_testing("common_methods_invocations").op_db
    (op,) = [o for o in op_db if o.name == name and o.variant_test_name == ""]
    return op


def _module_info(name: str) -> Any:
    module_db = _torch_testing("common_modules").module_db
    (info,) = [m for m in module_db if m.module_cls.__name__ == name]
    return info


def _np(t: Any) -> Any:
    """A torch tensor as a NumPy view of the same memory (strides kept); others as they are."""
    import torch

    return t.detach().numpy() if isinstance(t, torch.Tensor) else t


def _fmt(v: Any) -> str:
    shape = getattr(v, "shape", None)
    return "None" if v is None else f"{tuple(shape)}" if shape is not None else repr(v)


def _bn_arguments(op_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A sample's arguments in bnorm.functional.batch_norm's terms."""
    if op_name == "nn.functional.batch_norm":
        rm, rv, w, b = (tuple(args) + (None,) * 4)[:4]
        return dict(running_mean=rm, running_var=rv, weight=w, bias=b,
                    training=kwargs.get("training", False), momentum=kwargs.get("momentum", 0.1),
                    eps=kwargs.get("eps", 1e-5))
    if len(args) == 7:  # native_batch_norm, and _native_batch_norm_legit with running statistics
        w, b, rm, rv, training, momentum, eps = args
    else:  # _native_batch_norm_legit's overload without running statistics
        w, b, training, momentum, eps = args
        rm = rv = None
    return dict(running_mean=rm, running_var=rv, weight=w, bias=b, training=training,
                momentum=momentum, eps=eps)


def op_key(op_name: str, noncontiguous: bool, index: int, x: Any, a: dict[str, Any]) -> str:
    """The sample's name in KNOWN_DIFFERENCES, e.g. 'native_batch_norm #2 x(3, 1) training ...'."""
    mode = "training" if a["training"] else "eval"
    stats = "" if a["running_mean"] is not None else " no running stats"
    affine = "" if a["weight"] is not None else " no weight/bias"
    twin = ".noncontiguous()" if noncontiguous else ""
    return (f"{op_name}{twin} #{index} x{_fmt(x)} {mode} momentum={a['momentum']} "
            f"eps={a['eps']}{stats}{affine}")


# ----------------------------------------------------------------------------
# comparison
# ----------------------------------------------------------------------------

class Difference(Exception):
    """bnorm's result differs from torch's on a sample."""


def _outcome(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return call(), None
    except Exception as exc:  # noqa: BLE001 - every exception is an outcome to compare
        return None, exc


def _close(actual: Any, expected: Any, dtype: np.dtype[Any], what: str, **ctx: Any) -> None:
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise Difference(f"{what}: shape {actual.shape}, torch {expected.shape}")
    if actual.size == 0:
        return
    try:
        assert_batch_norm_close(actual, expected, dtype, what=what, check_dtype=False, **ctx)
    except AssertionError as exc:
        raise Difference(str(exc)) from None


def _torch64(torch: Any, t: Any) -> Any:
    """A float64 copy of a tensor that keeps requires_grad (for torch's reference run)."""
    if not isinstance(t, torch.Tensor):
        return t
    return t.detach().to(torch.float64, copy=True).requires_grad_(t.requires_grad)


def check_op_sample(torch: Any, op: Any, sample: Any, rng: np.random.Generator) -> None:
    """Run one OpInfo sample through torch and bnorm; raise Difference where they differ."""
    a = _bn_arguments(op.name, sample.args, sample.kwargs)
    x_t = sample.input
    dtype = np.dtype(str(x_t.dtype).removeprefix("torch."))
    dy = rng.standard_normal(tuple(x_t.shape)).astype(dtype)

    # torch in the sample's dtype: whether it raises and what it returns
    native = sample.transform(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t)
    native_out, native_exc = _outcome(lambda: op.op(native.input, *native.args, **native.kwargs))
    # torch in float64 with autograd: the expected values
    ref = sample.transform(lambda t: _torch64(torch, t))
    ref_a = _bn_arguments(op.name, ref.args, ref.kwargs)

    x = _np(x_t)
    bn = {k: _np(v) for k, v in a.items()}
    out, exc = _outcome(lambda: F.batch_norm(x, **bn))
    if native_exc is not None or exc is not None:
        if native_exc is None or exc is None:
            raise Difference(f"torch raised {native_exc!r}, bnorm raised {exc!r}")
        if type(exc) is not type(native_exc):
            raise Difference(f"torch raised {native_exc!r}, bnorm {exc!r}")
        return

    ref_out = op.op(ref.input, *ref.args, **ref.kwargs)
    y_ref = ref_out[0] if isinstance(ref_out, tuple) else ref_out
    native_y = native_out[0] if isinstance(native_out, tuple) else native_out
    y, save_mean, save_invstd = out
    if y.dtype != _np(native_y).dtype:
        raise Difference(f"output dtype {y.dtype}, torch {_np(native_y).dtype}")
    w = None if bn["weight"] is None else np.asarray(bn["weight"], np.float64)
    x64 = np.asarray(x, np.float64)
    M = x.size // x.shape[1] if x.ndim >= 2 and x.shape[1] else 0
    eps = float(a["eps"])
    ctx: dict[str, Any] = dict(x=x64, weight=w, eps=eps) if M else {}
    _close(y, _np(y_ref), dtype, "output", **ctx)

    if a["training"]:
        # native ops return torch's saved statistics; F.batch_norm keeps them internal
        if isinstance(ref_out, tuple):
            _close(save_mean, _np(ref_out[1]), dtype, "save_mean", reduction_size=M, x=x64)
            _close(save_invstd, _np(ref_out[2]), dtype, "save_invstd", reduction_size=M, x=x64,
                   eps=eps)
        if bn["running_mean"] is not None:
            _close(bn["running_mean"], _np(ref_a["running_mean"]), dtype, "running_mean",
                   reduction_size=M, x=x64)
            _close(bn["running_var"], _np(ref_a["running_var"]), dtype, "running_var",
                   reduction_size=M, x=x64, eps=eps)
    else:  # eval: the statistics used are the running ones, which stay as they were
        rm = np.asarray(_np(ref_a["running_mean"]), np.float64)
        rv = np.asarray(_np(ref_a["running_var"]), np.float64)
        for name, value in (("running_mean", rm), ("running_var", rv)):
            if not np.array_equal(bn[name], value.astype(dtype)):
                raise Difference(f"eval mode changed {name}")
        _close(save_mean, rm, np.dtype(np.float64), "save_mean", reduction_size=max(M, 1))
        _close(save_invstd, 1.0 / np.sqrt(rv + eps), np.dtype(np.float64), "save_invstd",
               reduction_size=max(M, 1))

    if not y_ref.requires_grad or M == 0:
        return
    y_ref.backward(torch.from_numpy(dy.astype(np.float64)))
    dx, dw, db = F.batch_norm_backward(dy, x, save_mean, save_invstd, bn["weight"],
                                       training=bool(a["training"]))
    grad_ctx = dict(ctx, dy=dy.astype(np.float64))
    _close(dx, _np(ref.input.grad), dtype, "grad_input", **grad_ctx)
    if ref_a["weight"] is not None:
        _close(dw, _np(ref_a["weight"].grad), dtype, "grad_weight", **grad_ctx)
        _close(db, _np(ref_a["bias"].grad), dtype, "grad_bias", **grad_ctx)


def op_samples(op: Any, torch_dtype: Any, noncontiguous: bool = False) -> list[Any]:
    """The OpInfo's samples, from a fixed seed (torch's own op.sample_inputs also seeds, but
    inspects the call stack for each sample, which costs a tenth of a second under pytest)."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        samples = list(op.sample_inputs_func(op, "cpu", torch_dtype, True))
    return [s.noncontiguous() for s in samples] if noncontiguous else samples


def module_samples(info: Any, torch_dtype: Any, errors: bool = False) -> list[Any]:
    """The ModuleInfo's inputs (or error inputs), from a fixed seed."""
    import torch

    func = info.module_error_inputs_func if errors else info.module_inputs_func
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return list(func(info, device="cpu", dtype=torch_dtype, requires_grad=True, training=True))


# ----------------------------------------------------------------------------
# OpInfo samples
# ----------------------------------------------------------------------------

def _known(prefix: str) -> set[str]:
    return {k for k in KNOWN_DIFFERENCES if k.startswith(prefix + " #")}


def _assert_exactly_known(observed: dict[str, str], known: set[str], ran: int) -> None:
    new = {k: v for k, v in observed.items() if k not in known}
    gone = known - set(observed)
    assert not new and not gone, (
        f"{ran} samples; differences not in KNOWN_DIFFERENCES:\n"
        + "".join(f"  {k}: {v}\n" for k, v in new.items())
        + "listed differences that no longer occur (remove them from KNOWN_DIFFERENCES and README.md):\n"
        + "".join(f"  {k}\n" for k in sorted(gone)))


@pytest.mark.parametrize("noncontiguous", [False, True], ids=["contiguous", "noncontiguous"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("op_name", OPS)
def test_op_samples_match_torch_or_are_listed(torch: Any, op_name: str, dtype: str,
                                              noncontiguous: bool) -> None:
    op = _op_info(op_name)
    torch_dtype = getattr(torch, dtype)
    # The pinned torch runs all three dtypes of these ops on the CPU, so none is left out.
    assert torch_dtype in op.supported_dtypes("cpu")
    rng = np.random.default_rng(0)
    observed: dict[str, str] = {}
    ran = 0
    for index, sample in enumerate(op_samples(op, torch_dtype, noncontiguous)):
        ran += 1
        if noncontiguous and sample.input.numel() > 1:   # bnorm gets strided views
            assert not sample.input.is_contiguous() and not _np(sample.input).flags.c_contiguous
        key = op_key(op_name, noncontiguous, index, sample.input,
                     _bn_arguments(op_name, sample.args, sample.kwargs))
        try:
            check_op_sample(torch, op, sample, rng)
        except Difference as d:
            observed[key] = f"[{dtype}] {d}"
    assert ran >= 10
    _assert_exactly_known(observed, _known(op_name + (".noncontiguous()" if noncontiguous else "")),
                          ran)


# ----------------------------------------------------------------------------
# ModuleInfo samples
# ----------------------------------------------------------------------------

TRAINING_STEPS, EVAL_STEPS = 3, 2


def module_key(cls_name: str, desc: str) -> str:
    return f"nn.{cls_name} #{desc or 'default'}"


def _compare_module_step(torch_m: Any, bn: Any, x: np.ndarray, dy: np.ndarray, step: str) -> None:
    """One forward and backward of torch's module (float64) and bnorm's; Difference where they differ."""
    import torch

    dtype = x.dtype
    for p in torch_m.parameters():
        p.grad = None
    x_t = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    y_t = torch_m(x_t)
    y_t.backward(torch.from_numpy(dy.astype(np.float64)))
    y = bn(x)
    dx = bn.backward(dy)
    if y.dtype != dtype or dx.dtype != dtype:
        raise Difference(f"{step}: output dtype {y.dtype}, dx dtype {dx.dtype}, input {dtype}")
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    w = None if bn.weight is None else np.asarray(bn.weight, np.float64)
    ctx: dict[str, Any] = dict(x=x64, weight=w, eps=bn.eps) if x.size else {}
    M = x.size // x.shape[1]
    try:
        _close(y, _np(y_t), dtype, "output", **ctx)
        _close(dx, _np(x_t.grad), dtype, "grad_input", **dict(ctx, dy=dy64))
        for mine, theirs, what in ((bn.grad_gamma, torch_m.weight, "grad_weight"),
                                   (bn.grad_beta, torch_m.bias, "grad_bias")):
            if (mine is None) != (theirs is None):
                raise Difference(f"{what}: bnorm {_fmt(mine)}, torch {_fmt(theirs)}")
            if mine is not None:
                _close(mine, _np(theirs.grad), dtype, what, reduction_size=M, **dict(ctx, dy=dy64))
        mine_state, theirs_state = bn.state_dict(), torch_m.state_dict()
        if list(mine_state) != list(theirs_state):
            raise Difference(f"state_dict keys {list(mine_state)}, torch {list(theirs_state)}")
        if "num_batches_tracked" in theirs_state:
            if int(mine_state["num_batches_tracked"]) != int(theirs_state["num_batches_tracked"]):
                raise Difference(f"num_batches_tracked {int(mine_state['num_batches_tracked'])}, "
                                 f"torch {int(theirs_state['num_batches_tracked'])}")
            for name in ("running_mean", "running_var"):
                _close(mine_state[name], _np(theirs_state[name]), dtype, name, reduction_size=M,
                       **({"x": x64, "eps": bn.eps} if x.size else {}))
    except Difference as d:
        raise Difference(f"{step}: {d}") from None


def check_module_sample(torch: Any, cls_name: str, module_input: Any, dtype: np.dtype[Any],
                        rng: np.random.Generator) -> None:
    """Construct torch's and bnorm's module alike; train and evaluate both for a few steps."""
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    torch_m = getattr(torch.nn, cls_name)(*args, **kwargs, dtype=torch.float64)
    bn, exc = _outcome(lambda: getattr(bnorm, cls_name)(*args, **kwargs, dtype=dtype))
    if exc is not None:
        raise Difference(f"bnorm's constructor raised {exc!r}")
    if list(bn.state_dict()) != list(torch_m.state_dict()):
        raise Difference(f"state_dict keys {list(bn.state_dict())}, torch {list(torch_m.state_dict())}")
    with torch.no_grad():  # parameters away from their defaults, the same in both
        for name in ("weight", "bias"):
            if getattr(torch_m, name) is not None:
                value = rng.uniform(0.5, 2.0, bn.num_features).astype(dtype)
                getattr(torch_m, name).copy_(torch.from_numpy(value.astype(np.float64)))
                getattr(bn, name)[...] = value
    x0 = _np(module_input.forward_input.args[0])
    assert x0.dtype == dtype
    steps = [("train", i) for i in range(TRAINING_STEPS)] + [("eval", i) for i in range(EVAL_STEPS)]
    for mode, i in steps:
        torch_m.train(mode == "train")
        bn.train(mode == "train")
        x = x0 if i == 0 and mode == "train" else (
            rng.standard_normal(x0.shape) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)).astype(dtype)
        dy = rng.standard_normal(x0.shape).astype(dtype)
        _compare_module_step(torch_m, bn, x, dy, f"{mode} step {i}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls_name", MODULES)
def test_module_samples_match_torch_or_are_listed(torch: Any, cls_name: str, dtype: str) -> None:
    info = _module_info(cls_name)
    torch_dtype = getattr(torch, dtype)
    assert torch_dtype in info.dtypes
    rng = np.random.default_rng(1)
    observed: dict[str, str] = {}
    inputs = module_samples(info, torch_dtype)
    for module_input in inputs:
        key = module_key(cls_name, module_input.desc)
        try:
            check_module_sample(torch, cls_name, module_input, np.dtype(dtype), rng)
        except Difference as d:
            observed[key] = f"[{dtype}] {d}"
    assert len(inputs) >= 7
    _assert_exactly_known(observed, _known(f"nn.{cls_name}"), len(inputs))


def module_error_key(cls_name: str, index: int, error_input: Any) -> str:
    c = error_input.module_error_input.constructor_input
    return f"nn.{cls_name}.error_inputs #{index} {tuple(c.args)} {c.kwargs}"


@pytest.mark.parametrize("cls_name", MODULES)
def test_module_error_samples_raise_in_bnorm_or_are_listed(torch: Any, cls_name: str) -> None:
    ModuleErrorEnum = _torch_testing("common_modules").ModuleErrorEnum
    info = _module_info(cls_name)
    observed: dict[str, str] = {}
    errors = module_samples(info, torch.float32, errors=True)
    for index, error in enumerate(errors):
        key = module_error_key(cls_name, index, error)
        c, f = error.module_error_input.constructor_input, error.module_error_input.forward_input
        # torch raises as the sample says (a check of this test's reading of it)
        with pytest.raises(error.error_type, match=error.error_regex):
            torch_m = getattr(torch.nn, cls_name)(*c.args, **c.kwargs)
            assert error.error_on == ModuleErrorEnum.FORWARD_ERROR
            torch_m(*f.args, **f.kwargs)
        stage = "construction"
        bn, exc = _outcome(lambda: getattr(bnorm, cls_name)(*c.args, **c.kwargs))
        if exc is None:
            stage = "forward"
            _, exc = _outcome(lambda: bn(*map(_np, f.args), **f.kwargs))
        torch_stage = "construction" if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR else "forward"
        if exc is None:
            observed[key] = f"bnorm raised nothing; torch {error.error_type.__name__} on {torch_stage}"
        elif type(exc) is not error.error_type or not re.search(error.error_regex, str(exc)):
            observed[key] = f"bnorm raised {exc!r}; torch {error.error_type.__name__}({error.error_regex!r})"
        elif stage != torch_stage:
            observed[key] = f"bnorm raised {exc!r} on {stage}, torch on {torch_stage}"
    assert len(errors) >= 2
    _assert_exactly_known(observed, _known(f"nn.{cls_name}.error_inputs"), len(errors))


# ----------------------------------------------------------------------------
# the checks themselves, and the README's list
# ----------------------------------------------------------------------------

# a fault: which function's result, and which part of it, comes out 1e-4 relative off
# (far beyond float32 rounding)
FAULTS = {
    "output": ("batch_norm", 0),
    "save_invstd": ("batch_norm", 2),
    "grad_input": ("batch_norm_backward", 0),
    "grad_weight": ("batch_norm_backward", 1),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_op_check_detects_a_wrong_result(torch: Any, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    function, part = FAULTS[fault]
    correct = getattr(F, function)

    def faulty(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        result = list(correct(*args, **kwargs))
        result[part] = result[part] * (1 + 1e-4)
        return tuple(result)

    op = _op_info("native_batch_norm")

    def first_sample() -> Any:  # a fresh one: a check updates the running statistics in place
        return op_samples(op, torch.float32)[0]

    check_op_sample(torch, op, first_sample(), np.random.default_rng(0))   # as it is: no difference
    monkeypatch.setattr(F, function, faulty)
    with pytest.raises(Difference, match=fault):
        check_op_sample(torch, op, first_sample(), np.random.default_rng(0))


def test_module_check_detects_a_wrong_momentum(torch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    info = _module_info("BatchNorm2d")
    (sample,) = [m for m in module_samples(info, torch.float32) if m.desc == "momentum"]
    original = bnorm.BatchNorm2d

    def half_momentum(*args: Any, **kwargs: Any) -> Any:
        module = original(*args, **kwargs)
        assert module.momentum == 0.8  # the sample's
        module.momentum = 0.4
        return module

    monkeypatch.setattr(bnorm, "BatchNorm2d", half_momentum)
    with pytest.raises(Difference, match="running_mean|running_var"):
        check_module_sample(torch, "BatchNorm2d", sample, np.dtype(np.float32), np.random.default_rng(1))


def readme_sample_differences() -> dict[str, str]:
    """The bullets of README.md's list of differences on torch's samples: label -> text."""
    text = README.read_text(encoding="utf-8")
    marker = "`tests/test_torch_samples.py`"
    start = text.index(marker)
    bullets = re.match(r"[^\n]*(?:\n[^\n]+)*\n\n((?:- [^\n]*\n(?:  [^\n]*\n)*)+)", text[start:])
    assert bullets is not None, "README.md: the list of differences must follow the line naming the test"
    found = re.findall(r"^- \*\*(.+?)\*\*:? ?(.*?)(?=^- |\Z)", bullets.group(1), re.M | re.S)
    return {label.rstrip(":"): " ".join(body.split()) for label, body in found}


def test_known_differences_have_reasons_and_the_readme_lists_exactly_them() -> None:
    assert set(KNOWN_DIFFERENCES.values()) == set(REASONS), "every reason is used, none is missing"
    assert set(readme_sample_differences()) == set(REASONS)
