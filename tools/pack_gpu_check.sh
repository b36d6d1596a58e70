#!/usr/bin/env bash
# Packs what benchmarks/gpu_check.py needs on a GPU machine without network (Python 3.12,
# x86-64, CUDA 13, CuPy, tifffile, xarray, numpy, nanobind, scikit-build-core, CMake; no
# dask, imagecodecs or nvImageCodec) into bundles of at most 60 MiB each, so each one fits
# one device call (64 MiB carried per call):
#
#   gpu-pack/1/  wheels: imagecodecs, dask and its pure-Python dependencies, nvJPEG,
#                nvJPEG2000, kvikio (no-deps)
#   gpu-pack/2/  wheels: nvImageCodec; the test slides; libjpeg-turbo and zlib headers
#                (Debian packages, in case the machine lacks them); run.sh
#
# Usage: tools/pack_gpu_check.sh [OUT]   (default: gpu-pack in the repository; git-ignored)
# On the device, one call per bundle (the run tool's `carry`), site-packages in .gpu-site/,
# which stays on the warm machine between calls:
#   call 1: carry gpu-pack/1   command: bash gpu-pack/1/install.sh
#   call 2: carry gpu-pack/2   command: bash gpu-pack/2/run.sh   (installs, builds, checks)
# Unrun on a device so far.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/gpu-pack}
shared=$repo/../shared/data
limit=$((60 * 1024 * 1024))
rm -rf "$out"
mkdir -p "$out/1/wheels" "$out/2/wheels" "$out/2/slides" "$out/2/debs"

download() {  # folder, packages...: cp312 manylinux x86-64 wheels, no dependencies
  local dest=$1
  shift
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 -d "$dest" "$@"
}
download "$out/1/wheels" imagecodecs dask toolz cloudpickle partd locket fsspec pyyaml \
  "nvidia-nvjpeg>=13" nvidia-nvjpeg2k-cu13 kvikio-cu13 libkvikio-cu13
download "$out/2/wheels" nvidia-nvimgcodec-cu13

# Test slides: JPEG (Aperio RGB-coded, generic YCbCr, DQT-only tables, DICOM with JFIF),
# JPEG 2000 (Aperio 33005), deflate.
for f in aperio/CMU-1-Small-Region.svs aperio/tcga-cr-7395-01a-01-ts1.svs generic/quad-tile.jpg.tiff \
  generic/cog-jpeg-dqt-only.tiff generic/uint16-deflate-pyramid.tif; do
  [ -f "$shared/$f" ] && cp "$shared/$f" "$out/2/slides/"
done
[ -d "$shared/dicom/cmu-1-small-region" ] && cp -r "$shared/dicom/cmu-1-small-region" "$out/2/slides/"

(cd "$out/2/debs" && apt-get download libjpeg62-turbo-dev libjpeg62-turbo zlib1g-dev >/dev/null 2>&1) ||
  echo "note: apt-get download failed; the device must have the libjpeg-turbo headers" >&2

cat >"$out/1/install.sh" <<'EOF'
#!/usr/bin/env bash
# Device call 1: the first bundle's wheels into .gpu-site/ (kept on the warm machine).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python -m pip install -q --no-index --no-deps --target .gpu-site "$here"/wheels/*.whl
echo "installed $(ls "$here"/wheels | wc -l) wheels into .gpu-site"
EOF

cat >"$out/2/run.sh" <<'EOF'
#!/usr/bin/env bash
# Device call 2: the second bundle's wheels, a build of wsiarray, then the check (JSON and
# the Markdown table into $OUT when the run tool sets it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python -m pip install -q --no-index --no-deps --target .gpu-site "$here"/wheels/*.whl
export PYTHONPATH="$PWD/.gpu-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
if ! echo '#include <jpeglib.h>' | cc -E -xc - >/dev/null 2>&1; then
  mkdir -p .gpu-deps
  for deb in "$here"/debs/*.deb; do dpkg -x "$deb" .gpu-deps; done
  export CMAKE_PREFIX_PATH="$PWD/.gpu-deps/usr"
  export CPATH="$PWD/.gpu-deps/usr/include:$PWD/.gpu-deps/usr/include/x86_64-linux-gnu"
  export LIBRARY_PATH="$PWD/.gpu-deps/usr/lib/x86_64-linux-gnu"
  export LD_LIBRARY_PATH="$PWD/.gpu-deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
python -m pip install -q --no-build-isolation --no-deps --target .gpu-build .
# the built package first, then the wheels; the source tree last (for benchmarks/ only)
export PYTHONPATH="$PWD/.gpu-build:$PWD/.gpu-site:$PWD"
cd /tmp  # not the source tree: python -m puts the working directory first
out=${OUT:-/tmp}
python -m benchmarks.gpu_check --slides "$here"/slides/* --out "$out/gpu_check.json" "$@" | tee "$out/gpu_check.md"
EOF
chmod +x "$out/1/install.sh" "$out/2/run.sh"

status=0
for bundle in "$out/1" "$out/2"; do
  bytes=$(du -sb "$bundle" | cut -f1)
  printf '%s: %.1f MiB\n' "$bundle" "$(echo "$bytes / 1048576" | bc -l)"
  if [ "$bytes" -gt "$limit" ]; then
    echo "error: $bundle is over 60 MiB" >&2
    status=1
  fi
done
exit $status
