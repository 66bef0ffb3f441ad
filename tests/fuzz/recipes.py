"""Pytest side: Hypothesis strategies for value recipes and programs."""

from __future__ import annotations

import functools

from hypothesis import strategies as st

from .vocabulary import DTYPES, FILLS, INF, LAYOUTS, MODULE_ATTRS, MUTATIONS, NAN, READONLY_ATTRS, WEIRD_LITERALS


CLASSES = {"BatchNorm1d": (2, 3), "BatchNorm2d": (4, 4), "BatchNorm3d": (5, 5)}

literals = st.one_of(
    st.sampled_from(WEIRD_LITERALS),
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
).map(lambda v: ("lit", v))

scalars = st.tuples(st.just("scalar"), st.sampled_from(["float32", "float64", "float16", "int64", "int8", "bool",
                                                        "complex128", "uint64"]),
                    st.sampled_from([0, 1, 2, -1, 3.5, NAN, INF, 1e-5, 2**40]))


def _shape(n, c, spatial, rank):
    if rank <= 2:
        return (n, c)[:rank]
    return (n, c) + (tuple(spatial) + (2,) * rank)[: rank - 2]


@functools.lru_cache(maxsize=None)
def shapes_near(ndim_range, channels):
    """Mostly valid (N, C, *spatial) shapes, sometimes a wrong rank, channel count or an empty axis."""
    lo, hi = ndim_range
    return st.builds(
        _shape,
        st.integers(0, 4) | st.sampled_from([2, 3]),                             # N
        st.sampled_from([channels] * 4 + [channels + 1, 1, 0]),                  # C
        st.lists(st.integers(0, 4) | st.sampled_from([1, 3, 5]), max_size=3),   # spatial sizes
        st.integers(lo, hi) | st.integers(lo, hi) | st.integers(0, 6),           # rank
    )


@functools.lru_cache(maxsize=None)
def arrays(ndim_range, channels, dtypes=None):
    return st.tuples(
        st.just("array"),
        st.sampled_from(dtypes) if dtypes else st.sampled_from(["float32"] * 6 + ["float64"] * 3 + DTYPES),
        shapes_near(ndim_range, channels),
        st.sampled_from(LAYOUTS),
        st.sampled_from(FILLS),
    )


@functools.lru_cache(maxsize=None)
def param_arrays(channels, dtypes=("float32", "float64", "float16")):
    return st.tuples(st.just("array"), st.sampled_from(list(dtypes) + ["float32", "int64", "object", ">f4"]),
                     st.sampled_from([(channels,)] * 6 + [(channels + 1,), (), (0,), (1, channels), (channels, 1)]),
                     st.sampled_from(["c"] * 6 + ["strided", "reversed", "readonly", "unaligned", "byteswapped",
                                                  "broadcast", "broadcast_writeable", "list", "masked", "view",
                                                  "zero_d_item"]),
                     st.sampled_from(FILLS))


huge_views = st.tuples(st.just("huge_view"), st.sampled_from(["float32", "float64"]),
                       st.lists(st.sampled_from([1, 2, 3, 2**16, 2**20, 2**31, 2**40, 2**62]), min_size=2,
                                max_size=5))


@functools.lru_cache(maxsize=None)
def values(ndim_range, channels, dtypes=None):
    """Anything: mostly arrays near what the call wants, references, literals and oddities."""
    return st.one_of(
        arrays(ndim_range, channels, dtypes),
        arrays(ndim_range, channels, dtypes),
        literals,
        scalars,
        st.just(("object",)),
        st.tuples(st.just("ns"), st.sampled_from(["x", "y", "dy", "dx", "base", "save_mean", "save_invstd",
                                                  "state_dict"])),
        st.tuples(st.just("attr"), st.integers(0, 2), st.sampled_from(["gamma", "beta", "running_mean", "running_var",
                                                                         "grad_gamma"])),
        st.tuples(st.just("module"), st.integers(0, 2)),
        huge_views,
    )


@functools.lru_cache(maxsize=None)
def out_kwargs(ndim_range, channels):
    return st.one_of(
        st.just({}),
        st.just({}),
        st.builds(lambda v: {"out": v}, st.one_of(
            arrays(ndim_range, channels),
            st.tuples(st.just("ns"), st.sampled_from(["x", "y", "dy", "dx", "base"])),
            literals,
        )),
        st.builds(lambda v: {"not_a_keyword": v}, literals),
    )


CONSTRUCTOR_OPTIONS = {
    "eps": st.one_of(st.sampled_from([("lit", 1e-5), ("lit", 1e-3), ("lit", 0.5)]), literals, scalars),
    "momentum": st.one_of(st.sampled_from([("lit", 0.1), ("lit", None), ("lit", 0.0), ("lit", 1.0)]), literals,
                          scalars),
    "affine": st.one_of(st.sampled_from([("lit", True), ("lit", False)]), literals, arrays((1, 2), 2)),
    "track_running_stats": st.one_of(st.sampled_from([("lit", True), ("lit", False)]), literals),
    "dtype": st.one_of(st.sampled_from([("lit", v) for v in ("float32", "float64", "float16", "f4", "<f8", ">f4", "d",
                                                              "int32", "O", "c8", "U3", "V4", "", "datetime64",
                                                              None)]),
                       literals, st.just(("lit", [("a", "f4")]))),
    "activation": st.one_of(st.sampled_from([("lit", None), ("lit", "relu"), ("lit", "ReLU"), ("lit", "relu "),
                                             ("lit", b"relu"), ("lit", "gelu")]), literals),
    "not_an_option": literals,
}
NUM_FEATURES = st.one_of(
    st.sampled_from([("lit", v) for v in (0, -1, -2**63, 2**31, 2**62, 2**63 - 1, 2**63, 6148914691236517206, 1 << 40)]),
    literals, scalars)


@st.composite
def constructor_ops(draw, cls=None, channels=None):
    cls = cls or draw(st.sampled_from(sorted(CLASSES)))
    channels = channels if channels is not None else draw(st.integers(1, 5))
    num_features = ("lit", channels) if draw(st.integers(0, 2)) else draw(NUM_FEATURES)
    good = draw(st.booleans())
    chosen = draw(st.lists(st.sampled_from(sorted(CONSTRUCTOR_OPTIONS)), unique=True, max_size=4))
    kwargs = {}
    for key in chosen:
        if key == "not_an_option" and good:
            continue
        kwargs[key] = draw(CONSTRUCTOR_OPTIONS[key])
    args = [num_features]
    if draw(st.integers(0, 4)) == 0:  # positional options, sometimes too many
        args += [draw(literals) for _ in range(draw(st.integers(1, 7)))]
        kwargs = {}
    return ("construct", cls, args, kwargs)


def good_arrays(cls, channels, dtype):
    """Valid inputs for the module: right dtype, rank and channel count, any layout and fill."""
    lo, hi = CLASSES[cls]
    shapes = st.builds(lambda n, rank, spatial: (n, channels) + (tuple(spatial) + (2,) * 3)[: rank - 2],
                       st.sampled_from([2, 3, 4, 1, 0]), st.integers(lo, hi),
                       st.lists(st.sampled_from([1, 2, 3, 4, 0]), max_size=3))
    return st.tuples(st.just("array"), st.just(dtype), shapes,
                     st.sampled_from(["c", "c", "channels_last", "channels_last", "strided", "f", "reversed",
                                      "unaligned", "byteswapped", "readonly", "broadcast", "view", "masked"]),
                     st.sampled_from(FILLS))


LOAD_KEYS = st.sampled_from(["weight", "bias", "running_mean", "running_var", "num_batches_tracked",
                             "num_batches_tracked", "extra", "running_mean "])
MODULE_KINDS = (["forward"] * 6 + ["call"] * 2 + ["backward"] * 5 +
                ["train", "eval", "state_dict", "load_state_dict", "load_state_dict", "setattr", "setattr", "setattr",
                 "delattr", "getattr", "copy", "fold"])


@functools.lru_cache(maxsize=None)
def module_ops(cls, channels, dtype, n_modules=2, mutations=False):
    nd = CLASSES[cls]
    good = good_arrays(cls, channels, dtype)
    any_value = values(nd, channels)
    m = st.integers(0, n_modules - 1)
    kinds = MODULE_KINDS + (["mutate"] * 6 if mutations else [])
    load_values = st.one_of(
        param_arrays(channels, ("float32", "float64", "float16", "int64", "bool", "uint8", "complex64", "U3")),
        st.tuples(st.just("scalar"), st.sampled_from(["int64", "float64", "uint64"]),
                  st.sampled_from([0, 5, -1, NAN, INF, 2.5, 2**63 - 1, 2**64 - 1])),
        literals)
    edits = st.lists(st.one_of(st.tuples(st.just("drop"), st.integers(0, 4)),
                               st.tuples(st.just("set"), LOAD_KEYS, load_values),
                               st.tuples(st.just("set"), LOAD_KEYS, load_values)), max_size=4)
    setattr_values = {
        "array": st.one_of(param_arrays(channels), param_arrays(channels), values((1, 2), channels),
                           st.tuples(st.just("attr"), st.integers(0, 2), st.sampled_from(
                               ["gamma", "beta", "running_mean", "running_var"]))),
        "num_batches_tracked": st.one_of(st.integers(-2, 2**63 + 2).map(lambda v: ("lit", v)),
                                         st.sampled_from([("lit", 2**63 - 1), ("lit", 2**63 - 2)]), scalars, literals,
                                         param_arrays(1)),
        "other": values((1, 2), channels),
    }
    by_kind = {
        "forward": st.tuples(st.just("forward"), m, st.one_of(good, good, good, any_value), out_kwargs(nd, channels)),
        "call": st.tuples(st.just("call"), m, st.one_of(good, good, any_value), out_kwargs(nd, channels)),
        "backward": st.tuples(st.just("backward"), m,
                              st.one_of(good, good, st.tuples(st.just("ns"), st.sampled_from(["x", "y", "dx"])),
                                        any_value),
                              out_kwargs(nd, channels)),
        "train": st.tuples(st.just("train"), m,
                           st.lists(st.one_of(literals, arrays((1, 1), 1), st.just(("lit", False))), max_size=2),
                           st.one_of(st.just({}), st.builds(lambda v: {"mode": v}, literals),
                                     st.builds(lambda v: {"bad": v}, literals))),
        "eval": st.tuples(st.just("eval"), m, st.lists(literals, max_size=1), st.just({})),
        "state_dict": st.tuples(st.just("state_dict"), m, st.lists(literals, max_size=1)),
        "load_state_dict": st.tuples(
            st.just("load_state_dict"), m,
            st.one_of(st.tuples(st.just("state_dict"), st.integers(0, 2), edits),
                      st.tuples(st.just("state_dict"), st.integers(0, 2), edits), literals),
            st.one_of(st.just({}), st.builds(lambda v: {"strict": v}, literals))),
        "setattr": st.one_of(*[st.tuples(st.just("setattr"), m, st.just(attr), setattr_values[
            "array" if attr in ("gamma", "beta", "weight", "bias", "running_mean", "running_var") else
            attr if attr == "num_batches_tracked" else "other"]) for attr in MODULE_ATTRS * 2 + READONLY_ATTRS]),
        "delattr": st.tuples(st.just("delattr"), m, st.sampled_from(MODULE_ATTRS + READONLY_ATTRS)),
        "getattr": st.tuples(st.just("getattr"), m, st.sampled_from(MODULE_ATTRS + READONLY_ATTRS)),
        "copy": st.tuples(st.just("copy"), m, st.sampled_from(["copy", "deepcopy", "pickle"])),
        "fold": st.tuples(st.just("fold"), m, st.lists(st.one_of(
            st.tuples(st.just("array"), st.sampled_from(["float32", "float64", "float16", "int64", "object"]),
                      st.sampled_from([(channels, 3, 2, 2), (channels, 4), (channels,), (channels + 1, 2), ()]),
                      st.sampled_from(["c", "c", "strided", "f", "broadcast", "list"]), st.sampled_from(FILLS)),
            param_arrays(channels), literals), min_size=0, max_size=3)),
        "mutate": st.tuples(st.just("mutate"),
                            st.one_of(st.tuples(st.just("attr"), m, st.sampled_from(
                                ["gamma", "beta", "running_mean", "running_var"])),
                                      st.tuples(st.just("ns"), st.sampled_from(["x", "dy", "y", "base", "dx"]))),
                            st.sampled_from(MUTATIONS)),
    }
    return st.sampled_from(kinds).flatmap(lambda kind: by_kind[kind])


MODULE_CHOICES = {key: st.sampled_from(choices) for key, choices in (
    ("affine", [True, True, False]), ("track_running_stats", [True, True, False]),
    ("momentum", [0.1, 0.1, None, 0.0, 1.0]), ("eps", [1e-5, 1e-5, 0.5]), ("activation", [None, None, "relu"]))}
WARM_LAYOUTS = st.sampled_from(["c", "channels_last", "strided"])


@st.composite
def module_programs(draw, mutations=False):
    cls = draw(st.sampled_from(sorted(CLASSES)))
    channels = draw(st.integers(1, 5) | st.sampled_from([16, 64]) if mutations else st.integers(1, 5))
    dtype = draw(st.sampled_from(["float32", "float32", "float64", "float16"]))
    construct = []
    for _ in range(draw(st.integers(1, 2))):
        kwargs = {"dtype": ("lit", dtype)}
        for key, choices in MODULE_CHOICES.items():
            kwargs[key] = ("lit", draw(choices))
        construct.append(("construct", cls, [("lit", channels)], kwargs))
    nd = CLASSES[cls]
    # a first forward and backward on a valid input of the module's dtype, so later ops meet real state
    shape = (3, channels) + (2,) * (nd[0] - 2)
    warm = [("forward", 0, ("array", dtype, shape, draw(WARM_LAYOUTS), "normal"), {}),
            ("backward", 0, ("array", dtype, shape, "c", "normal"), {})]
    ops = draw(st.lists(module_ops(cls, channels, dtype, len(construct), mutations), min_size=3, max_size=14))
    if mutations:
        # mutate, then use: an array changed between two calls, then the next forward and backward
        good = good_arrays(cls, channels, dtype)
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(ops)))
            mutate = draw(module_ops(cls, channels, dtype, len(construct), True).filter(lambda op: op[0] == "mutate"))
            ops[at:at] = [mutate, ("forward", 0, draw(good), {}), ("backward", 0, draw(good), {})]
    return construct + warm + ops


@functools.lru_cache(maxsize=None)
def _functional_parts(channels, dtype):
    nd = (2, 5)
    stats = st.one_of(param_arrays(channels, (dtype,)), st.just(("lit", None)), literals,
                      st.tuples(st.just("ns"), st.sampled_from(["x", "save_mean", "y"])))
    mine = arrays(nd, channels, (dtype,))
    return {
        "x": st.one_of(mine, mine, values(nd, channels)),
        "running_mean": stats, "running_var": stats, "weight": stats, "bias": stats,
        "training": st.one_of(st.sampled_from([("lit", True), ("lit", False)]), literals),
        "momentum": st.one_of(st.sampled_from([("lit", 0.1), ("lit", 1.0), ("lit", 0.0)]), literals),
        "eps": st.one_of(st.sampled_from([("lit", 1e-5), ("lit", 0.1)]), literals),
        "out": st.one_of(mine, st.tuples(st.just("ns"), st.sampled_from(["x", "y"])), literals),
        "dy": st.one_of(mine, st.tuples(st.just("ns"), st.sampled_from(["y", "x"])), values(nd, channels)),
        "b_x": st.one_of(st.just(("ns", "x")), st.just(("ns", "x")), values(nd, channels)),
        "save_mean": st.one_of(st.just(("ns", "save_mean")), st.just(("ns", "save_mean")), param_arrays(channels),
                               literals),
        "save_invstd": st.one_of(st.just(("ns", "save_invstd")), st.just(("ns", "save_invstd")),
                                 param_arrays(channels), literals),
        "b_out": st.one_of(mine, st.just(("ns", "x")), st.just(("ns", "y")), literals),
        "activation": st.one_of(st.sampled_from([("lit", None), ("lit", "relu"), ("lit", "relu")]), literals),
    }


FUNCTIONAL_NAMES = ["running_mean", "running_var", "weight", "bias", "training", "momentum", "eps", "out"]
FUNCTIONAL_KEYWORDS = FUNCTIONAL_NAMES + ["activation", "activation"]


@st.composite
def functional_ops(draw):
    channels = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(["float32", "float32", "float64", "float16"]))
    parts = _functional_parts(channels, dtype)
    x = draw(parts["x"])
    if draw(st.booleans()):  # positional
        args = [x] + [draw(parts[k]) for k in FUNCTIONAL_NAMES[: draw(st.integers(0, 8))]]
        kwargs = {}
    else:
        args = [x]
        chosen = draw(st.lists(st.sampled_from(FUNCTIONAL_KEYWORDS), unique=True, max_size=5))
        kwargs = {k: draw(parts[k]) for k in chosen}
        if draw(st.integers(0, 9)) == 0:
            kwargs["bogus"] = draw(literals)
    forward = ("batch_norm", args, kwargs)
    # backward: mostly the results of that forward, sometimes anything
    bargs = [draw(parts["dy"]), draw(parts["b_x"]), draw(parts["save_mean"]), draw(parts["save_invstd"])]
    bkwargs = {}
    if draw(st.booleans()):
        bkwargs["weight"] = draw(parts["weight"])
    if draw(st.booleans()):
        bkwargs["training"] = draw(parts["training"])
    if draw(st.booleans()):
        bkwargs["out"] = draw(parts["b_out"])
    if draw(st.booleans()):
        bkwargs["bias"] = draw(parts["bias"])
    if "activation" in kwargs or draw(st.integers(0, 3)) == 0:
        bkwargs["activation"] = kwargs.get("activation") or draw(parts["activation"])
    if draw(st.integers(0, 3)) == 0:
        bargs = bargs[: draw(st.integers(0, 4))]
    return [forward, ("batch_norm_backward", bargs, bkwargs)]
