"""MONAI's whole-slide reader interface over wsiarray (the optional extra ``wsiarray[monai]``).

:class:`WSIReader` is a ``monai.data.BaseWSIReader``, so it goes wherever MONAI
takes a whole-slide reader: ``reader=`` of ``PatchWSIDataset``,
``SlidingPatchWSIDataset`` and ``MaskedPatchWSIDataset`` (the class or an
instance), and ``LoadImage(reader=...)``. ``read`` returns
:class:`wsiarray.Slide` handles, which pickle as recipes, so datasets travel to
``spawn`` and ``fork`` DataLoader workers and each worker opens each file once and
shares it, with the tile cache, across all patches it reads. This module imports
MONAI (and so PyTorch); ``import wsiarray`` never imports it.

Example::

    from monai.data import DataLoader, PatchWSIDataset
    from wsiarray.monai import WSIReader

    data = [{"image": "a.svs", "location": [1000, 2000], "label": 0}]  # (row, column), level 0
    ds = PatchWSIDataset(data, patch_size=224, patch_level=0, reader=WSIReader)
    loader = DataLoader(ds, batch_size=32, num_workers=2)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from monai.data.wsi_reader import BaseWSIReader
from monai.utils import ensure_tuple, ensure_tuple_rep

from ._memory import channels_first
from ._request import parse_workers
from .errors import ArgumentError
from .slide import Slide

__all__ = ["WSIReader"]

#: What ``read`` (and so ``WSIReader(**kwargs)``) passes on to :class:`wsiarray.Slide`.
SLIDE_OPTIONS = frozenset({"fill", "apply_icc"})


class WSIReader(BaseWSIReader):
    """MONAI's whole-slide reader contract, read by wsiarray's native engine.

    Arguments are those of MONAI's readers (``level``, ``mpp``, ``mpp_rtol``,
    ``mpp_atol``, ``power``, ``power_rtol``, ``power_atol``, ``channel_dim``,
    ``dtype``, ``device``, ``mode``) plus ``num_workers``, the native threads that
    decode each patch (0: the calling thread, the right choice inside DataLoader
    workers), and the :class:`wsiarray.Slide` options ``fill`` (pixels outside the
    image; default 0) and ``apply_icc``.

    As in MONAI, ``location`` is ``(row, column)`` in level-0 pixels and ``size``
    ``(height, width)`` in the level's pixels. The level-0 location maps to the
    level as cuCIM and OpenSlide map it, ``floor(x / downsample)``; MONAI's
    ``TiffFileWSIReader`` rounds instead, so at levels above 0 its patches can sit
    one level pixel away. A patch reaching outside the image keeps its size, the
    outside being ``fill`` (``TiffFileWSIReader`` cuts such patches short).
    ``mode="RGBA"`` adds an opaque alpha channel to RGB slides; ``"RGB"`` drops
    the alpha of RGBA slides. ``mpp`` and ``power`` choose a level with MONAI's
    tolerances, from wsiarray's per-axis pixel size of each level
    (``mpp0 * w0 / w``); :meth:`get_wsi_at_mpp` reads the whole slide at any pixel
    size with wsiarray's area average (``Slide.read_region(mpp=...)``).

    Example:
        >>> reader = WSIReader(level=1)
        >>> wsi = reader.read(path)
        >>> image, meta = reader.get_data(wsi, location=(100, 200), size=(64, 32))
        >>> image.shape, meta["backend"], meta["level"], meta["location"].tolist()
        ((3, 64, 32), 'wsiarray', 1, [100, 200])
        >>> [round(m, 3) for m in reader.get_mpp(wsi, 1)]  # (y, x): 763 rows became 382
        [0.999, 1.0]
    """

    supported_suffixes: ClassVar[list[str]] = ["tif", "tiff", "svs"]
    backend = "wsiarray"

    def __init__(self, num_workers: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(self.kwargs) - SLIDE_OPTIONS)
        if unknown:
            raise ArgumentError(f"unknown WSIReader arguments {unknown}; "
                                f"slide options are {sorted(SLIDE_OPTIONS)}")
        if self.mode not in ("RGB", "RGBA"):
            raise ArgumentError(f"mode must be 'RGB' or 'RGBA', got {self.mode!r}")
        self.num_workers = parse_workers(num_workers)

    # -- what MONAI asks of a slide ---------------------------------------------------

    @staticmethod
    def get_level_count(wsi: Slide) -> int:
        """Number of pyramid levels (associated images are not levels)."""
        return wsi.level_count

    def get_size(self, wsi: Slide, level: int) -> tuple[int, int]:
        """``(height, width)`` of ``level``."""
        width, height = wsi.level_dimensions[level]
        return (height, width)

    def get_downsample_ratio(self, wsi: Slide, level: int) -> float:
        """Level-0 pixels per level pixel, ``(w0/w + h0/h) / 2`` as OpenSlide and cuCIM give it."""
        return float(wsi.level_downsamples[level])

    @staticmethod
    def get_file_path(wsi: Slide) -> str:
        """The slide's absolute path."""
        return wsi.path

    def get_mpp(self, wsi: Slide, level: int) -> tuple[float, float]:
        """``(y, x)`` pixel size of ``level`` in micrometres (MONAI's order), per axis ``mpp0 * w0 / w``."""
        mpp = wsi.mpp
        if mpp is None:
            raise ArgumentError(f"{wsi.path}: the slide does not say its pixel size (mpp); use `level`")
        (w0, h0), (w, h) = wsi.level_dimensions[0], wsi.level_dimensions[level]
        return (mpp[1] * h0 / h, mpp[0] * w0 / w)

    def get_power(self, wsi: Slide, level: int) -> float:
        """Objective power of ``level``: the scanner's power over the level's downsample."""
        power = wsi.objective_power
        if not power:
            raise ArgumentError(f"{wsi.path}: the slide does not give its objective power; use `level`")
        return float(power) / self.get_downsample_ratio(wsi, level)

    def read(self, data: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
             **kwargs: Any) -> Slide | list[Slide]:
        """Open one slide, or a list of slides for a list of paths.

        ``kwargs`` (``fill``, ``apply_icc``) override the reader's. Opening is cheap
        after the first time: the process's handle manager keeps the file open.
        """
        options = {**self.kwargs, **kwargs}
        unknown = sorted(set(options) - SLIDE_OPTIONS)
        if unknown:
            raise ArgumentError(f"unknown slide options {unknown}; they are {sorted(SLIDE_OPTIONS)}")
        filenames = ensure_tuple(data)
        slides = [Slide(name, **options) for name in filenames]
        return slides if len(filenames) > 1 else slides[0]

    def _get_patch(self, wsi: Slide, location: tuple[int, int], size: tuple[int, int], level: int,
                   dtype: Any, mode: str) -> np.ndarray:
        """One native read of ``size`` ``(h, w)`` at level-0 ``location`` ``(row, column)``."""
        (row, column), (height, width) = location, size
        patch = wsi.read_region((int(column), int(row)), (int(width), int(height)), int(level),
                                num_workers=self.num_workers)
        return self._shaped(patch, dtype, mode, wsi)

    def get_wsi_at_mpp(self, wsi: Slide, mpp: float | tuple[float, float], atol: float = 0.0,
                       rtol: float = 0.05) -> np.ndarray:
        """The whole slide at ``mpp`` (``(y, x)`` or one number), channels at ``channel_dim``.

        A level whose pixel size is within the tolerances (MONAI's rule) is
        returned as it is; otherwise the slide is read at exactly ``mpp`` with
        wsiarray's area average of the finest level needed
        (``Slide.read_region(mpp=...)``), where MONAI's readers resize with PIL's
        bilinear filter. Either way ``ceil(w0 * mpp0 / mpp)`` pixels wide, etc.
        """
        mpp_y, mpp_x = ensure_tuple_rep(mpp, 2)
        mpps = [self.get_mpp(wsi, level) for level in range(wsi.level_count)]
        closest = self._find_closest_level("mpp", (mpp_y, mpp_x), mpps, 0, 5)
        within, _ = self._compute_mpp_tolerances(closest, mpps, (mpp_y, mpp_x), atol, rtol)
        if within:
            image = wsi.read_region(level=closest, num_workers=self.num_workers)
        else:
            image = wsi.read_region(mpp=(float(mpp_x), float(mpp_y)), num_workers=self.num_workers)
        dtype = self.dtype if isinstance(self.dtype, np.dtype) else image.dtype
        return self._shaped(image, dtype, self.mode, wsi)

    def _shaped(self, image: np.ndarray, dtype: Any, mode: str, wsi: Slide) -> np.ndarray:
        """``(h, w, c)`` pixels in ``mode``'s channels and ``dtype``, channels moved to ``channel_dim``."""
        if mode not in ("RGB", "RGBA"):
            raise ArgumentError(f"mode must be 'RGB' or 'RGBA', got {mode!r}")
        channels = image.shape[2]
        if channels not in (3, 4):
            raise ArgumentError(f"{wsi.path}: MONAI's WSI readers need 3 or 4 channels ({mode!r} mode); "
                                f"this slide has {channels}")
        if np.dtype(dtype) == image.dtype and self.channel_dim in (0, -3) and image.flags.c_contiguous \
                and not (mode == "RGBA" and channels == 3):
            # MONAI's default (uint8, channels first): one native pass from the interleaved pixels
            # straight into the final layout, dropping alpha for "RGB" on the way.
            return channels_first(image, len(mode), self.num_workers)
        if mode == "RGB" and channels == 4:
            image = image[..., :3]
        elif mode == "RGBA" and channels == 3:
            opaque = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1
            image = np.concatenate([image, np.full((*image.shape[:2], 1), opaque, image.dtype)], axis=2)
        moved = np.moveaxis(image, -1, self.channel_dim)
        if moved.flags.c_contiguous:
            return moved.astype(dtype, copy=False)
        # One pass into a C-contiguous array in the final layout (and dtype): MONAI's collate stacks
        # patches with torch.stack, whose strided copy of a channel-first view of interleaved pixels
        # took twice as long as a contiguous copy on one thread (torch 2.13 CPU, 32 224-px patches:
        # 6.2 ms against 3.3 ms), and up to 1,000x as long with two OpenMP threads on a loaded machine.
        out = np.empty(moved.shape, dtype)
        np.copyto(out, moved, casting="unsafe")
        return out
