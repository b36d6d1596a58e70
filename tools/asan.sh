#!/usr/bin/env bash
# Runs the test-suite (or the fuzzer) against a sanitizer build of the native engine,
# installed in a throwaway virtual environment (the normal install is untouched).
#
# Usage: tools/asan.sh [pytest args...]          the tests (default: all, and the doctests)
#        tools/asan.sh --fuzz [fuzzer args...]   fuzz/fuzz_open.py (atheris), see fuzz/README.md
# Environment:
#   WSIARRAY_SANITIZE  -fsanitize= list, default "address"; CI uses "address,undefined"
#   WSIARRAY_ASAN_DIR  work folder (default: a new temporary one). Given, it is reused: the
#                      build is skipped when the sources and the sanitizer list are unchanged,
#                      so CI's sanitizer tests and fuzz smoke run share one build.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${WSIARRAY_ASAN_DIR:-$(mktemp -d)}
sanitize=${WSIARRAY_SANITIZE:-address}
mode=tests
if [ "${1:-}" = "--fuzz" ]; then
  mode=fuzz
  shift
fi
mkdir -p "$work"

# What the build depends on: reinstall only when this changes.
stamp=$(
  cd "$repo"
  echo "$sanitize ${CC:-} ${CXX:-}"
  find CMakeLists.txt pyproject.toml wsiarray -type f \
    \( -name '*.py' -o -name '*.pyi' -o -name '*.cpp' -o -name '*.hpp' -o -name '*.txt' -o -name '*.toml' \) \
    -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum | sha256sum
)
if [ ! -f "$work/venv/bin/activate" ]; then
  python -m venv "$work/venv"
fi
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
if [ "$(cat "$work/venv/.wsiarray-build" 2>/dev/null)" != "$stamp" ]; then
  # atheris is installed too, so one build serves the tests and the fuzzer. test-base is the
  # test extra without PyTorch and MONAI, which no test run under the sanitizers needs.
  python -m pip install -q \
    -Ccmake.define.WSIARRAY_SANITIZE="$sanitize" -Ccmake.define.WSIARRAY_SANITIZE_LINK_RUNTIME=OFF \
    -Ccmake.build-type=RelWithDebInfo -Cbuild-dir="$work/build" \
    "$repo[test-base,fuzz]"
  echo "$stamp" >"$work/venv/.wsiarray-build"
fi
# The extension does not link the sanitizer runtimes (WSIARRAY_SANITIZE_LINK_RUNTIME=OFF):
# CPython is not instrumented, so the runtime must be preloaded anyway (and libstdc++,
# or ASan cannot intercept C++ throws); CPython's arenas look like leaks.
# The tests get gcc's runtimes. GCC 12's does not lock its allocator around fork(), so
# the test that forks while threads are busy is a non-strict xfail here
# (tests/test_concurrency.py, UNDER_LIBASAN); the normal suite runs it strictly.
# The fuzzer gets atheris's ASan runtime, which has libFuzzer in it: with gcc's libasan
# preloaded, its stub coverage hooks would shadow libFuzzer's and atheris would see no coverage.
preload=()
case ",$sanitize," in *,address,*) preload+=("$(gcc -print-file-name=libasan.so)") ;; esac
case ",$sanitize," in *,undefined,*) preload+=("$(gcc -print-file-name=libubsan.so)") ;; esac
if [ $mode = fuzz ]; then
  atheris_dir=$(python -c "import atheris; print(atheris.path())")
  case ",$sanitize," in
    *,address,*) preload=("$atheris_dir/asan_with_fuzzer.so") ;;
    *) preload=("$atheris_dir/ubsan_with_fuzzer.so") ;;
  esac
fi
preload+=("$(gcc -print-file-name=libstdc++.so)")
LD_PRELOAD=$(IFS=:; echo "${preload[*]}")
export LD_PRELOAD
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1"
# Undefined behaviour fails the run (the build also has -fno-sanitize-recover=undefined).
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# tests that read ../shared/data find it beside the copy as beside the repository
[ -e "$work/shared" ] || [ ! -d "$repo/../shared" ] || ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

if [ $mode = fuzz ]; then
  # Run a copy of the harness away from the sources, so it imports the sanitizer build.
  mkdir -p "$work/fuzz"
  cp "$repo/fuzz/fuzz_open.py" "$work/fuzz/"
  cd "$work/fuzz"
  python -c "import wsiarray, sys; sys.exit('site-packages' not in wsiarray.__file__)"
  exec python fuzz_open.py --data "$repo/../shared/data" "$@"
fi

# Run a copy of the tests in a folder without the sources: the root conftest.py
# puts its own folder on sys.path, and every Python process the tests start
# (they spawn some) must import the sanitizer build, not the source tree.
tree="$work/tree"
rm -rf "$tree"
mkdir -p "$tree"
cp -r "$repo/tests" "$repo/conftest.py" "$repo/pyproject.toml" "$tree/"
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
