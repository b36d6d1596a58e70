"""Colour management: a slide's pixels to sRGB through its ICC profile, with littleCMS.

``apply_icc=True`` (on :func:`wsiarray.open` or per read) transforms each
request's output once, in place, after the native engine has filled it: one
call per region, batch or dask chunk, never per tile. littleCMS is reached
through Pillow's :mod:`PIL.ImageCms` (the ``icc`` extra), which is imported on
the first transform only, so ``import wsiarray`` and reads without a profile
never load Pillow.

A transform is built once per (profile bytes, pixel mode, rendering intent)
and kept (:func:`srgb_transform`); littleCMS transforms are safe to share
between threads. :func:`apply_srgb` walks the output in bands of about 1 MiB
of 4-byte pixels. Pillow keeps RGB pixels 4 bytes wide, so a band of 3-channel
pixels is unpacked into a Pillow image, transformed in place and packed back
into the output while the band is in the CPU's cache (4096 x 4096 RGB on one
thread of the development VM: 0.50 s, against 0.66 s through whole-image
``Image.fromarray``/``numpy.asarray`` copies and 0.83 s with numpy's strided
3-to-4-byte copies around a mapped band). RGBA
pixels are mapped by Pillow and transformed where they lie. Pillow releases
the GIL in the transform, so with ``num_workers > 1`` the bands are shared
among that many threads.

Example:
    >>> from PIL import ImageCms
    >>> srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    >>> pixels = np.full((2, 3, 3), 200, np.uint8)
    >>> apply_srgb(pixels, srgb_transform(srgb, "RGB", "example"))  # sRGB to sRGB: unchanged
    >>> pixels[0, 0].tolist()
    [200, 200, 200]
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np

from ._threads import LazyPool
from .errors import FormatError, UnsupportedError

__all__ = ["INTENT", "SrgbTransform", "apply_srgb", "srgb_transform"]

#: Rendering intent of every transform: perceptual (0), Pillow's and most viewers' default.
#: Matrix/TRC profiles, the usual scanner profiles, have no perceptual tables, and
#: littleCMS then uses their colorimetric transform.
INTENT = 0

#: Bytes of 4-byte pixels per band: small enough to stay in a core's cache between
#: the copy in, the transform and the copy out.
BAND_BYTES = 1 << 20



@dataclass(frozen=True, eq=False)
class SrgbTransform:
    """A littleCMS transform from one ICC profile to sRGB, for ``"RGB"`` or ``"RGBA"`` uint8 pixels."""

    mode: str
    transform: Any  # PIL.ImageCms.ImageCmsTransform of Pillow images of this mode


class _ProfileError(Exception):
    """The profile cannot be used; the caller adds which file it came from."""

    def __init__(self, message: str, unsupported: bool) -> None:
        super().__init__(message)
        self.unsupported = unsupported


def srgb_transform(profile: bytes, mode: str, where: str) -> SrgbTransform:
    """The (cached) transform of ``mode`` pixels (``"RGB"``, ``"RGBA"``) from ``profile`` to sRGB.

    ``where`` names the file in errors: an unreadable profile is a
    :class:`~wsiarray.FormatError`, a profile that is not an RGB profile an
    :class:`~wsiarray.UnsupportedError`; without Pillow it is an ``ImportError``
    naming the extra to install.
    """
    try:
        return _build(profile, mode, INTENT)
    except _ProfileError as exc:
        cls = UnsupportedError if exc.unsupported else FormatError
        raise cls(f"{where}: {exc}") from exc.__cause__


@functools.lru_cache(maxsize=32)
def _build(profile: bytes, mode: str, intent: int) -> SrgbTransform:
    try:
        from PIL import ImageCms
    except ImportError as exc:
        raise ImportError(
            "apply_icc=True transforms pixels with littleCMS through Pillow, which is not installed: "
            "pip install 'wsiarray[icc]'"
        ) from exc
    try:
        source = ImageCms.ImageCmsProfile(BytesIO(profile))
    except (OSError, ImageCms.PyCMSError) as exc:
        raise _ProfileError(f"the ICC profile ({len(profile)} bytes) cannot be read: {exc}", False) from exc
    space = source.profile.xcolor_space.strip()
    if space != "RGB":
        raise _ProfileError(f"apply_icc=True needs an RGB ICC profile, the slide's describes {space!r}", True)
    try:
        srgb = ImageCms.createProfile("sRGB")
        transform = ImageCms.buildTransform(source, srgb, mode, mode, intent)
    except ImageCms.PyCMSError as exc:
        raise _ProfileError(f"no transform from the ICC profile to sRGB: {exc}", True) from exc
    return SrgbTransform(mode, transform)


def apply_srgb(pixels: np.ndarray, transform: SrgbTransform, workers: int = 1) -> None:
    """Transform C-contiguous uint8 ``(..., width, channels)`` ``pixels`` to sRGB, in place.

    Every leading axis is folded into rows, so a batch ``(N, H, W, C)`` is one
    ``(N * H, W, C)`` image, transformed as a whole. Alpha is kept as stored.
    """
    if not pixels.size:
        return
    width, channels = pixels.shape[-2], pixels.shape[-1]
    image = pixels.reshape(-1, width, channels)  # a view: the caller's array is C-contiguous
    rows = len(image)
    band = max(1, min(rows, BAND_BYTES // (4 * width)))
    starts = list(range(0, rows, band))
    parts = min(max(1, workers), len(starts))
    if parts == 1:
        _apply_bands(image, transform, starts, band)
        return
    groups = [starts[i::parts] for i in range(parts)]
    futures = [_POOL.get().submit(_apply_bands, image, transform, group, band) for group in groups[1:]]
    _apply_bands(image, transform, groups[0], band)
    for future in futures:
        future.result()


def _apply_bands(image: np.ndarray, transform: SrgbTransform, starts: list[int], band: int) -> None:
    from PIL import Image

    width = image.shape[1]
    apply = transform.transform.apply
    if transform.mode == "RGBA":
        for y in starts:
            rows = image[y : y + band]
            # Mapped, not copied: the transform writes the caller's array
            mapped = Image.frombuffer("RGBA", (width, len(rows)), rows, "raw", "RGBA", 0, 1)
            apply(mapped, mapped)
        return
    for y in starts:
        rows = image[y : y + band]
        # Pillow cannot map 3-byte pixels: it unpacks the band into an image of its own
        pil = Image.frombuffer("RGB", (width, len(rows)), rows, "raw", "RGB", 0, 1)
        apply(pil, pil)
        rows.reshape(-1)[:] = np.frombuffer(pil.tobytes(), np.uint8)


#: Threads that run bands of a transform; they spend their time in littleCMS, GIL released.
_POOL = LazyPool("wsiarray-icc", max(1, os.cpu_count() or 1))
