"""The recipe vocabulary that the pytest side draws from and the child side builds."""

ALLOWED = ("TypeError", "ValueError", "RuntimeError", "AttributeError", "KeyError", "OverflowError", "MemoryError")

NAN, INF = float("nan"), float("inf")
WEIRD_LITERALS = [
    None, True, False, 0, 1, -1, 2, 3, 2**31, 2**31 - 1, 2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**64, 10**100,
    0.0, -0.0, 0.5, 1.0, 1.5, -1e-5, 1e-5, 1e-300, 5e-324, 1e308, NAN, INF, -INF, 1j, complex(NAN, 0),
    "", "a", "float32", "float64", "float16", "cpu", b"", b"\x00\x01", bytearray(b"ab"),
    [], [1.0], [1.0, 2.0], [[1.0, 2.0], [3.0, 4.0]], [[1.0], [1.0, 2.0]], [None], [[[]]], (), (1,), (1.0, "a"),
    {}, {"weight": 1.0}, {1: 2}, set(), frozenset([1]), range(3), slice(1), Ellipsis, NotImplemented,
]
DTYPES = ["float32", "float64", "float16", ">f4", ">f8", "longdouble", "int8", "int64", "uint8", "bool", "complex64",
          "object", "U3", "S3", "struct", "datetime64[s]", "timedelta64[s]", "V8"]
LAYOUTS = ["c", "c", "c", "f", "channels_last", "strided", "reversed", "transposed", "broadcast", "broadcast_writeable",
           "readonly", "unaligned", "byteswapped", "masked", "subclass", "view", "list", "nested_list", "zero_d_item"]
FILLS = ["normal", "normal", "normal", "offset", "zeros", "constant", "nan_one", "inf_one", "huge", "tiny", "ints"]
MODULE_ATTRS = ["gamma", "beta", "weight", "bias", "running_mean", "running_var", "num_batches_tracked", "training",
                "eps", "momentum"]
READONLY_ATTRS = ["num_features", "affine", "track_running_stats", "dtype", "activation", "grad_gamma",
                  "grad_beta", "not_an_attribute", "forward", "__class__"]
MUTATIONS = ["fill_nan", "fill_inf", "fill_zero", "fill_big", "resize_smaller", "resize_larger", "resize_empty",
             "reshape_2d", "readonly", "writeable"]
