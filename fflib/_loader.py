"""Load the compiled core, making sure the OpenBLAS it links against is found."""
import ctypes
import os


def _preload_openblas() -> None:
    # The extension finds scipy-openblas32 through a RUNPATH relative to itself
    # ($ORIGIN/../scipy_openblas32/lib, the layout pip installs); preloading the library from
    # the installed scipy_openblas32 as well covers in-place builds and other layouts (the
    # dynamic loader matches the already-loaded library by its soname).
    try:
        import scipy_openblas32 as sob
    except ImportError:  # a build with FFLIB_BLAS=none or system does not need it
        return
    path = os.path.join(sob.get_lib_dir(), sob.get_library(fullname=True))
    if os.path.exists(path):
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass


_preload_openblas()
try:
    from . import _core  # noqa: E402
except ImportError as e:
    if "libscipy_openblas" in str(e):
        raise ImportError(
            f"fflib's compiled core could not load OpenBLAS ({e}): it was built against "
            "scipy-openblas32, which this Python cannot import; install it (pip install "
            "scipy-openblas32) or rebuild fflib with FFLIB_BLAS=none.") from e
    # the usual cause: importing the source tree, which has no build
    raise ImportError(
        f"fflib's compiled core could not be imported ({e}). If you are inside the fflib source "
        "directory, Python imports the unbuilt sources from there: run from another directory, "
        "or build in place with `pip install -e .`.") from e

__all__ = ["_core"]
