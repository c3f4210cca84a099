"""Load the compiled core, making sure the OpenBLAS it links against is found."""
import ctypes
import os


def _preload_openblas():
    # The extension carries an rpath to the scipy-openblas32 library; preloading it as well
    # keeps a moved or copied environment working (the loader matches it by soname).
    try:
        import scipy_openblas32 as sob
    except ImportError:
        return
    path = os.path.join(sob.get_lib_dir(), sob.get_library(fullname=True))
    if os.path.exists(path):
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass


_preload_openblas()
from . import _core  # noqa: E402

__all__ = ["_core"]
