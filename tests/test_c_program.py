"""The C core without Python: compile tests/c/test_train.c against csrc/ and run it."""
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = sorted(p for p in (REPO / "csrc").glob("*.c") if p.name != "_core.c")


def _compile(tmp_path, blas):
    cc = shutil.which("gcc") or shutil.which("cc") or sysconfig.get_config_var("CC").split()[0]
    exe = tmp_path / f"test_train_{blas}"
    cmd = [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(REPO / "csrc"),
           str(REPO / "tests" / "c" / "test_train.c"), *map(str, CORE), "-o", str(exe)]
    if blas == "openblas":
        sob = pytest.importorskip("scipy_openblas32")
        cmd += ["-DFF_USE_SCIPY_OPENBLAS=1", "-I", sob.get_include_dir(), "-L", sob.get_lib_dir(),
                "-l" + sob.get_library(), "-Wl,-rpath," + sob.get_lib_dir()]
    cmd += ["-lm", "-pthread"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"compile failed:\n{res.stderr}"
    assert res.stderr == "", f"compiler warnings:\n{res.stderr}"
    return exe


@pytest.mark.parametrize("blas", ["reference", "openblas"])
def test_c_program_trains_tiny_mlp(tmp_path, blas):
    exe = _compile(tmp_path, blas)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith("ok")
