#!/usr/bin/env bash
# Sanitizer job: the C core built with AddressSanitizer + UndefinedBehaviorSanitizer under the
# tests that drive it hardest (but the memory-growth test: ASan's quarantine holds freed memory) (the API, the block core, the pipeline, label sharing, the battery,
# the reliability and fuzz suites, the kernels), and the C test program under valgrind.
# Any report fails the job.  Run from the repository root with the project's venv active.
set -euo pipefail
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export FFLIB_DATA=${FFLIB_DATA:-$(cd "$repo/.." && pwd)/shared/data}

echo "sanitize: ASan + UBSan build"
cp -r "$repo/csrc" "$repo/fflib" "$repo/tests" "$repo/scripts" "$repo/setup.py" "$repo/pyproject.toml" "$repo/README.md" "$work/"
rm -f "$work"/fflib/*.so
( cd "$work" && CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1" \
  LDFLAGS="-fsanitize=address,undefined" python setup.py -q build_ext --inplace >/dev/null 2>"$work/build.log" ) \
  || { cat "$work/build.log"; exit 1; }
if grep -E "warning:" "$work/build.log" | grep -v -E "SetuptoolsDeprecationWarning|license" ; then
  echo "sanitize: compiler warnings" >&2; exit 1
fi
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
# the reports go to files (pytest captures the process's stderr) and are printed on failure
report() { cat "$work"/san.* 2>/dev/null || true; }
( cd "$work" && LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:log_path="$work/san.asan" \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path="$work/san.ubsan" FFLIB_NUM_THREADS=2 \
  python -m pytest -q -p no:cacheprovider -m "not slow" -k "not memory_growth" \
    tests/test_api.py tests/test_core_blocks.py tests/test_pipeline.py tests/test_share_labels.py \
    tests/test_battery.py tests/test_reliability.py tests/test_fuzz.py tests/test_kernels.py tests/test_conv.py \
    tests/test_threads.py tests/test_train_pairs.py ) || { report; exit 1; }
# the newer C paths (DF and autoencoder losses, early exit, Fourier modes, pair kernels), without their real-data,
# PyTorch and export runs
( cd "$work" && LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:log_path="$work/san.asan" \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path="$work/san.ubsan" FFLIB_NUM_THREADS=2 \
  python -m pytest -q -p no:cacheprovider -m "not slow" -k "not mnist and not torch and not export and not cli" \
    tests/test_df.py tests/test_early_exit.py tests/test_fourier.py tests/test_scff.py tests/test_uff.py ) || { report; exit 1; }
if ls "$work"/san.* >/dev/null 2>&1; then report; echo "sanitize: reports above" >&2; exit 1; fi

echo "sanitize: tests/c/test_train.c under valgrind (reference BLAS)"
gcc -std=c11 -O1 -g -Wall -Wextra -Werror -I "$repo/csrc" "$repo/tests/c/test_train.c" \
  $(ls "$repo"/csrc/*.c | grep -v _core.c) -o "$work/test_train" -lm -pthread
valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect "$work/test_train" >/dev/null
echo "sanitize: clean"
