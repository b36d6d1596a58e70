"""Bilevel (1 bit per sample) images (issue 14): native unpacking against tifffile, per codec.

One bilevel image (bars and sparse noise, like a scanned document: long runs with
edges) is written in strips of 64 rows uncompressed, deflate, LZW and PackBits, in
512 x 512 deflate tiles, and (Pillow, libtiff) in CCITT Group 3 and Group 4 strips. For
each file the whole level is read with ``Slide.read_region`` on 1 and 2 threads and with
``tifffile.imread`` (one thread, bool output). Raw, deflate and LZW are unpacked by the
native engine; PackBits and CCITT go through tifffile's decoder (imagecodecs) as the
engine's external codec. Every round reads every cell once in a rotated order; the
table gives the median time and the median of the per-round ratios to tifffile's time.
Every read is checked against tifffile's pixels first.

Example::

    python -m benchmarks.bench_bilevel --width 8192 --height 6144 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile

import wsiarray


def bilevel_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Bars of varied widths with 1% noise: long runs and many edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:height, :width]
    bars = ((xx // 7 + yy // 13) % 3 == 0) | ((xx // 50) % 4 == 0)
    return bars ^ (rng.random((height, width)) < 0.01)


def write_files(folder: Path, image: np.ndarray) -> dict[str, str]:
    files: dict[str, str] = {}
    for name, options in {
        "raw strips": {"rowsperstrip": 64},
        "deflate strips": {"rowsperstrip": 64, "compression": "zlib"},
        "LZW strips": {"rowsperstrip": 64, "compression": "lzw"},
        "deflate 512 tiles": {"tile": (512, 512), "compression": "zlib"},
        "PackBits strips (external)": {"rowsperstrip": 64, "compression": "packbits"},
    }.items():
        path = folder / f"{name.split()[0]}-{len(files)}.tif"
        tifffile.imwrite(path, image, photometric="minisblack", metadata=None, **options)
        files[name] = str(path)
    try:
        from PIL import Image, features

        if features.check("libtiff"):
            Image.MAX_IMAGE_PIXELS = None
            for name, compression in (
                ("CCITT G3 strips (external)", "group3"),
                ("CCITT G4 strips (external)", "group4"),
            ):
                path = folder / f"{compression}.tif"
                Image.fromarray(image).save(path, compression=compression, tiffinfo={278: 64})
                files[name] = str(path)
    except ImportError:
        pass
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--height", type=int, default=6144)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    image = bilevel_image(args.height, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(Path(tmp), image)
        slides = {name: wsiarray.open(path) for name, path in files.items()}
        size = (args.width, args.height)
        cells: dict[tuple[str, str], Callable[[], object]] = {}
        for name, path in files.items():
            slide = slides[name]
            got = slide.read_region((0, 0), size)
            assert np.array_equal(got[..., 0], tifffile.imread(path).view(np.uint8)), name
            cells[name, "tifffile"] = lambda path=path: tifffile.imread(path, maxworkers=1)
            for workers in (1, 2):
                cells[name, f"wsiarray {workers}T"] = lambda s=slide, w=workers: s.read_region(
                    (0, 0), size, num_workers=w
                )
        times: dict[tuple[str, str], list[float]] = {key: [] for key in cells}
        keys = list(cells)
        for r in range(args.rounds):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                start = time.perf_counter()
                cells[key]()
                times[key].append(time.perf_counter() - start)
        for slide in slides.values():
            slide.close()
        sizes = {name: os.path.getsize(path) for name, path in files.items()}
    print(
        f"Bilevel {args.width} x {args.height} ({args.width * args.height / 1e6:.0f} Mpx), whole level, "
        f"{args.rounds} rounds, {os.cpu_count()} CPUs; median s (median ratio to tifffile)\n"
    )
    print("| file | MB | tifffile | wsiarray 1 thread | wsiarray 2 threads |")
    print("|---|---:|---:|---:|---:|")
    for name in files:
        base = times[name, "tifffile"]
        row = [f"{statistics.median(base):.3f}"]
        for workers in (1, 2):
            t = times[name, f"wsiarray {workers}T"]
            ratio = statistics.median(a / b for a, b in zip(t, base, strict=True))
            row.append(f"{statistics.median(t):.3f} ({ratio:.2f}x)")
        print(f"| {name} | {sizes[name] / 1e6:.2f} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
