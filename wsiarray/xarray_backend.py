"""xarray engine ``wsiarray``: slides as Datasets and DataTree pyramids.

Registered in the ``xarray.backends`` entry-point group, so once wsiarray is
installed::

    ds = xr.open_dataset("slide.svs", engine="wsiarray", level=0)           # lazy numpy
    ds = xr.open_dataset("slide.svs", engine="wsiarray", chunks={})         # dask, tile-aligned
    tree = xr.open_datatree("slide.svs", engine="wsiarray")                 # /0, /1, ... levels

Each level is one variable ``image`` with dims ``("y", "x", "c")``. Coordinates are
pixel centres in micrometres when the slide's pixel size is known (in level-0 pixels
otherwise), computed from each level's extent so that every level covers the same
physical area: pixel ``j`` of a level with width ``w`` has
``x = (j + 0.5) * (w0 / w) * mpp_x``. ``c`` holds the channel names.

The variable is a :class:`BackendArray` wrapped in xarray's ``LazilyIndexedArray``:
slicing reads only the tiles under the slice, with or without dask, and
``encoding["preferred_chunks"]`` is the tile-aligned chunking of
:func:`wsiarray.dask.level_chunks` (computed without importing dask), so
``chunks={}`` and ``chunks="auto"`` give tile-aligned dask chunks.

:func:`to_xarray` builds the same objects from the dask layer
(:func:`wsiarray.dask.to_dask`), the path that can carry CuPy chunks.

Example:
    >>> import xarray as xr
    >>> ds = xr.open_dataset(path, engine="wsiarray")
    >>> ds.image.sizes
    Frozen({'y': 763, 'x': 1000, 'c': 3})
    >>> ds.image.sel(x=slice(100, 200), y=slice(100, 200)).shape  # micrometres, 0.5 µm/px
    (200, 200, 3)
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from ._chunks import ChunksLike, level_chunks, mpp_chunk_shape
from ._request import DctLike, MppLike, mpp_target, parse_apply_icc, parse_dct, parse_level, parse_mpp
from .errors import ArgumentError, WSIError
from .slide import DEFAULT_LEVEL, Slide

__all__ = [
    "TIFF_EXTENSIONS",
    "WsiarrayBackendArray",
    "WsiarrayBackendEntrypoint",
    "level_coords",
    "to_xarray",
]

#: File name endings the engine claims in ``guess_can_open`` (with the TIFF magic).
TIFF_EXTENSIONS = (".svs", ".tif", ".tiff", ".btf", ".tf2", ".tf8", ".qptiff")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: Name of the image variable in every Dataset.
VARIABLE = "image"
DIMS = ("y", "x", "c")


class WsiarrayBackendArray(BackendArray):
    """One pyramid level as an xarray ``BackendArray`` (BASIC indexing, reads only what it needs).

    Holds a :class:`~wsiarray.Slide` handle of its own, which pickles as its
    recipe, so the array travels to dask workers (and through a scheduler)
    without an open file.

    Example:
        >>> array = WsiarrayBackendArray(slide, level=0)
        >>> array[indexing.BasicIndexer((slice(0, 10), slice(0, 20), slice(None)))].shape
        (10, 20, 3)
    """

    def __init__(self, slide: Slide, level: int, mpp: tuple[float, float] | None = None,
                 dct: DctLike = True) -> None:
        self.slide = copy.copy(slide)  # pickles as a recipe, without opening the file
        self.level = level
        self.mpp = mpp  # a virtual level at this pixel size (read_mpp_region), not ``level``
        self.dct = dct
        if mpp is None:
            width, height = slide.level_dimensions[level]
        else:
            width, height = mpp_target(mpp, slide.mpp, slide.level_dimensions).shape
        self.shape = (height, width, slide.channels)
        self.dtype = slide.dtype

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._raw_indexing_method
        )

    def _raw_indexing_method(self, key: tuple[Any, ...]) -> np.ndarray:
        """Read the bounding box of ``key`` (ints and slices) once, then cut it."""
        spans: list[tuple[int, int]] = []
        cuts: list[Any] = []
        empty = False
        for k, n in zip(key[:2], self.shape[:2], strict=True):
            if isinstance(k, slice):
                r = range(*k.indices(n))
                if not len(r):
                    empty = True
                    spans.append((0, 0))
                    cuts.append(slice(0, 0))
                    continue
                lo, hi = min(r[0], r[-1]), max(r[0], r[-1]) + 1
                stop = r[-1] - lo + (1 if r.step > 0 else -1)
                spans.append((lo, hi))
                cuts.append(slice(r[0] - lo, stop if stop >= 0 else None, r.step))
            else:
                i = int(k)
                if not -n <= i < n:
                    raise IndexError(f"index {i} is out of bounds for an axis of size {n}")
                i %= n
                spans.append((i, i + 1))
                cuts.append(0)
        cuts.append(key[2])
        (y0, y1), (x0, x1) = spans
        if empty:
            region = np.empty((y1 - y0, x1 - x0, self.shape[2]), self.dtype)
        elif self.mpp is None:
            region = self.slide.read_level_region(self.level, (x0, y0), (x1 - x0, y1 - y0))
        else:
            region = self.slide.read_mpp_region(self.mpp, (x0, y0), (x1 - x0, y1 - y0), dct=self.dct)
        return region[tuple(cuts)]


# -- building datasets ------------------------------------------------------------------


def level_coords(slide: Slide, level: int) -> dict[str, xr.Variable]:
    """Coordinates ``y``, ``x`` (pixel centres) and ``c`` (channel names) of ``level``.

    Micrometres when ``slide.mpp`` is known, level-0 pixels otherwise; every level
    spans the same extent ``[0, w0 * mpp_x)``, so levels overlay exactly.

    Example:
        >>> level_coords(slide, 1)["x"].values[:2]  # mpp 0.5, downsample 2
        array([0.5, 1.5])
    """
    w0, h0 = slide.level_dimensions[0]
    width, height = slide.level_dimensions[level]
    mpp = slide.mpp
    unit_x, unit_y = (float(mpp[0]), float(mpp[1])) if mpp else (1.0, 1.0)
    units = "micrometer" if mpp else "pixel"
    x = (np.arange(width) + 0.5) * (w0 / width) * unit_x
    y = (np.arange(height) + 0.5) * (h0 / height) * unit_y
    return {
        "y": xr.Variable("y", y, {"units": units, "long_name": "y of pixel centre"}),
        "x": xr.Variable("x", x, {"units": units, "long_name": "x of pixel centre"}),
        "c": xr.Variable("c", np.array(slide.channel_names, dtype=str), {"long_name": "channel"}),
    }


def _level_attrs(slide: Slide, level: int) -> dict[str, Any]:
    info = slide.levels[level]
    return {
        "level": info.index,
        "downsample": info.downsample,
        "tile_size": [info.tile_width, info.tile_height],
        "compression": info.compression,
    }


def _slide_attrs(slide: Slide) -> dict[str, Any]:
    attrs: dict[str, Any] = dict(slide.properties)
    attrs["wsiarray.path"] = slide.path
    attrs["wsiarray.vendor"] = slide.vendor
    attrs["wsiarray.level_count"] = slide.level_count
    attrs["wsiarray.level_downsamples"] = list(slide.level_downsamples)
    if slide.mpp:
        attrs["wsiarray.mpp"] = [float(v) for v in slide.mpp]
    return attrs


def _level_dataset(slide: Slide, level: int, data: Any, attrs: dict[str, Any]) -> xr.Dataset:
    chunks = level_chunks(slide, level)
    encoding = {"preferred_chunks": {dim: axis[0] for dim, axis in zip(DIMS, chunks, strict=True)}}
    image = xr.Variable(DIMS, data, encoding=encoding)
    return xr.Dataset({VARIABLE: image}, coords=level_coords(slide, level), attrs=attrs)


def _mpp_dataset(slide: Slide, mpp: MppLike, dct: DctLike, attrs: dict[str, Any]) -> xr.Dataset:
    """The slide at pixel size ``mpp`` as a virtual level: lazily read with ``read_mpp_region``."""
    target = mpp_target(mpp, slide.mpp, slide.level_dimensions)
    mpp_x, mpp_y = parse_mpp(mpp)
    array = WsiarrayBackendArray(slide, target.level, (mpp_x, mpp_y), dct)
    height, width = array.shape[:2]
    chunk_h, chunk_w = mpp_chunk_shape(slide, target)
    encoding = {"preferred_chunks": {"y": chunk_h, "x": chunk_w, "c": slide.channels}}
    coords = level_coords(slide, 0)
    # output pixel j covers [j, j + 1) * mpp micrometres, as level pixels do
    coords["x"] = xr.Variable("x", (np.arange(width) + 0.5) * mpp_x, coords["x"].attrs)
    coords["y"] = xr.Variable("y", (np.arange(height) + 0.5) * mpp_y, coords["y"].attrs)
    attrs = {**attrs, "level": target.level, "mpp": [mpp_x, mpp_y], "dct": dct}
    image = xr.Variable(DIMS, indexing.LazilyIndexedArray(array), encoding=encoding)
    return xr.Dataset({VARIABLE: image}, coords=coords, attrs=attrs)


def _associated_datasets(slide: Slide) -> dict[str, xr.Dataset]:
    out: dict[str, xr.Dataset] = {}
    images = slide.associated_images
    for name in images:
        try:
            image = np.asarray(images[name])
        except WSIError as exc:
            warnings.warn(f"{slide.path}: associated image {name!r} skipped: {exc}", stacklevel=3)
            continue
        if image.ndim == 2:
            image = image[:, :, None]
        out[name] = xr.Dataset({VARIABLE: xr.Variable(DIMS, image)}, attrs={"associated_image": name})
    return out


def _groups(slide: Slide, level_data: Iterable[tuple[int, Any]]) -> dict[str, xr.Dataset]:
    groups: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=_slide_attrs(slide))}
    for level, data in level_data:
        groups[f"/{level}"] = _level_dataset(slide, level, data, _level_attrs(slide, level))
    associated = _associated_datasets(slide)
    if associated:
        groups["/associated"] = xr.Dataset()
        for name, ds in associated.items():
            groups[f"/associated/{name}"] = ds
    return groups


def _open_slide(filename_or_obj: Any, fill: Any = None, apply_icc: Any = None,
                storage_options: dict[str, Any] | None = None) -> Slide:
    if isinstance(filename_or_obj, Slide):
        if parse_apply_icc(apply_icc, filename_or_obj.apply_icc) != filename_or_obj.apply_icc:
            raise ArgumentError(
                "a Slide brings its own apply_icc: open it with wsiarray.open(path, apply_icc=...)"
            )
        return copy.copy(filename_or_obj)  # a handle of our own: closing it leaves the caller's open
    if isinstance(filename_or_obj, (str, os.PathLike)):
        return Slide(filename_or_obj, fill=fill, apply_icc=parse_apply_icc(apply_icc, False),
                     storage_options=storage_options)
    raise ArgumentError(
        f"the wsiarray engine opens paths or wsiarray.Slide objects, not {type(filename_or_obj).__name__}"
    )


def _lazy(slide: Slide, level: int) -> Any:
    return indexing.LazilyIndexedArray(WsiarrayBackendArray(slide, level))


def _drop(ds: xr.Dataset, drop_variables: str | Iterable[str] | None) -> xr.Dataset:
    if drop_variables is None:
        return ds
    names = [drop_variables] if isinstance(drop_variables, str) else list(drop_variables)
    return ds.drop_vars(names, errors="ignore")


def _open_groups(filename_or_obj: Any, drop_variables: str | Iterable[str] | None,
                 fill: Any, apply_icc: Any,
                 storage_options: dict[str, Any] | None = None) -> tuple[dict[str, xr.Dataset], Slide]:
    """The DataTree's groups and the handle they read through (closed with the root)."""
    slide = _open_slide(filename_or_obj, fill, apply_icc, storage_options)
    try:
        levels = [(level, _lazy(slide, level)) for level in range(slide.level_count)]
        groups = {path: _drop(ds, drop_variables) for path, ds in _groups(slide, levels).items()}
    except BaseException:
        slide.close()
        raise
    groups["/"].set_close(slide.close)
    return groups, slide


class WsiarrayBackendEntrypoint(BackendEntrypoint):
    """The ``wsiarray`` xarray engine: whole-slide TIFFs (SVS, generic pyramidal TIFF, OME-TIFF).

    ``open_dataset(path, level=0, fill=None, apply_icc=None)`` gives one level;
    ``open_datatree`` gives every level in groups ``/0``, ``/1``, ... and
    associated images in ``/associated/<name>``, with the slide's metadata on the
    root. ``apply_icc=True`` gives sRGB pixels (see ``wsiarray.open``); a
    ``Slide`` passed in brings its own setting.

    Example:
        >>> xr.open_dataset(path, engine="wsiarray", level=1, chunks={}).image.chunks  # about 2048 px
        ((382,), (500,), (3,))
        >>> sorted(xr.open_datatree(svs_path, engine="wsiarray").children)
        ['0', '1', 'associated']
    """

    description = "Whole-slide images (Aperio SVS, pyramidal TIFF, OME-TIFF) through wsiarray's tile engine"
    url = "https://github.com/wsiarray/wsiarray"
    open_dataset_parameters = (
        "filename_or_obj", "drop_variables", "level", "fill", "apply_icc", "storage_options",
    )
    supports_groups = True

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """True for a ``Slide`` or an existing file with a TIFF extension and the TIFF magic.

        Example:
            >>> WsiarrayBackendEntrypoint().guess_can_open(svs_path)
            True
            >>> WsiarrayBackendEntrypoint().guess_can_open("notes.txt")
            False
        """
        if isinstance(filename_or_obj, Slide):
            return True
        if not isinstance(filename_or_obj, (str, os.PathLike)):
            return False
        path = os.fspath(filename_or_obj)
        if not str(path).lower().endswith(TIFF_EXTENSIONS):
            return False
        if "://" in str(path) and not str(path).startswith("file://"):
            return True  # a URL: its extension says enough, without a request
        try:
            with open(path, "rb") as fh:
                return fh.read(4) in _TIFF_MAGIC
        except OSError:
            return False

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        level: int = DEFAULT_LEVEL,
        fill: Any = None,
        apply_icc: bool | None = None,
        mpp: MppLike = None,
        dct: DctLike = True,
        storage_options: dict[str, Any] | None = None,
    ) -> xr.Dataset:
        """One level as a Dataset with variable ``image``; attrs hold the slide's metadata.

        ``filename_or_obj`` may be a URL, with ``storage_options`` for fsspec (see
        :func:`wsiarray.open`).

        ``mpp`` (not with ``level``) gives the slide at that pixel size instead, a
        virtual level read as :meth:`wsiarray.Slide.read_region` with ``mpp=``
        reads (area average, ``dct`` as there), in output-pixel chunks aligned to
        the source level's tiles; at a level's own pixel size it is that level.

        Example:
            >>> ds = xr.open_dataset(svs_path, engine="wsiarray", level=1)
            >>> ds.attrs["downsample"], ds.attrs["openslide.vendor"]
            (2.0, 'aperio')
            >>> xr.open_dataset(path, engine="wsiarray", mpp=0.75).image.shape
            (509, 667, 3)
        """
        slide = _open_slide(filename_or_obj, fill, apply_icc, storage_options)
        try:
            if mpp is not None:
                target = mpp_target(mpp, slide.mpp, slide.level_dimensions,
                                    None if level is DEFAULT_LEVEL else level)
                if not target.exact:
                    dct = parse_dct(dct)
                    ds = _drop(_mpp_dataset(slide, mpp, dct, _slide_attrs(slide)), drop_variables)
                    ds.set_close(slide.close)
                    return ds
                level = target.level
            level = parse_level(level, slide.level_count)
            attrs = {**_slide_attrs(slide), **_level_attrs(slide, level)}
            ds = _drop(_level_dataset(slide, level, _lazy(slide, level), attrs), drop_variables)
        except BaseException:
            slide.close()
            raise
        ds.set_close(slide.close)
        return ds

    def open_groups_as_dict(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        fill: Any = None,
        apply_icc: bool | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> dict[str, xr.Dataset]:
        """Groups ``/`` (attributes), ``/0``, ``/1``, ... and ``/associated/<name>``.

        Example:
            >>> list(WsiarrayBackendEntrypoint().open_groups_as_dict(svs_path))
            ['/', '/0', '/1', '/associated', '/associated/thumbnail', '/associated/label',
             '/associated/macro']
        """
        groups, _ = _open_groups(filename_or_obj, drop_variables, fill, apply_icc, storage_options)
        return groups

    def open_datatree(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        fill: Any = None,
        apply_icc: bool | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> xr.DataTree:
        """Every level in sibling groups ``/0``, ``/1``, ...; attributes on the root.

        Example:
            >>> tree = xr.open_datatree(path, engine="wsiarray")
            >>> tree["1"].image.shape
            (382, 500, 3)
        """
        groups, slide = _open_groups(filename_or_obj, drop_variables, fill, apply_icc, storage_options)
        tree = xr.DataTree.from_dict(groups)
        tree.set_close(slide.close)
        return tree


def to_xarray(
    slide: Slide, level: int | None = None, device: str = "cpu", chunks: ChunksLike = None,
    apply_icc: bool | None = None,
) -> xr.Dataset | xr.DataTree:
    """``slide`` as xarray objects built on :func:`wsiarray.dask.to_dask` arrays.

    ``level=None`` gives the whole pyramid as a DataTree laid out as
    ``open_datatree`` lays it out; an int gives that level's Dataset, as
    ``open_dataset`` does, but with dask arrays (CuPy chunks with
    ``device="cuda"``: ``.as_numpy()`` brings them back). ``apply_icc`` as in ``to_dask``
    (associated images follow the slide handle's own setting).

    Example:
        >>> tree = to_xarray(slide)
        >>> tree["0"].image.data
        dask.array<wsiarray-read, shape=(763, 1000, 3), ...>
        >>> to_xarray(slide, level=1).image.mean(["y", "x"]).compute().values.round()
        array([132., 137., 134.])
    """
    from .dask import to_dask

    if level is None:
        levels = [(i, to_dask(slide, i, chunks, device, apply_icc)) for i in range(slide.level_count)]
        return xr.DataTree.from_dict(_groups(slide, levels))
    level = parse_level(level, slide.level_count)
    attrs = {**_slide_attrs(slide), **_level_attrs(slide, level)}
    return _level_dataset(slide, level, to_dask(slide, level, chunks, device, apply_icc), attrs)
