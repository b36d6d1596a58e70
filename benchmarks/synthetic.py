"""Deterministic synthetic whole-slide images for the benchmarks.

The slide is a tiled, JPEG-compressed, pyramidal TIFF written by
:func:`tifffile.imwrite` from real tissue texture
(:func:`skimage.data.immunohistochemistry`, 512x512 RGB). Every 256-px tile of level 0
is a window of a mirror-tiled copy of that texture at a per-tile offset, with one of the
eight flips/transposes, chosen by a hash of ``(seed, tile row, tile column)``: tiles look
like tissue, no two are alike, and the same seed gives the same bytes on every run (with
the same tifffile/imagecodecs versions).

Lower levels are true block-mean downsamples of level 0, rendered tile by tile, so the
whole image is never held in memory. They are written as further pages of the main IFD
chain with ``NewSubfileType = 1`` (reduced resolution), which OpenSlide's generic-TIFF
reader, cuCIM, tiffslide and tifffile all read as pyramid levels (OpenSlide ignores
SubIFDs).

Example::

    python -m benchmarks.synthetic /tmp/slide.tif --width 4096 --height 4096

    >>> from benchmarks.synthetic import benchmark_slide_path
    >>> path = benchmark_slide_path()  # generated once, then cached  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

__all__ = [
    "DEFAULT_HEIGHT",
    "DEFAULT_LEVELS",
    "DEFAULT_WIDTH",
    "benchmark_slide_path",
    "cache_dir",
    "make_benchmark_slide",
    "render_level0",
]

#: Size of the seed experiment's ``image.tif``.
DEFAULT_WIDTH = 19920
DEFAULT_HEIGHT = 26420
#: Downsample factors of the pyramid levels (level 0 first).
DEFAULT_LEVELS: tuple[int, ...] = (1, 4, 16)
#: Pixel size written to the resolution tags (micrometres per pixel at level 0).
MPP = 0.25

_MASK64 = (1 << 64) - 1


def cache_dir() -> Path:
    """Return the benchmark cache directory, creating it if needed.

    ``$WSIARRAY_BENCH_DIR`` if set, else ``~/.cache/wsiarray-bench``.

    Example::

        >>> cache_dir().name  # doctest: +SKIP
        'wsiarray-bench'
    """
    env = os.environ.get("WSIARRAY_BENCH_DIR")
    path = Path(env) if env else Path.home() / ".cache" / "wsiarray-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _splitmix64(x: int) -> int:
    """One round of SplitMix64: a stable, platform-independent integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _tile_params(seed: int, ty: int, tx: int) -> tuple[int, int, int]:
    """Return ``(offset_y, offset_x, dihedral op 0..7)`` for level-0 tile (ty, tx)."""
    h = _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ ty) ^ (tx << 32 | tx))
    return (h & 0xFFFF) % 1024, ((h >> 16) & 0xFFFF) % 1024, (h >> 32) & 7


@functools.cache
def _texture() -> np.ndarray:
    """Mirror-tiled tissue texture, 1536x1536x3 uint8 (seamless period 1024)."""
    from skimage.data import immunohistochemistry

    ihc = np.ascontiguousarray(immunohistochemistry()[:, :, :3], dtype=np.uint8)
    top = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
    period = np.concatenate([top, top[::-1]], axis=0)  # (1024, 1024, 3), seamless
    wide = np.concatenate([period, period[:, :512]], axis=1)
    return np.ascontiguousarray(np.concatenate([wide, wide[:512]], axis=0))


def _level0_tile(seed: int, ty: int, tx: int, tile: int) -> np.ndarray:
    """Render level-0 tile (ty, tx) as a (tile, tile, 3) uint8 array (no clipping)."""
    if tile > 512:
        msg = f"tile size {tile} > 512 is not supported by the texture generator"
        raise ValueError(msg)
    oy, ox, op = _tile_params(seed, ty, tx)
    win = _texture()[oy : oy + tile, ox : ox + tile]
    if op & 1:
        win = win[::-1]
    if op & 2:
        win = win[:, ::-1]
    if op & 4:
        win = win.transpose(1, 0, 2)
    return win


def render_level0(
    y: int, x: int, height: int, width: int, *, seed: int = 0, tile: int = 256
) -> np.ndarray:
    """Render a region of the synthetic level 0 (not clipped to the image size).

    Example::

        >>> render_level0(0, 0, 256, 256).shape
        (256, 256, 3)
    """
    out = np.empty((height, width, 3), np.uint8)
    for ty in range(y // tile, (y + height - 1) // tile + 1):
        for tx in range(x // tile, (x + width - 1) // tile + 1):
            t = _level0_tile(seed, ty, tx, tile)
            y0, x0 = max(y, ty * tile), max(x, tx * tile)
            y1 = min(y + height, (ty + 1) * tile)
            x1 = min(x + width, (tx + 1) * tile)
            out[y0 - y : y1 - y, x0 - x : x1 - x] = t[
                y0 - ty * tile : y1 - ty * tile, x0 - tx * tile : x1 - tx * tile
            ]
    return out


def _level_tile(seed: int, factor: int, ty: int, tx: int, tile: int) -> np.ndarray:
    """Render tile (ty, tx) of the level with downsample ``factor`` (block mean)."""
    if factor == 1:
        return _level0_tile(seed, ty, tx, tile)
    span = tile * factor
    region = render_level0(ty * span, tx * span, span, span, seed=seed, tile=tile)
    # sum the factor rows of each block first (contiguous slabs: fast), then columns
    slabs = region.reshape(tile, factor, span * 3)
    rows = np.zeros((tile, span * 3), np.uint32)
    for k in range(factor):
        rows += slabs[:, k]
    blocks = rows.reshape(tile, tile, factor, 3).sum(axis=2)
    n = factor * factor
    return ((blocks + n // 2) // n).astype(np.uint8)


def _iter_tiles(
    seed: int, factor: int, shape: tuple[int, int], tile: int
) -> Iterator[np.ndarray]:
    """Yield the tiles of one level in TIFF order (row-major), full tile size."""
    for ty in range(-(-shape[0] // tile)):
        for tx in range(-(-shape[1] // tile)):
            yield _level_tile(seed, factor, ty, tx, tile)


def level_shapes(
    width: int, height: int, levels: Sequence[int]
) -> list[tuple[int, int]]:
    """Return the ``(height, width)`` of each level for downsample ``levels``.

    Example::

        >>> level_shapes(19920, 26420, (1, 4, 16))
        [(26420, 19920), (6605, 4980), (1651, 1245)]
    """
    return [(max(1, height // f), max(1, width // f)) for f in levels]


def make_benchmark_slide(
    path: str | os.PathLike[str],
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    tile: int = 256,
    quality: int = 90,
    seed: int = 0,
    levels: Sequence[int] = DEFAULT_LEVELS,
    maxworkers: int | None = None,
) -> Path:
    """Write a deterministic tiled JPEG pyramidal TIFF and return its path.

    Level 0 is ``height x width`` RGB, ``tile``-px tiles, JPEG ``quality``; tifffile
    writes the tiles as complete JPEG streams (no JPEGTables tag) with
    ``PhotometricInterpretation = YCbCr`` and 2x2 chroma subsampling (its default for
    RGB input). Each further entry of ``levels`` (a downsample factor, level 0's ``1``
    first) becomes a reduced-resolution page of the main IFD chain. Tiles are streamed
    from a generator, so memory stays small. The file is written to a temporary name
    and renamed, so an interrupted run leaves no truncated slide behind.

    Example::

        >>> make_benchmark_slide("/tmp/s.tif", width=1024, height=768)  # doctest: +SKIP
        PosixPath('/tmp/s.tif')
    """
    path = Path(path)
    if not levels or levels[0] != 1:
        msg = f"levels must start with 1, got {levels!r}"
        raise ValueError(msg)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    res = 1e4 / MPP  # pixels per centimetre
    try:
        with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**32) as tif:
            for i, (factor, shape) in enumerate(
                zip(levels, level_shapes(width, height, levels), strict=True)
            ):
                tif.write(
                    _iter_tiles(seed, factor, shape, tile),
                    shape=(*shape, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    subfiletype=0 if i == 0 else 1,
                    resolution=(res / factor, res / factor),
                    resolutionunit="CENTIMETER",
                    description=(
                        f"wsiarray synthetic benchmark slide seed={seed} "
                        f"quality={quality} level={i} downsample={factor}"
                    ),
                    metadata=None,
                    software="wsiarray-benchmarks",
                    maxworkers=maxworkers,
                )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def benchmark_slide_path(
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    tile: int = 256,
    quality: int = 90,
    seed: int = 0,
    levels: Sequence[int] = DEFAULT_LEVELS,
    *,
    verbose: bool = True,
) -> Path:
    """Return the cached benchmark slide for these parameters, writing it if missing.

    Example::

        >>> benchmark_slide_path(width=2048, height=2048).exists()  # doctest: +SKIP
        True
    """
    lv = "-".join(str(f) for f in levels)
    name = f"synthetic_{width}x{height}_t{tile}_q{quality}_s{seed}_l{lv}.tif"
    path = cache_dir() / name
    if not path.exists():
        if verbose:
            print(f"writing {path} ...", flush=True)
        t0 = time.perf_counter()
        make_benchmark_slide(path, width, height, tile, quality, seed, levels)
        if verbose:
            size = path.stat().st_size / 2**20
            print(f"wrote {path} ({size:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m benchmarks.synthetic OUT.tif [options]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output TIFF path")
    p.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    p.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--levels", type=int, nargs="+", default=list(DEFAULT_LEVELS),
        help="downsample factors, starting with 1 (default: 1 4 16)",
    )
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    make_benchmark_slide(a.out, a.width, a.height, a.tile, a.quality, a.seed, a.levels)
    size = a.out.stat().st_size / 2**20
    print(f"wrote {a.out} ({size:.1f} MiB) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
