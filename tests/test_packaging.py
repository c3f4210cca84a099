"""What an installed fflib carries besides code: version, header, type stub, license.

The full sdist -> wheel -> fresh venv round trip is scripts/ci_package.sh (minutes, not a unit test)."""
import ast
import re
from pathlib import Path

import pytest

import fflib
from fflib import _core

ROOT = Path(__file__).resolve().parents[1]
PKG = Path(fflib.__file__).resolve().parent


def test_version_is_written_once():
    from fflib._version import __version__
    assert fflib.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", __version__)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = {attr = "fflib._version.__version__"}' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M), "a second, static version in pyproject.toml"


def test_models_is_an_attribute():
    assert "mlp" in fflib.models.ZOO      # the README's `fflib.models` without importing it first


def test_get_include_has_the_core_header():
    inc = Path(fflib.get_include())
    header = inc / "fflib.h"
    assert header.is_file()
    text = header.read_text()
    assert "FF_VERSION_MAJOR" in text and "ff_net_train_step" in text
    if (ROOT / "csrc" / "fflib.h").exists():   # the installed copy is the source tree's header
        assert text == (ROOT / "csrc" / "fflib.h").read_text()


def test_package_is_typed():
    assert (PKG / "py.typed").exists()
    assert (PKG / "_core.pyi").exists()


def _stub_names():
    tree = ast.parse((PKG / "_core.pyi").read_text())
    module, methods = set(), set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            module.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            module.add(node.target.id)
        elif isinstance(node, ast.ClassDef):
            module.add(node.name)
            methods |= {n.name for n in node.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")}
    return module, methods


def test_core_stub_matches_the_binding():
    """Every public function, constant and Net method of the compiled module is in _core.pyi,
    and the stub names nothing the module lacks (mypy.stubtest checks signatures in CI)."""
    module, methods = _stub_names()
    runtime_module = {n for n in dir(_core) if not n.startswith("_")}
    runtime_methods = {n for n in dir(_core.Net) if not n.startswith("_")}
    assert module == runtime_module, (module ^ runtime_module)
    assert methods == runtime_methods, (methods ^ runtime_methods)


def test_license_is_mit():
    lic = ROOT / "LICENSE"
    if not lic.exists():
        pytest.skip("not a source checkout")
    text = lic.read_text()
    assert text.startswith("MIT License") and "fflib authors" in text


def test_manifest_ships_the_headers():
    manifest = ROOT / "MANIFEST.in"
    if not manifest.exists():
        pytest.skip("not a source checkout")
    assert re.search(r"^recursive-include csrc \*\.c \*\.h$", manifest.read_text(), re.M)
