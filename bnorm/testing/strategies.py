"""Hypothesis strategies that generate valid batch-norm problems.

Use them to test your own batch-norm kernel against bnorm or against
``bnorm.testing.reference``::

    from hypothesis import given
    from bnorm.testing import strategies as bst

    @given(bst.problems(dims=2))
    def test_my_kernel(p):
        ...   # p.x, p.dtype, p.options, p.training, p.state, p.dy

What is generated
-----------------
* ``batch_norm_shapes``: (N, C, *spatial) tuples for 0 to 3 spatial
  dimensions, with a bounded total size so tests stay fast.
* ``module_options``: the constructor keywords eps, momentum (including
  None, the cumulative average, and the extremes 0 and 1), affine and
  track_running_stats.
* ``batch_norm_inputs``: finite arrays of the given shape and dtype whose
  channels are each drawn from a different recipe: Gaussian or uniform
  noise, small integers (many ties), two-valued, sparse (mostly one value),
  heavy-tailed mixtures of scales, and constant channels; with scales from
  1e-3 to 1e3 and offsets up to 1e4 times the scale (1e4 + N(0, 1) in
  float32 is the classic case that breaks E[x^2] - E[x]^2).  NaN and inf
  appear only when asked for.
* ``problems``: everything needed for one test of a module: input, dtype,
  options, training flag, a state (gamma, beta, running statistics,
  num_batches_tracked) and an upstream gradient ``dy``.  In training mode
  (and whenever batch statistics are used) every channel has more than one
  value, as PyTorch requires.  ``dtypes=ALL_DTYPES`` adds float16 problems
  (the default, FLOAT_DTYPES, is float32 and float64).

Hypothesis is a test dependency of bnorm, not a runtime one: importing this
module without it raises ImportError with instructions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, TypedDict, TypeVar, Union, cast

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

from importlib.util import find_spec

if find_spec("hypothesis") is None:  # pragma: no cover - exercised only without hypothesis
    raise ImportError(
        "bnorm.testing.strategies needs the 'hypothesis' package (a test dependency, not "
        "needed by bnorm itself): pip install hypothesis")
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .. import _core

if TYPE_CHECKING:
    from .. import BatchNorm1d, BatchNorm2d, BatchNorm3d
    from .._core import _BatchNorm
    from .reference import ReferenceBatchNorm

__all__ = [
    "Problem",
    "batch_norm_shapes",
    "module_options",
    "batch_norm_inputs",
    "problems",
    "FLOAT_DTYPES",
    "ALL_DTYPES",
]

#: Every dtype this build of bnorm takes (bnorm._core.DTYPES), narrowest first.
ALL_DTYPES = tuple(sorted((np.dtype(name) for name in _core.DTYPES), key=lambda dt: dt.itemsize))
#: The default of problems(): the dtypes of at least single precision (float32, float64).
FLOAT_DTYPES = tuple(dt for dt in ALL_DTYPES if dt.itemsize >= 4)
#: float16 channels whose values exceed this are scaled down by a power of two (which keeps
#: ties, constants and ratios exact), so that they and their squares' sums stay finite.
_FLOAT16_MAX_ABS = 2.0 ** 14

#: Channel recipes of batch_norm_inputs, simplest first (Hypothesis shrinks towards it).
CHANNEL_KINDS = ("normal", "uniform", "integers", "constant", "two_values", "sparse", "mixture")
_SCALES = (1.0, 1e-3, 1e3, 0.1, 10.0, 1e-2, 100.0)
_OFFSETS = (0.0, 1.0, -1.0, 3.0, -0.5, 100.0, -100.0, 1e4, -1e4)


class ModuleOptions(TypedDict):
    """The constructor keywords module_options() draws (pass them as ``**options``)."""

    eps: float
    momentum: Optional[float]
    affine: bool
    track_running_stats: bool


def _check_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    dt = np.dtype(dtype)
    if dt not in ALL_DTYPES:
        raise TypeError(f"dtype: expected one of {', '.join(d.name for d in ALL_DTYPES)}, got {dt}")
    return dt


def _check_dims(dims: Union[int, np.integer[Any], Iterable[int]]) -> tuple[int, ...]:
    if isinstance(dims, (int, np.integer)):
        dims = (int(dims),)
    dims = tuple(int(d) for d in dims)
    if not dims or any(d not in (0, 1, 2, 3) for d in dims):
        raise ValueError(f"dims: expected spatial dimensions in 0..3 (0 = (N, C) input), got {dims}")
    return dims


# ----------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------

@st.composite
def _shapes(draw: st.DrawFn, dims: tuple[int, ...], min_side: int, max_side: int, max_channels: int,
            max_elements: int, min_reduction_size: int) -> tuple[int, ...]:
    ndim_spatial = draw(st.sampled_from(dims))
    k = 1 + ndim_spatial                     # N and the spatial sides
    lo = max(min_side, 1) if min_reduction_size > 0 else min_side
    c_hi = min(max_channels, max_elements // max(1, lo ** k, min_reduction_size))
    C = draw(st.integers(max(1, min_side), max(1, c_hi)))
    # Draw the reduction sides in a random order so that no axis is always the big one.
    order = draw(st.permutations(range(k)))
    sides = [0] * k
    prod = 1
    for j, axis in enumerate(order):
        remaining = k - j - 1
        if prod == 0:
            hi = max_side
        else:
            budget = max_elements // (C * prod)
            hi = min(max_side, budget // max(1, lo) ** remaining)
        hi = max(hi, lo)
        side = draw(st.integers(lo, hi))
        sides[axis] = side
        prod *= side
    if min_reduction_size > 0 and prod < min_reduction_size:
        # Grow the batch until every channel has enough values, if the budget allows.
        spatial = math.prod(sides[1:])
        n = -(-min_reduction_size // spatial)
        assume(n <= max_side and C * n * spatial <= max_elements)
        sides[0] = n
    return (sides[0], C, *sides[1:])


def batch_norm_shapes(dims: Union[int, Sequence[int]] = 2, min_side: int = 1, max_side: int = 8,
                      max_elements: int = 2048, *, max_channels: Optional[int] = None,
                      min_reduction_size: int = 0) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes (N, C, *spatial) for batch norm.

    dims: number of spatial dimensions, 0 ((N, C), BatchNorm1d), 1 ((N, C, L),
    BatchNorm1d), 2 ((N, C, H, W), BatchNorm2d) or 3 (BatchNorm3d); or a
    sequence of them to draw from.  Every side is in [min_side, max_side]
    (C is at least 1; min_side=0 allows empty inputs), C at most
    ``max_channels`` (default max_side), and the total number of elements at
    most ``max_elements``.  ``min_reduction_size`` > 0 guarantees that
    M = N * prod(spatial) >= it (use 2 for training mode).
    """
    dims = _check_dims(dims)
    if not 0 <= min_side <= max_side or max_side < 1:
        raise ValueError(f"need 0 <= min_side <= max_side and max_side >= 1, got {min_side}, {max_side}")
    if max_channels is None:
        max_channels = max_side
    for d in dims:
        lo = max(min_side, 1) if min_reduction_size > 0 else min_side
        c_hi = min(max_channels, max_elements // max(1, lo ** (d + 1), min_reduction_size))
        if c_hi < max(1, min_side) or (min_reduction_size > 0 and max_side < min(2, min_reduction_size)):
            raise ValueError(f"no shape with {d} spatial dimensions fits: max_elements={max_elements}, "
                             f"min_side={min_side}, max_side={max_side}, max_channels={max_channels}, "
                             f"min_reduction_size={min_reduction_size}")
    return _shapes(dims, int(min_side), int(max_side), int(max_channels), int(max_elements),
                   int(min_reduction_size))


# ----------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------

def module_options(*, affine: Optional[bool] = None,
                   track_running_stats: Optional[bool] = None) -> st.SearchStrategy[ModuleOptions]:
    """Keyword arguments for a BatchNorm constructor (dicts, usable as ``**options``).

    eps: 1e-5 (the default) or values from 1e-8 to 1; momentum: 0.1 (the
    default), None (cumulative average), 0, 1 or values in between; affine
    and track_running_stats: True or False unless fixed by the arguments.
    """
    eps = st.one_of(st.just(1e-5), st.sampled_from([1e-3, 0.1, 1.0, 1e-8]),
                    st.floats(min_value=1e-8, max_value=1.0))
    momentum = st.one_of(st.just(0.1), st.none(), st.sampled_from([0.0, 1.0, 0.01, 0.5, 0.9]),
                         st.floats(min_value=0.0, max_value=1.0))
    flag = st.booleans()
    # fixed_dictionaries is typed for dicts of one value type; these are the TypedDict's keys.
    return cast("st.SearchStrategy[ModuleOptions]", st.fixed_dictionaries({
        "eps": eps,
        "momentum": momentum,
        "affine": flag if affine is None else st.just(bool(affine)),
        "track_running_stats": (flag if track_running_stats is None
                                else st.just(bool(track_running_stats))),
    }))


# ----------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------

def _channel_values(draw: st.DrawFn, kind: str, M: int, rng: np.random.Generator, scale: float, offset: float,
                    dtype: np.dtype[Any]) -> NDArray[np.float64]:
    """M float64 values of one channel, following a recipe."""
    if M == 0:
        return np.zeros(0)
    if kind == "normal":
        v = rng.standard_normal(M)
    elif kind == "uniform":
        v = rng.uniform(-1.0, 1.0, M)
    elif kind == "integers":
        v = rng.integers(-3, 4, M).astype(np.float64)
    elif kind == "constant":
        v = np.full(M, draw(st.floats(-1.0, 1.0, allow_nan=False, width=32)))
    elif kind == "two_values":
        a, b = draw(st.tuples(st.floats(-1.0, 1.0, width=32), st.floats(-1.0, 1.0, width=32)))
        v = np.where(rng.random(M) < draw(st.sampled_from([0.5, 0.1, 0.9])), a, b)
    elif kind == "sparse":
        # Hypothesis arrays: mostly one fill value with a few distinct elements, shrinkable.
        v = draw(hnp.arrays(np.float64, M, elements=st.floats(-1.0, 1.0, width=32)))
    elif kind == "mixture":
        v = rng.standard_normal(M)
        outliers = rng.random(M) < 0.05
        v[outliers] *= draw(st.sampled_from([1e3, 1e2, 1e4]))
    else:  # pragma: no cover
        raise ValueError(kind)
    return offset + scale * v


@st.composite
def _inputs(draw: st.DrawFn, shape: tuple[int, ...], dtype: np.dtype[Any], allow_nan: bool, allow_infinity: bool,
            max_offset: float, kinds: tuple[str, ...]) -> NDArray[Any]:
    N, C = shape[0], shape[1]
    M = N * math.prod(shape[2:])
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    offsets = [o for o in _OFFSETS if abs(o) <= max_offset]
    # One recipe for all channels (the shrink target) or one per channel.
    per_channel = draw(st.booleans())
    shared = None if per_channel else (draw(st.sampled_from(kinds)), draw(st.sampled_from(_SCALES)),
                                       draw(st.sampled_from(offsets)))
    channels = np.empty((C, M))
    for c in range(C):
        kind, scale, offset = shared if shared else (
            draw(st.sampled_from(kinds)), draw(st.sampled_from(_SCALES)), draw(st.sampled_from(offsets)))
        channels[c] = _channel_values(draw, kind, M, rng, scale, offset * scale, dtype)
        if dtype == np.float16 and M and np.max(np.abs(channels[c])) > _FLOAT16_MAX_ABS:
            channels[c] *= 2.0 ** -math.ceil(math.log2(np.max(np.abs(channels[c])) / _FLOAT16_MAX_ABS))
    # (C, N, *spatial) -> (N, C, *spatial)
    x = np.moveaxis(channels.reshape((C, N) + tuple(shape[2:])), 0, 1)
    x = np.ascontiguousarray(x).astype(dtype)
    if (allow_nan or allow_infinity) and x.size and draw(st.booleans()):
        specials = ([np.nan] if allow_nan else []) + ([np.inf, -np.inf] if allow_infinity else [])
        flat = x.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, flat.size - 1))
            flat[i] = draw(st.sampled_from(specials))
    return x


def batch_norm_inputs(shape: Union[Sequence[int], st.SearchStrategy[Sequence[int]]],
                      dtype: npt.DTypeLike = np.float32, *, allow_nan: bool = False,
                      allow_infinity: bool = False, max_offset: float = 1e4,
                      kinds: Sequence[str] = CHANNEL_KINDS) -> st.SearchStrategy[NDArray[Any]]:
    """Arrays of ``shape`` (N, C, ...) and ``dtype`` with varied per-channel structure.

    ``shape`` may be a tuple or a strategy of tuples (then the result is the
    input only; use ``problems`` to know the shape).  Channels follow the
    recipes in ``kinds`` (see CHANNEL_KINDS) with a scale in 1e-3..1e3 and an
    offset of up to ``max_offset`` times the scale, so values are always
    finite in float32; float16 channels beyond 2**14 in magnitude are scaled
    down by a power of two.  NaN (``allow_nan``) and +-inf (``allow_infinity``)
    are put at a few random positions only when allowed.
    """
    dt = _check_dtype(dtype)
    kinds = tuple(kinds)
    if not kinds or any(k not in CHANNEL_KINDS for k in kinds):
        raise ValueError(f"kinds: expected a non-empty subset of {CHANNEL_KINDS}, got {kinds}")
    if isinstance(shape, st.SearchStrategy):
        return shape.flatmap(lambda s: _inputs(tuple(s), dt, allow_nan, allow_infinity, max_offset, kinds))
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or shape[1] < 1:
        raise ValueError(f"shape: expected (N, C, ...) with C >= 1, got {shape}")
    return _inputs(shape, dt, allow_nan, allow_infinity, max_offset, kinds)


# ----------------------------------------------------------------------------
# problems
# ----------------------------------------------------------------------------

#: The modules Problem._setup loads a state into: bnorm's and the reference.
_Module = TypeVar("_Module", bound="Union[_BatchNorm, ReferenceBatchNorm]")

_CLASS_FOR_NDIM = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


@dataclass(frozen=True, eq=False)
class Problem:
    """One batch-norm test case.

    x: the input (N, C, *spatial) of ``dtype``; options: constructor keywords
    (eps, momentum, affine, track_running_stats); training: the mode to run
    in; state: a state_dict (PyTorch keys: weight, bias, running_mean,
    running_var, num_batches_tracked, as the options call for) to load
    before running (float32 arrays for a float16 problem, as a float16 module
    keeps them); dy: an upstream gradient of x's shape and dtype.
    """

    x: NDArray[Any]
    dtype: np.dtype[Any]
    options: ModuleOptions
    training: bool
    state: dict[str, NDArray[Any]] = field(default_factory=dict)
    dy: Union[NDArray[Any], Any] = None  # None only in a Problem built without one (the Any trick)

    # -- derived facts --------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.x.shape

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def reduction_size(self) -> int:
        """M = N * prod(spatial), the number of values per channel."""
        return self.x.size // int(self.x.shape[1])

    @property
    def eps(self) -> float:
        return self.options["eps"]

    @property
    def momentum(self) -> Optional[float]:
        return self.options["momentum"]

    @property
    def weight(self) -> Union[NDArray[Any], Any]:  # None when affine=False (the Any trick)
        """gamma (a copy of state['weight']) or None when affine=False."""
        w = self.state.get("weight")
        return None if w is None else w.copy()

    @property
    def bias(self) -> Union[NDArray[Any], Any]:
        b = self.state.get("bias")
        return None if b is None else b.copy()

    @property
    def uses_batch_stats(self) -> bool:
        """Whether the forward normalises with batch statistics (as torch decides)."""
        return self.training or not self.options["track_running_stats"]

    @property
    def module_class_name(self) -> str:
        """'BatchNorm1d', 'BatchNorm2d' or 'BatchNorm3d', from x.ndim."""
        return _CLASS_FOR_NDIM[self.x.ndim]

    # -- modules ------------------------------------------------------------------
    def _setup(self, module: _Module) -> _Module:
        for key, attr in (("weight", "gamma"), ("bias", "beta"),
                          ("running_mean", "running_mean"), ("running_var", "running_var")):
            if key in self.state:
                getattr(module, attr)[...] = self.state[key]
        if "num_batches_tracked" in self.state:
            module.num_batches_tracked = int(self.state["num_batches_tracked"])
        module.train(self.training)
        return module

    def bnorm_module(self, dtype: Optional[npt.DTypeLike] = None) -> Union[BatchNorm1d, BatchNorm2d, BatchNorm3d]:
        """A bnorm.BatchNorm*d of the right class with this problem's options and state."""
        import bnorm

        cls: type[Union[BatchNorm1d, BatchNorm2d, BatchNorm3d]] = getattr(bnorm, self.module_class_name)
        return self._setup(cls(self.num_features, **self.options,
                               dtype=self.dtype if dtype is None else dtype))

    def reference_module(self) -> ReferenceBatchNorm:
        """A float64 ReferenceBatchNorm with this problem's options and state."""
        from .reference import ReferenceBatchNorm

        return self._setup(ReferenceBatchNorm(self.num_features, **self.options))

    def __repr__(self) -> str:
        state = {k: (v.tolist() if isinstance(v, np.ndarray) and v.ndim else int(v))
                 for k, v in self.state.items()}
        return (f"Problem(x=np.{np.array_repr(self.x, max_line_width=100, precision=10)}, "
                f"dtype=np.{self.dtype.name}, options={self.options!r}, training={self.training}, "
                f"state={state!r}, dy=<{self.dy.dtype if self.dy is not None else None} "
                f"array {self.shape}>)")


def _state_strategy(draw: st.DrawFn, x: NDArray[Any], dtype: npt.DTypeLike, options: ModuleOptions,
                    rng: np.random.Generator) -> dict[str, NDArray[Any]]:
    C: int = x.shape[1]
    state: dict[str, NDArray[Any]] = {}
    # float16 modules keep their parameters and running statistics in float32
    dtype = np.float32 if dtype == np.float16 else dtype
    if options["affine"]:
        kind = draw(st.sampled_from(["default", "random", "signed", "zeros_and_negative"]))
        if kind == "default":
            w, b = np.ones(C), np.zeros(C)
        elif kind == "random":
            w, b = rng.uniform(0.5, 2.0, C), rng.standard_normal(C)
        elif kind == "signed":
            w, b = rng.uniform(-2.0, 2.0, C), rng.uniform(-2.0, 2.0, C) * 10.0
        else:
            w = rng.choice([0.0, -1.0, 1.0, 3.0], C)
            b = rng.choice([0.0, -1.0, 0.5], C)
        state["weight"] = w.astype(dtype)
        state["bias"] = b.astype(dtype)
    if options["track_running_stats"]:
        kind = draw(st.sampled_from(["default", "near_batch", "random"]))
        if kind == "default" or x.size == 0:
            rm, rv = np.zeros(C), np.ones(C)
        else:
            xs = x.astype(np.float64)
            axes = (0,) + tuple(range(2, x.ndim))
            finite = np.where(np.isfinite(xs), xs, 0.0)
            mean, var = finite.mean(axis=axes), finite.var(axis=axes)
            if kind == "near_batch":
                rm = mean + rng.standard_normal(C) * np.sqrt(var) * 0.5
                rv = var * np.exp(rng.uniform(-1.0, 1.0, C))
            else:
                rm = rng.standard_normal(C) * 3.0
                rv = rng.choice([0.0, 0.5, 1.0, 4.0], C)
        state["running_mean"] = rm.astype(dtype)
        state["running_var"] = rv.astype(dtype)
        state["num_batches_tracked"] = np.array(draw(st.sampled_from([0, 1, 2, 10])), dtype=np.int64)
    return state


@st.composite
def _problems(draw: st.DrawFn, dims: tuple[int, ...], dtypes: tuple[np.dtype[Any], ...], training: Optional[bool],
              max_side: int, max_elements: int, allow_nan: bool, max_offset: float,
              options: st.SearchStrategy[ModuleOptions], kinds: tuple[str, ...]) -> Problem:
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    opts = draw(options)
    is_training = draw(st.booleans()) if training is None else bool(training)
    batch_stats = is_training or not opts["track_running_stats"]
    shape = draw(batch_norm_shapes(dims, 1, max_side, max_elements,
                                   min_reduction_size=2 if batch_stats else 0))
    x = draw(batch_norm_inputs(shape, dtype, allow_nan=allow_nan, max_offset=max_offset, kinds=kinds))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    state = _state_strategy(draw, x, dtype, opts, rng)
    dy_kind = draw(st.sampled_from(["normal", "constant_per_channel", "uniform"]))
    if dy_kind == "normal":
        dy = rng.standard_normal(shape)
    elif dy_kind == "uniform":
        dy = rng.uniform(-1.0, 1.0, shape)
    else:  # gives dx == 0 exactly in training mode
        dy = np.broadcast_to(rng.standard_normal(shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2)),
                             shape)
    return Problem(x=x, dtype=dtype, options=opts, training=is_training, state=state,
                   dy=np.ascontiguousarray(dy, dtype=dtype))


def problems(dims: Union[int, Sequence[int]] = 2,
             dtypes: Union[npt.DTypeLike, Sequence[npt.DTypeLike]] = FLOAT_DTYPES,
             training: Optional[bool] = True,
             *, max_side: int = 8, max_elements: int = 2048, allow_nan: bool = False,
             max_offset: float = 1e4, options: Optional[st.SearchStrategy[ModuleOptions]] = None,
             kinds: Sequence[str] = CHANNEL_KINDS) -> st.SearchStrategy[Problem]:
    """Complete batch-norm problems, as ``Problem`` instances.

    dims: spatial dimensions (or a sequence to draw from), see
    batch_norm_shapes; dtypes: the dtypes to draw from (FLOAT_DTYPES by
    default; ALL_DTYPES adds float16, whose results
    ``assert_batch_norm_close(..., np.float16, ...)`` checks); training: True,
    False or None (draw both).  Whenever the problem normalises with batch
    statistics (training, or track_running_stats=False) every channel has
    at least 2 values.  ``options`` overrides module_options() (e.g.
    ``module_options(affine=True)`` or ``st.just({...})``).  ``allow_nan``,
    ``max_offset`` and ``kinds`` are passed to batch_norm_inputs: e.g.
    ``max_offset=0, kinds=("normal", "uniform", "integers", "mixture")``
    gives well-conditioned inputs only (channel means within a few standard
    deviations of zero).
    """
    dims = _check_dims(dims)
    checked_dtypes = tuple(_check_dtype(d) for d in (dtypes if isinstance(dtypes, (tuple, list)) else (dtypes,)))
    return _problems(dims, checked_dtypes, training, int(max_side), int(max_elements), bool(allow_nan),
                     float(max_offset), module_options() if options is None else options,
                     tuple(kinds))
