"""Reporting of the build and run-time configuration."""
import platform
from typing import TypedDict

import numpy as np

from . import _core
from ._version import __version__


class Config(TypedDict):
    """What config() returns."""

    bnorm: str
    numpy: str
    python: str
    machine: str
    simd_level: str
    supported_simd_levels: list[str]
    num_threads: int


def config() -> Config:
    """The version, the kernels' SIMD level (and the ones this CPU supports), and the thread count."""
    return {
        "bnorm": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "simd_level": _core.simd_level(),
        "supported_simd_levels": list(_core.supported_simd_levels()),
        "num_threads": _core.get_num_threads(),
    }


def show_config() -> None:
    """Print config(), one item a line."""
    for key, value in config().items():
        print(f"{key + ':':22s}{value}")
