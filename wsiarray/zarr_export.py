"""Export a slide as an OME-Zarr pyramid (NGFF 0.5 multiscales on Zarr v3).

Each exported level becomes the array ``<level>`` of one Zarr v3 group, with axes
``("c", "y", "x")`` (NGFF orders channel before space), ``dimension_names`` set,
chunks of one channel by about 1024 x 1024 pixels (whole tiles), and the group's
``attributes["ome"]`` holding NGFF 0.5 ``multiscales`` (axes with micrometre units
when the pixel size is known, one ``scale`` per level and a ``translation`` that
keeps pixel centres aligned across levels) and ``omero`` channel metadata (names,
colours, windows). ``attributes["wsiarray"]`` keeps the source file, its vendor
and its properties.

Pixels flow through dask (:func:`wsiarray.dask.to_dask`, transposed to
``(c, y, x)``); each dask chunk covers whole Zarr chunks, so writers never share a
chunk. ``progress=True`` shows a progress bar, per chunk written, in a notebook or
on standard error (by default, when standard error is a terminal).

Example:
    >>> import wsiarray
    >>> from wsiarray.zarr_export import to_zarr
    >>> group = to_zarr(wsiarray.open(path), tmp / "slide.ome.zarr")
    >>> group["0"].shape, group.attrs["ome"]["version"]
    ((3, 763, 1000), '0.5')

Or from the shell: ``wsiarray convert slide.svs slide.ome.zarr``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import dask.array as da
import numpy as np
import zarr

from . import dask as wdask
from ._progress import dask_progress
from ._request import parse_level, parse_progress
from .errors import ArgumentError
from .slide import Slide

__all__ = ["DEFAULT_ZARR_CHUNK", "NGFF_VERSION", "multiscales_metadata", "to_zarr"]

#: NGFF version written.
NGFF_VERSION = "0.5"
#: Default Zarr chunk side in pixels (rounded to whole tiles).
DEFAULT_ZARR_CHUNK = 1024

_COLOURS = {"R": "FF0000", "G": "00FF00", "B": "0000FF", "Y": "FFFFFF", "A": "FFFFFF"}


def _levels(slide: Slide, levels: Iterable[int] | None) -> list[int]:
    if levels is None:
        return list(range(slide.level_count))
    chosen = sorted({parse_level(level, slide.level_count) for level in levels})
    if not chosen:
        raise ArgumentError("levels must name at least one level")
    return chosen


def _window(dtype: np.dtype) -> dict[str, float]:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = int(info.min), int(info.max)
        return {"min": lo, "max": hi, "start": lo, "end": hi}
    if dtype.kind == "b":
        return {"min": 0, "max": 1, "start": 0, "end": 1}
    finfo = np.finfo(dtype)
    return {"min": float(finfo.min), "max": float(finfo.max), "start": 0.0, "end": 1.0}


def multiscales_metadata(slide: Slide, levels: Iterable[int] | None = None, name: str | None = None
                         ) -> dict[str, Any]:
    """The ``attributes["ome"]`` object (NGFF 0.5) describing ``levels`` of ``slide``.

    Scales are micrometres per pixel when ``slide.mpp`` is known (pixels of level 0
    otherwise), per axis from each level's extent (``w0 / w * mpp_x``). Level ``l``
    gets ``translation = (scale_l - scale_0) / 2`` so pixel centres line up with level 0.

    Example:
        >>> meta = multiscales_metadata(wsiarray.open(svs_path))
        >>> meta["multiscales"][0]["datasets"][1]["coordinateTransformations"]  # mpp 0.25, 2x
        [{'type': 'scale', 'scale': [1.0, 0.5, 0.5]},
         {'type': 'translation', 'translation': [0.0, 0.125, 0.125]}]
    """
    chosen = _levels(slide, levels)
    w0, h0 = slide.level_dimensions[0]
    mpp = slide.mpp
    unit_x, unit_y = (float(mpp[0]), float(mpp[1])) if mpp else (1.0, 1.0)
    space: dict[str, str] = {"type": "space"}
    if mpp:
        space["unit"] = "micrometer"
    axes = [{"name": "c", "type": "channel"}, {"name": "y", **space}, {"name": "x", **space}]
    datasets = []
    for level in chosen:
        width, height = slide.level_dimensions[level]
        scale_y, scale_x = h0 / height * unit_y, w0 / width * unit_x
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [1.0, scale_y, scale_x]}]
        shift_y, shift_x = (scale_y - unit_y) / 2, (scale_x - unit_x) / 2
        if shift_y or shift_x:
            transforms.append({"type": "translation", "translation": [0.0, shift_y, shift_x]})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    window = _window(slide.dtype)
    channels = [
        {
            "label": label,
            "color": _COLOURS.get(label, "FFFFFF") if slide.channels in (1, 3, 4) else "FFFFFF",
            "window": dict(window),
            "active": label != "A",
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
        }
        for label in slide.channel_names
    ]
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name or os.path.basename(slide.path),
                "axes": axes,
                "datasets": datasets,
                "type": "wsiarray pyramid levels (no resampling)",
            }
        ],
        "omero": {
            "channels": channels,
            "rdefs": {"model": "color" if slide.channels >= 3 else "greyscale", "defaultZ": 0, "defaultT": 0},
        },
    }


def to_zarr(
    slide: Slide,
    store: Any,
    levels: Iterable[int] | None = None,
    *,
    chunks: wdask.ChunksLike = DEFAULT_ZARR_CHUNK,
    overwrite: bool = False,
    progress: bool | None = None,
    compressors: Any = "auto",
    name: str | None = None,
) -> zarr.Group:
    """Write ``levels`` of ``slide`` (default: all) to ``store`` as an OME-Zarr v0.5 image.

    ``store`` is a path or any Zarr store. ``chunks`` sets the Zarr chunks' spatial
    size (see :func:`wsiarray.dask.level_chunks`; default about 1024 px, whole
    tiles); each level is computed through dask in chunks of about 2048 px
    covering whole Zarr chunks. ``overwrite=False`` refuses an existing store.
    ``progress=True`` shows a progress bar that moves per chunk written (in a
    notebook, or on stderr; default ``None``: when stderr is a terminal; with a
    ``dask.distributed`` client the work runs on its workers, whose dashboard
    shows it). ``compressors`` goes to ``zarr.Group.create_array``. Returns the group.

    Example:
        >>> group = to_zarr(slide, tmp / "out.ome.zarr", levels=[0, 1], overwrite=True)
        >>> sorted(group.array_keys())
        ['0', '1']
    """
    chosen = _levels(slide, levels)
    show = parse_progress(progress)
    group = zarr.open_group(store, mode="w" if overwrite else "w-", zarr_format=3)
    sources: list[da.Array] = []
    targets: list[Any] = []
    for level in chosen:
        (zy, *_), (zx, *_), _ = wdask.level_chunks(slide, level, chunks)
        step_y = max(1, round(wdask.DEFAULT_CHUNK_PIXELS / zy))
        step_x = max(1, round(wdask.DEFAULT_CHUNK_PIXELS / zx))
        array = wdask.to_dask(slide, level, chunks=(zy * step_y, zx * step_x))
        height, width, channels = array.shape
        target = group.create_array(
            str(level),
            shape=(channels, height, width),
            dtype=slide.dtype,
            chunks=(1, min(zy, height), min(zx, width)),
            dimension_names=["c", "y", "x"],
            compressors=compressors,
            fill_value=0,
        )
        sources.append(array.transpose(2, 0, 1))
        targets.append(target)
    with dask_progress(f"{os.path.basename(slide.path)} -> OME-Zarr, chunks", show):
        da.store(sources, targets, lock=False, compute=True)
    group.attrs["ome"] = multiscales_metadata(slide, chosen, name)
    group.attrs["wsiarray"] = {
        "source": slide.path,
        "vendor": slide.vendor,
        "levels": chosen,
        "level_downsamples": [slide.level_downsamples[level] for level in chosen],
        "properties": dict(slide.properties),
    }
    return group
