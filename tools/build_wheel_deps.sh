#!/usr/bin/env bash
# Builds the native engine's two libraries from pinned, checksummed sources into PREFIX,
# for release wheels (pyproject.toml's [tool.cibuildwheel] runs it as before-all on Linux
# and macOS): libjpeg-turbo as a shared library, which auditwheel/delocate copy into the
# wheel, and zlib as a static, position-independent library, which the extension links in
# (CMake option WSIARRAY_STATIC_ZLIB). The same libjpeg-turbo on every platform, built with
# its SIMD code (the build fails rather than fall back to plain C).
#
# Usage: tools/build_wheel_deps.sh PREFIX
# Needs: curl, tar, cmake, a C compiler; nasm on x86_64 (installed with dnf/yum where
# there is one, as in the manylinux images). MACOSX_DEPLOYMENT_TARGET is honoured.
set -euo pipefail
prefix=${1:?usage: tools/build_wheel_deps.sh PREFIX}
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)

JPEG_VERSION=3.1.0
JPEG_SHA256=9564c72b1dfd1d6fe6274c5f95a8d989b59854575d4bbee44ade7bc17aa9bc93
ZLIB_VERSION=1.3.1
ZLIB_SHA256=9a93b2b7dfdac77ceba5a558a580e74667dd6fede4585b91eefb60f03b72df23

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch URL SHA256: downloads and unpacks into $work, refusing a tarball whose checksum differs
fetch() {
  local url=$1 sum=$2 file
  file="$work/$(basename "$url")"
  curl -fsSL --retry 3 -o "$file" "$url"
  if command -v sha256sum >/dev/null; then
    echo "$sum  $file" | sha256sum -c -
  else
    echo "$sum  $file" | shasum -a 256 -c -
  fi
  tar -xzf "$file" -C "$work"
}

case "$(uname -m)" in
  x86_64 | AMD64 | amd64)
    if ! command -v nasm >/dev/null; then
      if command -v dnf >/dev/null; then
        dnf install -y nasm || dnf install -y --enablerepo=powertools nasm
      elif command -v yum >/dev/null; then
        yum install -y nasm
      elif command -v brew >/dev/null; then
        brew install nasm
      fi
    fi
    ;;
esac

jobs=$( (nproc || sysctl -n hw.ncpu || echo 2) 2>/dev/null | head -1)

fetch "https://github.com/libjpeg-turbo/libjpeg-turbo/releases/download/$JPEG_VERSION/libjpeg-turbo-$JPEG_VERSION.tar.gz" \
  "$JPEG_SHA256"
cmake -S "$work/libjpeg-turbo-$JPEG_VERSION" -B "$work/jpeg-build" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib \
  -DENABLE_SHARED=ON -DENABLE_STATIC=OFF -DWITH_TURBOJPEG=OFF -DWITH_JPEG8=OFF -DREQUIRE_SIMD=ON
cmake --build "$work/jpeg-build" --parallel "$jobs"
cmake --install "$work/jpeg-build"

fetch "https://zlib.net/fossils/zlib-$ZLIB_VERSION.tar.gz" "$ZLIB_SHA256"
cmake -S "$work/zlib-$ZLIB_VERSION" -B "$work/zlib-build" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib \
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON
cmake --build "$work/zlib-build" --parallel "$jobs"
cmake --install "$work/zlib-build"
# Only the static zlib stays, so nothing can link the shared one by accident.
rm -f "$prefix"/lib/libz.so* "$prefix"/lib/libz.*dylib
echo "libjpeg-turbo $JPEG_VERSION and zlib $ZLIB_VERSION installed in $prefix"
