"""Build of bnorm's C extension.

The block loops (src/kernels/block_*.c) are compiled once per x86-64 level with that
level's -m flags; everything else is compiled for the baseline, and the level is
chosen at import from the CPU's features. No tuning for the build machine's CPU and no fast-math: a wheel
must run on any x86-64 CPU and must not change the process's floating-point mode.
"""
import platform
import sys
from pathlib import Path

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SRC = Path("src")

COMMON_SOURCES = [
    "binding/module.c",
    "binding/batchnorm_type.c",
    "binding/functional.c",
    "binding/phases.c",
    "binding/arrays.c",
    "binding/policy.c",
    "binding/alloc.c",
    "kernels/fused.c",
    "kernels/cache.c",
    "kernels/dispatch.c",
    "kernels/pool.c",
    "kernels/workspace.c",
    "kernels/block_baseline.c",
]

# Extra flags of the x86-64 levels beyond the baseline, by source file.
X86_LEVEL_SOURCES = {
    "kernels/block_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
    "kernels/block_avx512.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"],
}

# -ffp-contract=off: no fused multiply-add, so every level rounds identically and
# results do not depend on which one the CPU gets.
CFLAGS = ["-std=c11", "-O3", "-ffp-contract=off", "-fno-strict-aliasing", "-Wall", "-Wextra",
          "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-Wno-cast-function-type"]


def builds_x86_levels(compiler_type):
    return platform.machine().lower() in ("x86_64", "amd64") and compiler_type == "unix"


class BuildWithLevels(build_ext):
    """Compiles the per-level block loops with their own flags and links them in."""

    def build_extension(self, ext):
        if builds_x86_levels(self.compiler.compiler_type):
            ext.define_macros.append(("BN_HAVE_X86_LEVELS", "1"))
            for source, flags in X86_LEVEL_SOURCES.items():
                ext.extra_objects += self.compiler.compile(
                    [str(SRC / source)],
                    output_dir=self.build_temp,
                    macros=ext.define_macros,
                    include_dirs=ext.include_dirs,
                    extra_postargs=ext.extra_compile_args + flags,
                    debug=self.debug,
                )
        super().build_extension(ext)


core = Extension(
    "bnorm._core",
    sources=[str(SRC / s) for s in COMMON_SOURCES],
    depends=[str(p) for p in SRC.glob("*/*.h")] + [str(SRC / s) for s in X86_LEVEL_SOURCES],
    include_dirs=[numpy.get_include(), str(SRC / "kernels"), str(SRC / "binding")],
    # Built against NumPy 2, runs on NumPy >= 1.23.
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_23_API_VERSION"),
                   ("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION")],
    extra_compile_args=CFLAGS if sys.platform != "win32" else [],
    extra_link_args=["-pthread"] if sys.platform != "win32" else [],
)

setup(ext_modules=[core], cmdclass={"build_ext": BuildWithLevels})
