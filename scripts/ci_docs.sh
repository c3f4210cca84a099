#!/usr/bin/env bash
# API reference from the docstrings with pdoc: scripts/ci_docs.sh [OUTDIR] (default build/api-docs, ignored by git).
# Uses $FFLIB_DOCS_PYTHON (default python3), which must import fflib (installed, or an in-place
# build of this tree) and its optional plot dependency, matplotlib; installs pdoc (the `docs`
# extra) from PyPI if it is missing.  Any warning pdoc prints fails the run.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=${FFLIB_DOCS_PYTHON:-python3}
OUT=$(realpath -m "${1:-$SRC/build/api-docs}")
fail() { echo "ci_docs: FAIL: $*" >&2; exit 1; }

"$PY" -c 'import pdoc' 2>/dev/null || "$PY" -m pip install -q "pdoc>=14" || fail "pip install pdoc"
WORK=$(mktemp -d) && trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || fail "cd"
# the installed fflib if there is one, else this source tree's in-place build
if ! "$PY" -c 'import fflib' 2>/dev/null; then export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"; fi
"$PY" -c 'import fflib, matplotlib' || fail "$PY cannot import fflib and matplotlib"
# every public submodule: pdoc follows fflib.__all__ (which names some: listing them again warns),
# the others are named here.  A submodule whose optional dependency (e.g. torch) is not installed
# is left out, and said so; any other import error fails.
mods=$("$PY" - <<'PYEOF'
import importlib, pkgutil, sys
import fflib
mods = ["fflib"]
for m in pkgutil.iter_modules(fflib.__path__):
    if m.name.startswith("_") or m.name in getattr(fflib, "__all__", ()):
        continue
    try:
        importlib.import_module("fflib." + m.name)
    except ImportError as e:
        # the missing module: the error's own name, or that of the error it was raised from
        # (fflib.torch says which extra to install, from the ImportError of torch itself)
        name = e.name or getattr(e.__cause__, "name", None)
        if name and name.split(".")[0] != "fflib":
            print(f"ci_docs: fflib.{m.name} left out: its optional dependency {name} is not installed",
                  file=sys.stderr)
            continue
        raise
    mods.append("fflib." + m.name)
print(" ".join(mods))
PYEOF
) || fail "cannot list fflib's modules"
echo "ci_docs: documenting $mods"
# MPLBACKEND: pdoc imports fflib.plot, which must not need a display
# shellcheck disable=SC2086
MPLBACKEND=Agg "$PY" -W always -m pdoc --docformat restructuredtext -o "$OUT" $mods >"$WORK/log" 2>&1
status=$?
cat "$WORK/log"
[ $status -eq 0 ] || fail "pdoc exited with $status"
if grep -qi "warn" "$WORK/log"; then fail "pdoc printed warnings (above)"; fi
[ -f "$OUT/fflib.html" ] || fail "no $OUT/fflib.html"
echo "ci_docs: PASS: $(find "$OUT" -name '*.html' | wc -l) pages in $OUT"
