"""Build fflib._core from csrc/ against OpenBLAS.

OpenBLAS comes from the scipy-openblas32 wheel (headers + shared library, a build and run
dependency) unless FFLIB_BLAS=system (link -lopenblas) or FFLIB_BLAS=none (the plain C loop)
is set.  The module finds the wheel's library at run time through an rpath, and fflib's
__init__ also preloads it, so a relocated environment still works.
"""
import glob
import os

import numpy
from setuptools import Extension, setup

sources = sorted(glob.glob("csrc/*.c"))
define_macros = [("NPY_NO_DEPRECATED_API", "NPY_1_25_API_VERSION")]
include_dirs = ["csrc", numpy.get_include()]
library_dirs, libraries, extra_link_args = [], [], ["-pthread"]
extra_compile_args = ["-std=c11", "-O3", "-Wall", "-Wextra", "-fno-math-errno", "-pthread"]
if os.environ.get("FFLIB_NATIVE", "0") == "1":
    extra_compile_args.append("-march=native")

blas = os.environ.get("FFLIB_BLAS", "scipy-openblas32")
if blas == "scipy-openblas32":
    import scipy_openblas32 as sob

    define_macros.append(("FF_USE_SCIPY_OPENBLAS", "1"))
    include_dirs.append(sob.get_include_dir())
    library_dirs.append(sob.get_lib_dir())
    libraries.append(sob.get_library())
    extra_link_args.append("-Wl,-rpath," + sob.get_lib_dir())
elif blas == "system":
    define_macros.append(("FF_USE_OPENBLAS", "1"))
    libraries.append("openblas")
elif blas != "none":
    raise SystemExit(f"FFLIB_BLAS must be scipy-openblas32, system or none, got {blas!r}")

setup(
    ext_modules=[
        Extension(
            "fflib._core",
            sources=sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            library_dirs=library_dirs,
            libraries=libraries + ["m"],
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]
)
