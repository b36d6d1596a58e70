#!/usr/bin/env bash
# Runs the test-suite against a build of the native engine with AddressSanitizer,
# then reinstalls the normal build. Usage: tools/asan.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --no-build-isolation -e . \
  -Ccmake.define.WSIARRAY_ASAN=ON -Cbuild-dir=build/asan -Ccmake.build-type=RelWithDebInfo
status=0
# Python itself is not instrumented: preload the runtime; CPython's arenas look like leaks.
LD_PRELOAD="$(gcc -print-file-name=libasan.so)" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1" \
  python -m pytest -p no:cacheprovider "$@" || status=$?
python -m pip install -q --no-build-isolation -e .
exit $status
