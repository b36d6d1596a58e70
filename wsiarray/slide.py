"""`Slide`: an open whole-slide image and its OpenSlide-style read API.

A `Slide` is a thin handle over a shared, per-process *reader*: the tables
the format layer built (:mod:`wsiarray.formats`) loaded into the native
engine.  Handles pickle as recipes (path, file identity, options) and reopen
lazily where they are unpickled, so they travel to thread pools, spawned
processes and dask workers without special care.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _native
from ._memory import empty_output
from .batch import BatchIterator, as_locations
from .errors import ArgumentError, ClosedError, OpenError, WSIError
from .formats import read_slide_info
from .formats.base import Codec, LevelSpec, SlideInfo

__all__ = ["DEFAULT_FILL", "Level", "Slide", "open"]

#: Value of pixels outside the image, per sample, unless ``fill=`` says otherwise.
#: 0 matches tifffile's padding and OpenSlide's colour channels.
DEFAULT_FILL = 0

FileIdentity = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


@dataclass(frozen=True)
class Level:
    """Geometry and encoding of one pyramid level.

    Example:
        >>> slide.levels[0].tile_size
        (240, 240)
    """

    index: int
    width: int
    height: int
    downsample: float
    tile_width: int
    tile_height: int
    compression: str
    #: True when the native engine decodes the tiles; False when imagecodecs does.
    native_codec: bool

    @property
    def dimensions(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def tile_size(self) -> tuple[int, int]:
        return (self.tile_width, self.tile_height)


class _Reader:
    """One file's format tables and native reader, shared by all its handles."""

    def __init__(self, path: str, identity: FileIdentity) -> None:
        info = read_slide_info(path)
        if not info.levels:
            raise OpenError(f"{path}: no image levels found")
        self.path = path
        self.info: SlideInfo = info
        self.native = _native.Reader(path)
        if tuple(self.native.identity) != identity:
            raise OpenError(f"{path}: the file changed while it was being opened")
        self.identity = identity
        for spec in info.levels:
            _add_level(self.native, spec)
        level0 = info.levels[0]
        self.levels = tuple(
            Level(
                index=i,
                width=spec.width,
                height=spec.height,
                downsample=(level0.width / spec.width + level0.height / spec.height) / 2,
                tile_width=spec.tile_width,
                tile_height=spec.tile_height,
                compression=spec.compression_name,
                native_codec=spec.codec is not Codec.EXTERNAL,
            )
            for i, spec in enumerate(info.levels)
        )
        self.associated = _AssociatedImages(info.associated)
        self.channels = info.levels[0].samples
        self.dtype = info.levels[0].dtype


def _add_level(native: _native.Reader, spec: LevelSpec) -> None:
    native.add_level(
        width=spec.width,
        height=spec.height,
        tile_width=spec.tile_width,
        tile_height=spec.tile_height,
        samples_per_plane=spec.samples_per_plane,
        bytes_per_sample=spec.dtype.itemsize,
        codec=int(spec.codec),
        byteswap=spec.byteswap,
        predictor=spec.predictor,
        jpeg_tables=spec.jpeg_tables,
        jpeg_in=int(spec.jpeg_colorspace),
        jpeg_out=int(spec.jpeg_out_colorspace),
        offsets=np.ascontiguousarray(spec.offsets, np.uint64),
        bytecounts=np.ascontiguousarray(spec.bytecounts, np.uint64),
        external=spec.external_decoder,
        page_index=spec.page_index,
    )


class _AssociatedImages(Mapping[str, np.ndarray]):
    """Associated images (label, macro, thumbnail), decoded on first access."""

    def __init__(self, loaders: Mapping[str, Any]) -> None:
        self._loaders = dict(loaders)
        self._images: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> np.ndarray:
        with self._lock:
            if name not in self._images:
                loader = self._loaders[name]
                try:
                    image = np.asarray(loader())
                except WSIError:
                    raise
                except Exception as exc:
                    raise WSIError(f"associated image {name!r} cannot be read: {exc}") from exc
                image.flags.writeable = False
                self._images[name] = image
            return self._images[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def __repr__(self) -> str:
        return f"<associated images {sorted(self._loaders)}>"


_registry: weakref.WeakValueDictionary[tuple[str, FileIdentity], _Reader] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def _identity(path: str) -> FileIdentity:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise OpenError(f"{path}: {exc.strerror or exc}") from exc
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _shared_reader(path: str, expected: FileIdentity | None = None) -> _Reader:
    """The process's reader for ``path``, opened on first use."""
    identity = _identity(path)
    if expected is not None and identity != tuple(expected):
        raise OpenError(f"{path}: the file changed since this slide handle was created")
    key = (path, identity)
    with _registry_lock:
        reader = _registry.get(key)
        if reader is None:
            reader = _Reader(path, identity)
            _registry[key] = reader
        return reader


def _fork_reset() -> None:
    # A lock held by another thread at fork() time would never be released.
    global _registry_lock
    _registry_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_reset)


class Slide:
    """An open whole-slide image; use :func:`wsiarray.open` to make one.

    Coordinates follow OpenSlide and cuCIM: ``location`` is ``(x, y)`` in
    level-0 pixels, ``size`` is ``(width, height)`` in the chosen level's
    pixels, and arrays come back as ``(height, width, channels)``.

    Example:
        >>> with wsiarray.open("CMU-1-Small-Region.svs") as slide:
        ...     patch = slide.read_region((1000, 1000), (256, 256), level=0)
        >>> patch.shape
        (256, 256, 3)
    """

    def __init__(self, path: str | os.PathLike[str], *, fill: float | Sequence[float] | None = None) -> None:
        self._path = os.path.abspath(os.fspath(path))
        self._fill = fill
        reader = _shared_reader(self._path)
        self._reader: _Reader | None = reader
        self._identity: FileIdentity = reader.identity
        self._closed = False
        self._default_fill: bytes | None = None  # the fill pixel's bytes, made on first use

    @classmethod
    def _from_recipe(cls, path: str, identity: FileIdentity, fill: Any) -> Slide:
        # Opens nothing: the reader is found (or opened) on first use, so a
        # process that only passes the handle along never touches the file.
        slide = cls.__new__(cls)
        slide._path = path
        slide._fill = fill
        slide._reader = None
        slide._identity = tuple(identity)  # type: ignore[assignment]
        slide._closed = False
        slide._default_fill = None
        return slide

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Release this handle; the file closes once no handle in the process uses it."""
        self._reader = None
        self._closed = True

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # A recipe, not a handle: reopened (and shared) where it is unpickled.
        if self._closed:
            raise ClosedError(f"{self._path}: a closed slide cannot be pickled")
        return (Slide._from_recipe, (self._path, self._identity, self._fill))

    def __repr__(self) -> str:
        if self._closed:
            return f"<wsiarray.Slide {self._path!r} closed>"
        if self._reader is None:
            return f"<wsiarray.Slide {self._path!r} not opened yet>"
        return f"<wsiarray.Slide {self._path!r} {self.vendor} {self.level_count} levels>"

    @property
    def _open(self) -> _Reader:
        reader = self._reader
        if reader is None:
            if self._closed:
                raise ClosedError(f"{self._path}: slide is closed")
            reader = self._reader = _shared_reader(self._path, self._identity)
        return reader

    # -- description ---------------------------------------------------------------

    @property
    def path(self) -> str:
        """Absolute path of the file."""
        return self._path

    @property
    def identity(self) -> FileIdentity:
        """``(st_dev, st_ino, st_size, st_mtime_ns)`` of the file when it was opened."""
        return self._identity

    @property
    def vendor(self) -> str:
        """OpenSlide's vendor name: ``"aperio"``, ``"generic-tiff"`` or ``"ome-tiff"``."""
        return self._open.info.vendor

    @property
    def levels(self) -> tuple[Level, ...]:
        """Every pyramid level, largest first."""
        return self._open.levels

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self._open.levels)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of each level."""
        return tuple(level.dimensions for level in self._open.levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each level against level 0, ``(w0/w + h0/h) / 2`` as OpenSlide computes it."""
        return tuple(level.downsample for level in self._open.levels)

    @property
    def level_tile_sizes(self) -> tuple[tuple[int, int], ...]:
        """``(tile_width, tile_height)`` of each level (strips count as full-width tiles)."""
        return tuple(level.tile_size for level in self._open.levels)

    @property
    def dtype(self) -> np.dtype:
        """Sample type of every level, in native byte order."""
        return self._open.info.levels[0].dtype

    @property
    def channels(self) -> int:
        """Samples per pixel in the arrays this slide returns (alpha included)."""
        return self._open.info.levels[0].samples

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of level 0."""
        level0 = self._open.levels[0]
        return (level0.height, level0.width, self.channels)

    @property
    def dims(self) -> tuple[str, str, str]:
        """Names of the array axes: ``("y", "x", "c")``."""
        return ("y", "x", "c")

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Names of the channels (``R, G, B[, A]`` for colour slides)."""
        info = self._open.info
        if info.channel_names:
            return tuple(info.channel_names)
        return {1: ("Y",), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}.get(
            self.channels, tuple(f"C{i}" for i in range(self.channels))
        )

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Level-0 pixel size ``(x, y)`` in micrometres, or None when the file does not say."""
        return self._open.info.mpp

    @property
    def objective_power(self) -> float | None:
        """Scanner objective magnification, or None when the file does not say."""
        return self._open.info.objective_power

    @property
    def properties(self) -> Mapping[str, str]:
        """Metadata with OpenSlide's keys (``openslide.mpp-x``, ...) beside the vendor's own."""
        return self._open.info.properties

    @property
    def format_info(self) -> SlideInfo:
        """What the format layer found: levels' tile tables, properties, associated images.

        Example:
            >>> slide.format_info.vendor
            'aperio'
        """
        return self._open.info

    @property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        """Associated images by name (``thumbnail``, ``label``, ``macro``), decoded on first access."""
        return self._open.associated

    # -- pixels --------------------------------------------------------------------

    def read_region(
        self,
        location: Any = None,
        size: tuple[int, int] | None = None,
        level: int = 0,
        *,
        fill: float | Sequence[float] | None = None,
        num_workers: int = 0,
        batch_size: int = 1,
        drop_last: bool = False,
        prefetch_factor: int = 2,
        shuffle: bool = False,
        seed: int = 0,
    ) -> np.ndarray | BatchIterator:
        """Read ``size`` pixels of ``level`` at level-0 ``location``: one region, many, or the level.

        - One location ``(x, y)``: returns an ``(h, w, c)`` array.
        - Many locations (list, tuple, generator, ``(N, 2)`` array, or a flat
          ``[x0, y0, x1, y1, ...]``): returns a :class:`~wsiarray.batch.BatchIterator`
          over ``(batch_size, h, w, c)`` arrays, decoded ``prefetch_factor`` batches
          ahead; ``shuffle``/``seed``/``drop_last`` as in PyTorch's DataLoader.
        - No location and no size: the whole level.

        Pixels outside the image are ``fill`` (a scalar or one value per channel;
        default :data:`DEFAULT_FILL`). ``num_workers`` threads of the process's
        native pool decode each request (0 or 1: the calling thread). The GIL is
        released while tiles are read and decoded.

        Example:
            >>> slide.read_region((0, 0), (512, 512), level=1).shape
            (512, 512, 3)
            >>> for batch in slide.read_region([(0, 0), (224, 0)], (224, 224), batch_size=2):
            ...     batch.shape
            (2, 224, 224, 3)
        """
        reader = self._open
        if type(level) is int and 0 <= level < len(reader.levels):
            level_index = level
        else:
            level_index = self._level_index(level)
        if type(location) is tuple and len(location) == 2 and type(location[0]) is int \
                and type(location[1]) is int:
            # The common case, kept cheap: one (x, y) of Python ints.
            x, y = location
            if level_index:
                downsample = reader.levels[level_index].downsample
                x, y = math.floor(x / downsample), math.floor(y / downsample)
            return self.read_level_region(level_index, (x, y), size, fill=fill, num_workers=num_workers)
        if location is None and size is None:
            return self.read_level_region(level_index, (0, 0), self.level_dimensions[level_index],
                                          fill=fill, num_workers=num_workers)
        if location is None or size is None:
            raise ArgumentError("read_region needs both location and size, or neither (whole level)")
        many = as_locations(location)
        if many is None:
            x, y = _pair(location, "location")
            lx, ly = self._to_level(np.array([[x, y]], np.int64), level_index)[0]
            return self.read_level_region(level_index, (int(lx), int(ly)), size, fill=fill,
                                          num_workers=num_workers)
        width, height = _pair(size, "size")
        if width < 0 or height < 0:
            raise ArgumentError(f"size must not be negative, got {size!r}")
        count = len(many)
        return BatchIterator(
            [self], np.zeros(count, np.int64), np.full(count, level_index, np.int64),
            self._to_level(many, level_index), (width, height),
            fill=self._fill_pixel(fill), channels=self.channels, dtype=self.dtype,
            num_workers=num_workers, batch_size=batch_size, drop_last=drop_last,
            prefetch_factor=prefetch_factor, shuffle=shuffle, seed=seed,
        )

    def _to_level(self, locations: np.ndarray, level_index: int) -> np.ndarray:
        """Level-0 ``(N, 2)`` locations in ``level_index``'s pixels (OpenSlide: floor(x / downsample))."""
        downsample = self._open.levels[level_index].downsample
        if level_index == 0:
            return locations.astype(np.int64)
        return np.floor(locations / downsample).astype(np.int64)

    def read_level_region(
        self,
        level: int,
        location: tuple[int, int],
        size: tuple[int, int],
        *,
        fill: float | Sequence[float] | None = None,
        num_workers: int = 0,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Like :meth:`read_region`, but ``location`` is in the level's own pixels.

        This is what tile-aligned consumers (dask chunks, xarray indexing) use:
        no rounding through level-0 coordinates. ``out``, a C-contiguous writable
        ``(h, w, c)`` array of the slide's dtype, receives the pixels instead of a
        new array (reusing one saves the page faults of fresh memory).

        Example:
            >>> slide.read_level_region(1, (256, 0), (256, 256)).shape
            (256, 256, 3)
        """
        reader = self._open
        if not (type(level) is int and 0 <= level < len(reader.levels)):
            level = self._level_index(level)
        x, y = _pair(location, "location")
        width, height = _pair(size, "size")
        if width < 0 or height < 0:
            raise ArgumentError(f"size must not be negative, got {size!r}")
        if num_workers < 0:
            raise ArgumentError(f"num_workers must be >= 0, got {num_workers}")
        shape = (height, width, reader.channels)
        if out is None:
            out = empty_output(shape, reader.dtype)
        elif not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == reader.dtype
                  and out.flags.c_contiguous and out.flags.writeable):
            raise ArgumentError(f"out must be a writable C-contiguous {shape} {reader.dtype} array")
        if out.size:
            reader.native.read_region(
                level, x, y, out.view(np.uint8).reshape(height, width, -1),
                self._fill_pixel(fill), max(1, num_workers),
            )
        return out

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The largest level whose downsample is at most ``downsample`` (OpenSlide's rule).

        Example:
            >>> slide.get_best_level_for_downsample(4.5)
            1
        """
        downsamples = self.level_downsamples
        best = 0
        for i, level_downsample in enumerate(downsamples):
            if level_downsample <= downsample + 1e-9:
                best = i
        return best

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        """The whole slide scaled to fit in ``max_size`` ``(width, height)``, keeping its aspect.

        Reads the best level for the scale and box-filters it down.

        Example:
            >>> slide.get_thumbnail((256, 256)).shape[:2]
            (256, 192)
        """
        max_w, max_h = _pair(max_size, "max_size")
        if max_w <= 0 or max_h <= 0:
            raise ArgumentError(f"max_size must be positive, got {max_size!r}")
        w0, h0 = self.level_dimensions[0]
        scale = max(w0 / max_w, h0 / max_h, 1.0)
        target = (max(1, round(w0 / scale)), max(1, round(h0 / scale)))
        level = self.get_best_level_for_downsample(scale)
        image = self.read_level_region(level, (0, 0), self.level_dimensions[level],
                                       num_workers=os.cpu_count() or 1)
        return _box_resize(image, target)

    # -- arrays (dask, xarray, OME-Zarr); imported on use so `import wsiarray` stays light --

    def to_dask(self, level: int = 0, chunks: Any = None, device: str = "cpu") -> Any:
        """Level ``level`` as a lazy, tile-aligned ``dask.array.Array`` of shape ``(h, w, c)``.

        See :func:`wsiarray.dask.to_dask` for ``chunks`` (default about 2048 px).

        Example:
            >>> slide.to_dask(0).mean(axis=(0, 1)).compute()  # doctest: +SKIP
        """
        from .dask import to_dask

        return to_dask(self, level=level, chunks=chunks, device=device)

    def to_dask_pyramid(self, chunks: Any = None, device: str = "cpu") -> list[Any]:
        """Every level as a dask array, largest first (napari's ``multiscale=True`` input).

        Example:
            >>> viewer.add_image(slide.to_dask_pyramid(), multiscale=True)  # doctest: +SKIP
        """
        from .dask import to_dask_pyramid

        return to_dask_pyramid(self, chunks=chunks, device=device)

    def to_xarray(self, level: int | None = None, device: str = "cpu", chunks: Any = None) -> Any:
        """One level as an ``xarray.Dataset`` (or, with ``level=None``, every level as a ``DataTree``).

        Example:
            >>> slide.to_xarray(0)["image"].sel(x=slice(0, 100)).shape  # doctest: +SKIP
        """
        from .xarray_backend import to_xarray

        return to_xarray(self, level=level, device=device, chunks=chunks)

    def to_zarr(self, store: Any, levels: Sequence[int] | None = None, **options: Any) -> Any:
        """Write the slide as an OME-Zarr pyramid (NGFF 0.5, Zarr v3); see ``zarr_export.to_zarr``.

        Example:
            >>> slide.to_zarr("slide.ome.zarr")  # doctest: +SKIP
        """
        from .zarr_export import to_zarr

        return to_zarr(self, store, levels=levels, **options)

    # -- helpers -------------------------------------------------------------------

    def _level_index(self, level: int) -> int:
        count = self.level_count
        # As OpenSlide: no negative (Python-style) levels, and a bool is not a level.
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < count:
            raise ArgumentError(f"level must be an integer in [0, {count}), got {level!r}")
        return int(level)

    def _fill_pixel(self, fill: float | Sequence[float] | None) -> bytes:
        if fill is None:
            if self._default_fill is None:
                self._default_fill = self._fill_pixel(self._fill if self._fill is not None else DEFAULT_FILL)
            return self._default_fill
        problem = f"fill must be a number or {self.channels} numbers that fit {self.dtype}, got {fill!r}"
        try:
            values = np.broadcast_to(np.asarray(fill, dtype=np.float64), (self.channels,))
        except (TypeError, ValueError) as exc:
            raise ArgumentError(problem) from exc
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            fits = np.isfinite(values) & (values >= info.min) & (values <= info.max)
            if not fits.all():
                raise ArgumentError(problem)
        pixel = values.astype(self.dtype)
        return pixel.tobytes()


def _pair(value: Any, name: str) -> tuple[int, int]:
    try:
        a, b = value
        ia, ib = int(a), int(b)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"{name} must be a pair of integers, got {value!r}") from exc
    if ia != a or ib != b:
        raise ArgumentError(f"{name} must be a pair of integers, got {value!r}")
    return ia, ib


def _box_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average ``image`` down to ``size`` ``(width, height)``."""
    width, height = size
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    rows = np.linspace(0, h, height + 1).astype(np.intp)[:-1]
    cols = np.linspace(0, w, width + 1).astype(np.intp)[:-1]
    summed = np.add.reduceat(np.add.reduceat(image.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.diff(np.append(rows, h))[:, None, None] * np.diff(np.append(cols, w))[None, :, None]
    out = summed / counts
    if np.issubdtype(image.dtype, np.integer):
        out = np.rint(out)
    return out.astype(image.dtype)


def open(path: str | os.PathLike[str], *, fill: float | Sequence[float] | None = None) -> Slide:
    """Open a whole-slide image (Aperio SVS, OME-TIFF, generic tiled TIFF).

    ``fill`` sets the value of pixels outside the image for this handle.

    Example:
        >>> import wsiarray
        >>> slide = wsiarray.open("CMU-1-Small-Region.svs")
        >>> slide.level_dimensions
        ((2220, 2967),)
    """
    return Slide(path, fill=fill)
