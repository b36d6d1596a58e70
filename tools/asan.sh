#!/usr/bin/env bash
# Runs the test-suite against an AddressSanitizer build of the native engine,
# installed in a throwaway virtual environment (the normal install is untouched).
# Usage: tools/asan.sh [pytest args...]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${WSIARRAY_ASAN_DIR:-$(mktemp -d)}
python -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python -m pip install -q \
  -Ccmake.define.WSIARRAY_ASAN=ON -Ccmake.build-type=RelWithDebInfo -Cbuild-dir="$work/build" \
  "$repo[test]"
# CPython is not instrumented: preload the runtime (and libstdc++, or ASan
# cannot intercept C++ throws); CPython's arenas look like leaks.
# GCC 12's runtime does not lock its allocator around fork(), so the test that forks
# while threads are busy is a non-strict xfail here (tests/test_concurrency.py,
# UNDER_LIBASAN); the normal suite runs it strictly.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1"
# Run a copy of the tests in a folder without the sources: the root conftest.py
# puts its own folder on sys.path, and every Python process the tests start
# (they spawn some) must import the ASan build, not the source tree.
site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
tree="$work/tree"
rm -rf "$tree"
mkdir -p "$tree"
cp -r "$repo/tests" "$repo/conftest.py" "$repo/pyproject.toml" "$tree/"
# tests that read ../shared/data find it beside the copy as beside the repository
[ -e "$work/shared" ] || [ ! -d "$repo/../shared" ] || ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
args=()
paths=0
for arg in "$@"; do
  case "$arg" in
    tests|tests/*) args+=("$arg"); paths=1 ;;
    wsiarray|wsiarray/*) args+=("$site/$arg"); paths=1 ;;
    *) args+=("$arg") ;;
  esac
done
# by default the whole suite, and the docstring examples of the installed package
[ $paths -eq 1 ] || args+=(tests "$site/wsiarray")
cd "$tree"
python -c "import wsiarray, sys; sys.exit('site-packages' not in wsiarray.__file__)"
pytest -p no:cacheprovider --rootdir "$tree" -c "$tree/pyproject.toml" "${args[@]}"
