#!/usr/bin/env bash
# Packaging CI: fflib must build and work from its sdist, not only from a source checkout.
#
# In a temporary directory, with a fresh venv of $PYTHON (default python3):
#   1. build the sdist from this source tree (python -m build --sdist) and check its contents;
#   2. build a wheel FROM the sdist and check it (fflib.h, py.typed, _core.pyi, LICENSE, and a
#      RUNPATH that names no absolute build directory);
#   3. install the wheel into the fresh venv and, from outside the source tree, run the smoke
#      test (python -m fflib train --epochs 1), check fflib.get_include() and compile a C file
#      against the installed fflib.h;
#   4. mypy on the installed package (py.typed + the _core stub) and stubtest of fflib._core;
#   5. no stale build reuse: install the unpacked sdist twice, the second time with
#      FFLIB_BLAS=none, and check that the second install really is the plain C build;
#   6. the API reference (scripts/ci_docs.sh, pdoc, warnings are errors);
#   7. the oldest and newest supported Pythons (3.9 and 3.13, if installed; FFLIB_CI_PYTHONS
#      overrides the list, "none" skips): wheel from the same sdist, installed, smoke test, and
#      below 3.13 the smoke test again with numpy 1.x (in the background, from step 1 on).
# Prints "ci_package: PASS" or "ci_package: FAIL: <why>" and exits 0 or 1.
# Needs only PyPI (build, mypy, pdoc and fflib's own dependencies).
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fflib-ci-package.XXXXXX")
declare -A other_pid   # background jobs (other Pythons), stopped with their children on exit
cleanup() {
    for pid in "${other_pid[@]}"; do pkill -TERM -P "$pid" 2>/dev/null; kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
# PIP_NO_COMPILE: no .pyc for every installed file (most of pip's CPU time here; Python compiles
# what it imports)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_COMPILE=1 FFLIB_NUM_THREADS=${FFLIB_NUM_THREADS:-2}
T0=$SECONDS
LOG=$TMP/log

step() { echo "ci_package: [$((SECONDS - T0))s] $*"; }
fail() {
    echo "ci_package: FAIL: $*" >&2
    if [ -s "$LOG" ]; then echo "---- last output ----" >&2; tail -n 40 "$LOG" >&2; fi
    exit 1
}
run() { "$@" >"$LOG" 2>&1; }   # quiet unless it fails

# ---------------------------------------------------------------- fresh venv and the sdist
step "fresh venv ($($PY -V 2>&1))"
run "$PY" -m venv "$TMP/venv" || fail "cannot create a venv with $PY"
V="$TMP/venv/bin/python"
# the CI tools and fflib's run-time dependencies (which include its build requirements); the wheel
# below is still built in an isolated environment holding only pyproject's build requirements
run "$V" -m pip install -q build mypy pdoc "setuptools>=77" wheel "numpy>=2.0" scipy-openblas32 tqdm matplotlib \
    || fail "pip install build mypy pdoc and fflib's dependencies"

step "sdist from $SRC"
run "$V" -m build --sdist --no-isolation --outdir "$TMP/dist" "$SRC" || fail "python -m build --sdist"
SDIST=$(ls "$TMP"/dist/*.tar.gz)
listing=$(tar tzf "$SDIST")
for f in csrc/fflib.h csrc/_core.c csrc/ff_net.c setup.py pyproject.toml LICENSE README.md \
         fflib/__init__.py fflib/_core.pyi fflib/py.typed fflib/_version.py fflib/data/mnist_sample.npz; do
    grep -q "^[^/]*/$f\$" <<<"$listing" || fail "the sdist lacks $f"
done
if grep -qE '\.(so|o)$' <<<"$listing"; then fail "the sdist holds build products"; fi

# ---------------------------------------------------------------- oldest and newest Python: started now
# Each in its own venv, in the background while the checks below run: wheel from the sdist (build
# requirements installed beside the run-time ones; the isolated build is checked below), install,
# smoke test.  FFLIB_CI_PYTHONS (paths) overrides the choice, "none" skips.
other_python() {   # python, version; writes $TMP/py$ver.out and $TMP/py$ver.status
    local p=$1 ver=$2 W="$TMP/venv$2/bin/python" out="$TMP/py$2.out" log="$TMP/py$2.log"
    {
        "$p" -m venv "$TMP/venv$ver" >"$log" 2>&1 || { echo "venv with $p failed"; return 1; }
        "$W" -m pip install -q "setuptools>=77" wheel "numpy>=2.0" scipy-openblas32 tqdm >>"$log" 2>&1 \
            || { echo "pip install of fflib's dependencies failed"; return 1; }
        "$W" -m pip install -q --no-build-isolation "$SDIST" >>"$log" 2>&1 \
            || { echo "wheel from the sdist / install failed"; return 1; }
        (cd "$TMP/run" && "$W" -m fflib train --epochs 1 --no-progress) >>"$log" 2>&1 \
            || { echo "smoke test failed"; return 1; }
        echo "ci_package: Python $ver, numpy $("$W" -c 'import numpy; print(numpy.__version__)'): $(grep 'test error' "$log")"
        # the module built against numpy 2 headers also runs on the oldest numpy fflib allows
        # (numpy 1.x has no wheels for Python >= 3.13)
        if "$W" -c 'import sys; sys.exit(sys.version_info >= (3, 13))'; then
            "$W" -m pip install -q "numpy>=1.25,<2" >>"$log" 2>&1 || { echo "pip install numpy 1.x failed"; return 1; }
            (cd "$TMP/run" && "$W" -m fflib train --epochs 1 --no-progress) >"$log.np1" 2>&1 \
                || { cat "$log.np1" >>"$log"; echo "smoke test with numpy 1.x failed"; return 1; }
            echo "ci_package: Python $ver, numpy $("$W" -c 'import numpy; print(numpy.__version__)'): $(grep 'test error' "$log.np1")"
        fi
    } >"$out" 2>&1
}
pythons=${FFLIB_CI_PYTHONS:-}
if [ -z "$pythons" ]; then
    for v in 3.9 3.13; do
        found=
        for c in $(ls -d "${PYENV_ROOT:-/root/.pyenv}"/versions/"$v".*/bin/python 2>/dev/null) $(command -v "python$v"); do
            if "$c" -c 'import sys, venv' >/dev/null 2>&1; then found=$c; break; fi
        done
        if [ -n "$found" ]; then pythons="$pythons $found"; else step "python$v not found: not tested"; fi
    done
fi
[ "$pythons" = none ] && pythons=
other_versions=
mkdir -p "$TMP/run"
for p in $pythons; do
    ver=$("$p" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || fail "$p does not run"
    step "Python $ver: wheel from the sdist, install, smoke test (in the background)"
    ( if other_python "$p" "$ver"; then echo ok; else echo failed; tail -n 30 "$TMP/py$ver.log" >>"$TMP/py$ver.out"; fi ) \
        >"$TMP/py$ver.status" &
    other_pid[$ver]=$!
    other_versions="$other_versions $ver"
done

# ---------------------------------------------------------------- the wheel, built from the sdist
step "wheel from $(basename "$SDIST") (isolated build environment)"
run "$V" -m build --wheel --outdir "$TMP/dist" "$SDIST" || fail "python -m build --wheel from the sdist"
WHEEL=$(ls "$TMP"/dist/*.whl)
mkdir -p "$TMP/whl" && (cd "$TMP/whl" && "$V" -m zipfile -e "$WHEEL" .) || fail "cannot unpack the wheel"
for f in fflib/include/fflib.h fflib/py.typed fflib/_core.pyi fflib/data/mnist_sample.npz; do
    [ -f "$TMP/whl/$f" ] || fail "the wheel lacks $f"
done
[ -n "$(find "$TMP/whl" -path '*.dist-info/*' -name 'LICENSE*')" ] || fail "the wheel carries no LICENSE"
cmp -s "$TMP/whl/fflib/include/fflib.h" "$SRC/csrc/fflib.h" || fail "the wheel's fflib.h differs from csrc/fflib.h"
SO=$(ls "$TMP"/whl/fflib/_core*.so)
if command -v readelf >/dev/null; then
    rpath=$(readelf -d "$SO" | grep -E '\((RUNPATH|RPATH)\)' | sed 's/.*\[\(.*\)\]/\1/')
    step "RUNPATH of the wheel's module: ${rpath:-none}"
    IFS=: read -ra parts <<<"$rpath"
    for p in "${parts[@]}"; do
        case "$p" in
            '$ORIGIN'*) ;;
            /tmp/*|*build-env*|*pip-*) fail "RUNPATH entry $p is a temporary build directory" ;;
            *) [ -d "$p" ] || fail "RUNPATH entry $p does not exist" ;;
        esac
    done
else
    step "readelf not found: RUNPATH not checked"
fi

# ---------------------------------------------------------------- install, smoke test outside the tree
step "install the wheel into the fresh venv"
run "$V" -m pip install -q "$WHEEL[plot]" || fail "pip install of the wheel (with the plot extra)"
mkdir -p "$TMP/run" && cd "$TMP/run" || fail "cd"
step "smoke test: python -m fflib train --epochs 1 (in $TMP/run)"
"$V" -m fflib train --epochs 1 --no-progress --out "$TMP/run/result.json" >"$LOG" 2>&1 \
    || fail "python -m fflib train --epochs 1"
grep -q "test error: one-pass" "$LOG" || fail "the smoke test printed no test error"
grep "test error" "$LOG"
"$V" - "$SRC" <<'EOF' >"$LOG" 2>&1 || fail "import checks of the installed fflib"
import os, sys
import fflib
src = sys.argv[1]
assert not fflib.__file__.startswith(src), f"fflib imported from the source tree: {fflib.__file__}"
inc = fflib.get_include()
assert os.path.isfile(os.path.join(inc, "fflib.h")), inc
assert inc.startswith(os.path.dirname(fflib.__file__)), inc
assert fflib.models.ZOO, "fflib.models"
print("fflib", fflib.__version__, "at", os.path.dirname(fflib.__file__), "blas", fflib.blas_name(), "include", inc)
EOF
cat "$LOG"
if command -v cc >/dev/null; then
    printf '#include "fflib.h"\nint main(void) { return FF_VERSION_MAJOR < 0; }\n' >"$TMP/run/use_header.c"
    run cc -std=c11 -Wall -Werror -fsyntax-only -I"$("$V" -c 'import fflib; print(fflib.get_include())')" \
        "$TMP/run/use_header.c" || fail "a C file does not compile against the installed fflib.h"
    step "a C file compiles against the installed fflib.h"
fi

# ---------------------------------------------------------------- types
step "mypy on the installed package, and stubtest of fflib._core"
export MYPY_CACHE_DIR="$TMP/mypy-cache"
run "$V" -m mypy --config-file "$SRC/pyproject.toml" -p fflib || fail "mypy -p fflib"
printf '[mypy]\nignore_missing_imports = True\n' >"$TMP/stubtest.ini"
run "$V" -m mypy.stubtest --mypy-config-file "$TMP/stubtest.ini" fflib._core || fail "stubtest fflib._core"
printf 'import fflib\nn: int = fflib.get_num_threads()\ns: str = fflib.get_include()\n' >"$TMP/run/user.py"
run "$V" -m mypy --strict "$TMP/run/user.py" || fail "mypy --strict on a user script importing fflib"

# ---------------------------------------------------------------- no stale build reuse
step "second install of the unpacked sdist with FFLIB_BLAS=none must rebuild"
mkdir -p "$TMP/sdist" && tar xzf "$SDIST" -C "$TMP/sdist" || fail "cannot unpack the sdist"
S=$(ls -d "$TMP"/sdist/*/)
(cd "$S" && run "$V" -m pip install -q --no-build-isolation --no-deps .) || fail "pip install . (OpenBLAS)"
blas1=$("$V" -c 'import fflib; print(fflib.blas_name())')
(cd "$S" && FFLIB_BLAS=none run "$V" -m pip install -q --no-build-isolation --no-deps .) \
    || fail "FFLIB_BLAS=none pip install ."
blas2=$("$V" -c 'import fflib; print(fflib.blas_name())')
step "first install: $blas1; second (FFLIB_BLAS=none): $blas2"
case "$blas1" in *openblas*) ;; *) fail "the default install is not the OpenBLAS build ($blas1)" ;; esac
case "$blas2" in *openblas*) fail "FFLIB_BLAS=none reused the OpenBLAS build ($blas2)" ;; esac

# ---------------------------------------------------------------- API reference
step "API reference (scripts/ci_docs.sh)"
FFLIB_DOCS_PYTHON="$V" run bash "$SRC/scripts/ci_docs.sh" "$TMP/docs" || fail "scripts/ci_docs.sh"

# ---------------------------------------------------------------- oldest and newest Python: results
for ver in $other_versions; do
    wait "${other_pid[$ver]}"
    cat "$TMP/py$ver.out"
    [ "$(cat "$TMP/py$ver.status" 2>/dev/null)" = ok ] || fail "Python $ver (log above)"
done

step "done in $((SECONDS - T0))s"
echo "ci_package: PASS"
