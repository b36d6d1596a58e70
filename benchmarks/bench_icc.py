"""``apply_icc=True``: what the sRGB transform adds to a 4096 x 4096 read.

Writes (once) a 4096 x 4096 RGB JPEG slide, 256-px tiles, with an Adobe-RGB-like
ICC v2 matrix/TRC profile (gamma 2.2) in level 0's InterColorProfile tag, then
times, round-robin for ``--repeats`` rounds with 1 and 2 threads:

- ``read``: ``read_region((0, 0), (4096, 4096), num_workers=n)``;
- ``read+icc``: the same with ``apply_icc=True``;
- ``pillow``: the plain Pillow route on the ``read`` output for comparison
  (``Image.fromarray`` -> ``ImageCms.applyTransform(inPlace=True)`` -> ``numpy.asarray``),
  one thread.

Example::

    python -m benchmarks.bench_icc --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import tifffile

import wsiarray


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def wide_profile() -> bytes:
    """An ICC v2 matrix/TRC RGB profile with Adobe RGB (1998)-like colorants, gamma 2.2."""
    text = b"bench wide RGB\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(78)
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(2.2 * 256)) + bytes(2)
    tags = [(b"desc", desc), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", _xyz(0.6097, 0.3111, 0.0195)),
            (b"gXYZ", _xyz(0.2053, 0.6257, 0.0609)), (b"bXYZ", _xyz(0.1492, 0.0632, 0.7446)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    start = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", start + len(data), len(body))
        data += body
    header = (struct.pack(">I", start + len(data)) + bytes(4) + struct.pack(">I", 0x02100000)
              + b"mntrRGB XYZ " + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + bytes(24)
              + struct.pack(">I", 0) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + data


def slide_path(size: int = 4096) -> str:
    folder = Path(os.environ.get("WSIARRAY_BENCH_DIR", Path.home() / ".cache" / "wsiarray-bench"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"icc_{size}.tif"
    if not path.exists():
        rng = np.random.default_rng(0)
        coarse = rng.integers(0, 256, (size // 16, size // 16, 3), np.uint8)
        image = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)  # blocky: JPEG-friendly, varied colours
        image = (image.astype(np.int16) + rng.integers(-12, 13, image.shape)).clip(0, 255).astype(np.uint8)
        profile = wide_profile()
        tifffile.imwrite(path, image, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None,
                         extratags=[(34675, 7, len(profile), profile, True)])
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    from PIL import Image, ImageCms

    path = slide_path(args.size)
    slide = wsiarray.open(path)
    size = (args.size, args.size)
    transform = ImageCms.buildTransform(ImageCms.ImageCmsProfile(BytesIO(slide.icc_profile)),
                                        ImageCms.createProfile("sRGB"), "RGB", "RGB")

    def pillow() -> None:
        image = Image.fromarray(slide.read_region((0, 0), size))
        t = time.perf_counter()
        ImageCms.applyTransform(image, transform, inPlace=True)
        np.asarray(image)
        times.setdefault("pillow transform only, 1 thread", []).append(time.perf_counter() - t)

    contenders = {}
    for n in (1, 2):
        contenders[f"read, {n} thread(s)"] = lambda n=n: slide.read_region((0, 0), size, num_workers=n)
        contenders[f"read+icc, {n} thread(s)"] = lambda n=n: slide.read_region((0, 0), size, num_workers=n,
                                                                                apply_icc=True)
    # the same pixels as the plain Pillow route (checked once, untimed)
    plain = np.asarray(ImageCms.applyTransform(Image.fromarray(slide.read_region((0, 0), size)), transform))
    assert np.array_equal(slide.read_region((0, 0), size, apply_icc=True, num_workers=2), plain)
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, read in contenders.items():
            t = time.perf_counter()
            read()
            times.setdefault(name, []).append(time.perf_counter() - t)
        pillow()
    print(f"{path}: {args.size}x{args.size}, median of {args.repeats} rounds, {os.cpu_count()} CPUs")
    for name, values in times.items():
        print(f"  {name:34s} {statistics.median(values):7.3f} s")


if __name__ == "__main__":
    main()
