"""Slides for the notebooks: a synthetic H&E-like Aperio slide, and the shared test data when present.

The notebooks run in CI and in the documentation build, where no real slide is
guaranteed, so each makes its slide here: tissue-like texture (pink stroma,
purple nuclei, white background) from smooth random fields, written as an
Aperio SVS (JPEG tiles, levels at 1, 4 and 16x, a thumbnail, a label and a
macro image) with :mod:`tifffile`. A slide is written once per size and seed
into a cache folder in the temporary directory and reused by later notebooks.

Example:
    >>> from slides import synthetic_slide
    >>> path = synthetic_slide()          # 4096 x 3072 px, 256-px JPEG tiles, 0.25 um/px
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["shared_data", "synthetic_slide", "tissue"]

#: Pixel size of the synthetic slides' level 0, micrometres.
MPP = 0.25


def shared_data() -> Path | None:
    """The project's shared test slides (``../shared/data`` of the repository), or None."""
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "shared" / "data" / "MANIFEST.md").is_file():
            return folder / "shared" / "data"
    return None


def _smooth(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """A smooth random field in [0, 1): bilinear interpolation of a coarse random grid."""
    gh, gw = height // cell + 2, width // cell + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    ys = np.linspace(0, gh - 1.001, height, dtype=np.float32)
    xs = np.linspace(0, gw - 1.001, width, dtype=np.float32)
    y0, x0 = ys.astype(np.intp), xs.astype(np.intp)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def tissue(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An ``(height, width, 3)`` uint8 H&E-like image: tissue islands on a white background.

    The fields are computed at half resolution and doubled, then pixel noise is added:
    a few seconds for a 6144 x 4096 slide.
    """
    rng = np.random.default_rng(seed)
    h, w = -(-height // 2), -(-width // 2)
    shape = 0.6 * _smooth(rng, h, w, 512) + 0.4 * _smooth(rng, h, w, 128)
    inside = shape > 0.52
    texture = 0.5 * _smooth(rng, h, w, 12) + 0.5 * _smooth(rng, h, w, 3)
    nuclei = (_smooth(rng, h, w, 6) > 0.78) & inside
    small = np.full((h, w, 3), 243, np.uint8)
    for channel, (base, depth) in enumerate([(236, 24), (150, 60), (190, 36)]):
        small[..., channel][inside] = (base - depth * texture[inside]).astype(np.uint8)
        small[..., channel][nuclei] = (95, 55, 140)[channel]
    image = small.repeat(2, axis=0).repeat(2, axis=1)[:height, :width].astype(np.int16)
    noise = rng.integers(-5, 6, (256, 256, 1), dtype=np.int16)
    image += np.tile(noise, (-(-height // 256), -(-width // 256), 1))[:height, :width]
    return np.clip(image, 0, 255).astype(np.uint8)


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, -1)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def _cache_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "wsiarray-notebooks"
    folder = Path(os.environ.get("WSIARRAY_NOTEBOOK_CACHE", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def synthetic_slide(width: int = 4096, height: int = 3072, seed: int = 0, tile: int = 256) -> Path:
    """The path of a synthetic Aperio slide of ``width`` x ``height`` pixels (written on first use).

    Levels at downsamples 1, 4 and 16 (as a scanner writes them), JPEG quality 85,
    ``MPP = 0.25`` and ``AppMag = 40`` in the description, a thumbnail, a label
    (a barcode-like stripe pattern) and a macro image (the whole glass slide).
    """
    path = _cache_dir() / f"synthetic-{width}x{height}-seed{seed}-tile{tile}.svs"
    if path.is_file():
        return path
    level0 = tissue(height, width, seed)
    levels = [level0, _downsample(level0, 4), _downsample(level0, 16)]
    header = (
        f"Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
        "JPEG/RGB Q=85"
    )
    thumbnail = _downsample(level0, 32)
    stripes = (np.arange(300) // 7 % 3 == 0) | (np.arange(300) % 11 == 0)
    label = np.full((120, 300, 3), 250, np.uint8)
    label[20:100, stripes] = 20
    macro = np.full((260, 760, 3), 235, np.uint8)
    small = _downsample(level0, max(1, -(-width // 500)))[:220, :500]
    macro[20 : 20 + small.shape[0], 240 : 240 + small.shape[1]] = small
    macro[:, :200] = 200
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with tifffile.TiffWriter(partial) as tw:
        jpeg = {"tile": (tile, tile), "compression": "jpeg", "compressionargs": {"level": 85}}

        def write(image: np.ndarray, description: str, **options: object) -> None:
            tw.write(image, photometric="rgb", description=description, metadata=None, **options)

        write(levels[0], f"{header}|AppMag = 40|MPP = {MPP}|Date = 12/06/26", **jpeg)
        small_size = f"{thumbnail.shape[1]}x{thumbnail.shape[0]}"
        write(
            thumbnail, f"Aperio Image Library v12.0.15\n{width}x{height} -> {small_size} - ", rowsperstrip=64
        )
        for level in levels[1:]:
            write(level, f"{header} -> {level.shape[1]}x{level.shape[0]}|AppMag = 40|MPP = {MPP}", **jpeg)
        write(label, "Aperio Image Library v12.0.15\nlabel 300x120", compression="lzw")
        write(macro, "Aperio Image Library v12.0.15\nmacro 760x260", compression="jpeg")
    partial.replace(path)  # atomic: a notebook running beside never sees half a file
    return path
