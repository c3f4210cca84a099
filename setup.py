"""Build fflib._core from csrc/ against OpenBLAS.

OpenBLAS comes from the scipy-openblas32 wheel (headers + shared library, a build and run
dependency) unless FFLIB_BLAS=system (link -lopenblas) or FFLIB_BLAS=none (the plain C loop)
is set.  At run time the module finds the wheel's library through a RUNPATH relative to itself
($ORIGIN/../scipy_openblas32/lib, where pip installs scipy-openblas32 beside fflib), and
fflib._loader preloads it from the installed scipy_openblas32 as well, so an in-place build or
an unusual layout still works.  No absolute path of the build environment (a temporary
directory under pip's build isolation) is recorded in the module.

Builds are keyed by their configuration (BLAS choice, FFLIB_NATIVE, flags): objects go to a
build/temp directory per configuration, and a module built with another configuration is
rebuilt rather than reused, so `FFLIB_BLAS=none pip install .` after an OpenBLAS build really
gives the plain C build.
"""
import glob
import hashlib
import json
import os
import shutil

import numpy
import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

# older setuptools ignore pyproject.toml's [project] table and build a nameless, empty package
# (possible with pip's --no-build-isolation, which skips pyproject's build requirements)
if int(setuptools.__version__.split(".")[0]) < 77:
    raise SystemExit(f"building fflib needs setuptools >= 77, found {setuptools.__version__}: "
                     "pip install -U 'setuptools>=77' (or build without --no-build-isolation)")

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
    # relative to the installed module: site-packages/fflib/_core*.so -> site-packages/scipy_openblas32/lib
    extra_link_args.append("-Wl,-rpath,$ORIGIN/../scipy_openblas32/lib")
elif blas == "system":
    define_macros.append(("FF_USE_OPENBLAS", "1"))
    libraries.append("openblas")
elif blas != "none":
    raise SystemExit(f"FFLIB_BLAS must be scipy-openblas32, system or none, got {blas!r}")


class BuildExtKeyed(build_ext):
    """build_ext that never reuses a module built with another configuration."""

    def _key(self, ext):
        cfg = [blas, ext.define_macros, ext.extra_compile_args, ext.extra_link_args, ext.libraries,
               ext.library_dirs, ext.include_dirs]
        return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]

    def build_extension(self, ext):
        key = self._key(ext)
        base_temp = self.build_temp
        self.build_temp = os.path.join(base_temp, f"{blas}-{key}")
        ext_path = os.path.abspath(self.get_ext_fullpath(ext.name))
        # one stamp per output path, holding the key of the configuration that built it
        stamp = os.path.join(base_temp, "config-" + hashlib.sha256(ext_path.encode()).hexdigest()[:16])
        try:
            with open(stamp) as f:
                stale = f.read().strip() != key
        except OSError:
            stale = True
        force = self.force
        if stale:
            self.force = True
        try:
            super().build_extension(ext)
        finally:
            self.force, self.build_temp = force, base_temp
        os.makedirs(base_temp, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(key + "\n")


class BuildPyWithHeader(build_py):
    """Install csrc/fflib.h as fflib/include/fflib.h (one source of truth: the copy is made at build)."""

    def run(self):
        super().run()
        if os.path.exists(os.path.join("csrc", "fflib.h")):
            dest = os.path.join(self.build_lib, "fflib", "include")
            os.makedirs(dest, exist_ok=True)
            shutil.copyfile(os.path.join("csrc", "fflib.h"), os.path.join(dest, "fflib.h"))

    def get_outputs(self, include_bytecode=True):
        out = super().get_outputs(include_bytecode)
        return out + [os.path.join(self.build_lib, "fflib", "include", "fflib.h")]


setup(
    cmdclass={"build_ext": BuildExtKeyed, "build_py": BuildPyWithHeader},
    ext_modules=[
        Extension(
            "fflib._core",
            sources=sources,
            depends=sorted(glob.glob("csrc/*.h")),
            include_dirs=include_dirs,
            define_macros=define_macros,
            library_dirs=library_dirs,
            libraries=libraries + ["m"],
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]
)
