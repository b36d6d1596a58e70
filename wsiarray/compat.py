"""`CuImage`: cuCIM's ``cucim.CuImage`` Python API on top of wsiarray.

Code written for cuCIM's CPU path runs by changing one import::

    # from cucim import CuImage
    from wsiarray import CuImage

    img = CuImage("slide.svs")
    patch = img.read_region((1000, 2000), (224, 224), level=0)     # a CuImage
    array = np.asarray(patch)                                       # (224, 224, 3) uint8
    for batch in img.read_region(locations, (224, 224), batch_size=32, num_workers=2):
        x = np.asarray(batch)                                       # (32, 224, 224, 3)

What is mirrored (checked against cuCIM 26.10 by ``tests/test_compat.py``):

- ``CuImage(path)``; ``read_region(location, size, level, num_workers, batch_size,
  drop_last, prefetch_factor, shuffle, seed, device, buf, shm_name)`` with cuCIM's
  defaults: no ``location`` reads from ``(0, 0)``, no ``size`` reads the rest of the
  level, neither reads the whole level (split across ``num_workers``); one location
  (``(x, y)``, ``[x, y]`` or ``[(x, y)]``) returns a ``CuImage``, several return a
  :class:`CuImageIterator` with ``len()`` that yields ``YXC`` images for
  ``batch_size=1`` and ``NYXC`` images of up to ``batch_size`` patches otherwise;
  ``size`` must be positive and ``level`` in range (``ValueError`` otherwise);
- results: ``__array_interface__`` (so ``np.asarray`` is zero-copy), ``shape`` (a list),
  ``dims`` (``"YXC"``/``"NYXC"``), ``ndim``, ``dtype`` (a :class:`DLDataType`),
  ``typestr``, ``size(dim_order)``, ``spacing(dim_order)``, ``spacing_units(dim_order)``,
  ``channel_names``, ``origin``, ``direction``, ``coord_sys``, ``resolutions``,
  ``metadata``, ``raw_metadata``, ``path``, ``is_loaded``, ``device``;
- the image: ``resolutions`` (``level_count``, ``level_dimensions``,
  ``level_downsamples``, ``level_tile_sizes``), ``metadata`` (a dict with a ``"cucim"``
  section holding the same keys as cuCIM, a ``"tiff"`` section, and ``"aperio"`` for
  Aperio slides: the ImageDescription's ``Key = value`` pairs plus ``Header``),
  ``raw_metadata`` (the first ImageDescription), ``associated_images`` (a set),
  ``associated_image(name)`` (a ``CuImage``), ``close()`` and the context manager;
- the fill value outside the image: 255 for Aperio slides, 0 for the others (cuCIM's
  background values);
- ``CuImage.cache(type, memory_capacity=MiB, capacity=..., record_stat=...)`` returns an
  :class:`ImageCache` with cuCIM's properties (``type`` is a :class:`CacheType`,
  ``memory_capacity`` in bytes, ``config`` with cuCIM's keys, ``record()``,
  ``reserve()``), backed by wsiarray's tile cache (:func:`wsiarray.cache`);
  :func:`preferred_memory_capacity` is cuCIM's formula.

Deliberate differences from cuCIM:

- **Per-level spacing is multiplied by the level's downsample** (a level-2 pixel of a
  4x-downsampled level is 4x larger); cuCIM divides. Batch results report spacing
  ``[1.0, y, x, 1.0]`` for ``NYXC`` (cuCIM shifts the values by one axis).
- **Spacing uses the slide's pixel size when it is known**, including Aperio's ``MPP``
  (units ``micrometer``); cuCIM only reads the TIFF resolution tags and reports
  ``1.0`` with unit ``""`` for Aperio slides. Spacings and downsamples are float64, not
  float32, so they differ from cuCIM's in the 7th significant digit.
- **Kept batches stay valid.** Every batch is a fresh array; cuCIM reuses batch buffers,
  so a batch kept after the next one is read can change under you.
- **Shuffle order is documented and reproducible**: ``shuffle=True`` reads locations in
  the order ``numpy.random.default_rng(seed).permutation(len(locations))``; cuCIM uses
  its own generator, so the same seed gives a different (also fixed) order.
- **More inputs are accepted**: ``num_workers=0`` with several locations reads them on
  the calling thread (cuCIM raises ``RuntimeError``); NumPy integer arrays of
  locations, ``(N, 2)`` or flat, and generators work; ``size`` may exceed the level-0
  image (the outside is filled; cuCIM raises).
- **Level coordinates round down** (``floor(x / downsample)``, OpenSlide's rule) also for
  negative locations; cuCIM truncates toward zero, so ``x = -3`` at a 4x level is column
  -1 here and 0 in cuCIM.
- **Samples are returned as stored**: a grayscale slide gives one channel (cuCIM expands
  some files to RGBA); associated images keep their channel count.
- **Picklable**: an image pickles as its path (reopened where it is unpickled, as
  :class:`wsiarray.Slide` does), a result as its pixels and metadata; cuCIM's objects do
  not pickle.
- **Errors** are :class:`wsiarray.WSIError` subclasses: opening fails with
  :class:`CuImageOpenError` (both ``OSError`` and ``ValueError``; cuCIM raises
  ``ValueError``), invalid arguments with :class:`wsiarray.ArgumentError` (a
  ``ValueError``, as in cuCIM), reading a closed image with
  :class:`CuImageClosedError` (a ``RuntimeError`` as in cuCIM); an unknown
  ``associated_image(name)`` raises ``KeyError``-compatible :class:`wsiarray.ArgumentError`
  instead of returning an empty image.
- ``ImageCache.memory_capacity`` and ``capacity`` report the usable budget, which
  wsiarray's sharded cache rounds down (to 16 KiB pages, to a multiple of its shards),
  so they can be a little below the request that cuCIM reports; ``config`` holds the
  request.
- ``device`` must be ``"cpu"``, ``buf`` ``None`` and ``shm_name`` empty (cuCIM documents
  them as not supported yet); other keyword arguments raise ``TypeError``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from .batch import BatchIterator, as_locations
from .cache import DEFAULT_MEMORY_CAPACITY, TileCache, _default_capacity
from .cache import cache as _tile_cache
from .cache import preferred_memory_capacity as _preferred_memory_capacity
from .errors import ArgumentError, ClosedError, OpenError, WSIError
from .slide import Slide

__all__ = [
    "CacheType",
    "CuImage",
    "CuImageClosedError",
    "CuImageIterator",
    "CuImageOpenError",
    "DLDataType",
    "ImageCache",
    "preferred_memory_capacity",
]

#: cuCIM's background value outside the image, per vendor (0 for the others).
_BACKGROUND = {"aperio": 255, "philips": 255}
#: cuCIM's constant geometry fields.
_ORIGIN = (0.0, 0.0, 0.0)
_DIRECTION = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
_COORD_SYS = "LPS"
#: cuCIM's fixed cache settings, reported in ``ImageCache.config``.
_MUTEX_POOL_CAPACITY = 100003
_LIST_PADDING = 10000
_EXTRA_SHARED_MEMORY_SIZE = 100


class CuImageOpenError(OpenError, ValueError):
    """The file cannot be opened; a ``ValueError`` as in cuCIM, and a :class:`wsiarray.OpenError`."""


class CuImageClosedError(ClosedError, RuntimeError):
    """Pixels asked of a closed image: a ``RuntimeError`` as in cuCIM, and a :class:`wsiarray.ClosedError`."""


class _UnknownAssociatedImage(ArgumentError, KeyError):
    """``associated_image(name)`` for a name the slide does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


# -- small value types ----------------------------------------------------------------


class DLDataType:
    """cuCIM's ``DLDataType``: a DLPack type as ``code`` (0 int, 1 uint, 2 float), ``bits``, ``lanes``.

    Example:
        >>> DLDataType.from_numpy(np.dtype("uint8"))
        <wsiarray.compat.DLDataType code:DLUInt(1) bits:8 lanes:1>
    """

    _NAMES: ClassVar[dict[int, str]] = {0: "DLInt", 1: "DLUInt", 2: "DLFloat", 4: "DLBfloat"}
    _KINDS: ClassVar[dict[str, int]] = {"i": 0, "u": 1, "f": 2, "b": 1}

    __slots__ = ("bits", "code", "lanes")

    def __init__(self, code: int, bits: int, lanes: int = 1) -> None:
        self.code = int(code)
        self.bits = int(bits)
        self.lanes = int(lanes)

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> DLDataType:
        """The DLPack type of a NumPy dtype.

        Example:
            >>> DLDataType.from_numpy(np.dtype("<u2")).bits
            16
        """
        dtype = np.dtype(dtype)
        if dtype.kind not in cls._KINDS:
            raise ArgumentError(f"no DLPack type for {dtype}")
        return cls(cls._KINDS[dtype.kind], dtype.itemsize * 8, 1)

    def as_dict(self) -> dict[str, int]:
        """``{"bits", "code", "lanes"}``, as in cuCIM's metadata."""
        return {"bits": self.bits, "code": self.code, "lanes": self.lanes}

    def __eq__(self, other: object) -> bool:
        if not hasattr(other, "code") or not hasattr(other, "bits"):
            return NotImplemented
        return (self.code, self.bits, self.lanes) == (
            int(other.code), int(other.bits), int(getattr(other, "lanes", 1))  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((self.code, self.bits, self.lanes))

    def __repr__(self) -> str:
        name = self._NAMES.get(self.code, "DLUnknown")
        return f"<wsiarray.compat.DLDataType code:{name}({self.code}) bits:{self.bits} lanes:{self.lanes}>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (DLDataType, (self.code, self.bits, self.lanes))


class CacheType(enum.Enum):
    """cuCIM's cache types; :attr:`ImageCache.type` returns one.

    Example:
        >>> CuImage.cache().type
        <CacheType.NoCache: 0>
    """

    NoCache = 0
    PerProcess = 1
    SharedMemory = 2


_TYPE_NAMES = {CacheType.NoCache: "nocache", CacheType.PerProcess: "per_process",
               CacheType.SharedMemory: "shared_memory"}
_TYPE_ALIASES = {"nocache": "nocache", "no_cache": "nocache", "per_process": "per_process",
                 "shared_memory": "shared_memory"}


class ImageCache:
    """cuCIM's ``ImageCache`` view of the process's tile cache (see :func:`wsiarray.cache`).

    Always reflects the cache configured now. ``memory_capacity``, ``memory_size`` and
    ``free_memory`` are bytes; ``config["memory_capacity"]`` is MiB, as in cuCIM.

    Example:
        >>> c = CuImage.cache("per_process", memory_capacity=256, record_stat=True)
        >>> c.type, c.memory_capacity
        (<CacheType.PerProcess: 1>, 268435456)
    """

    @staticmethod
    def _current() -> TileCache:
        return _tile_cache()

    @property
    def type(self) -> CacheType:
        """The cache type, a :class:`CacheType`."""
        name = self._current().type
        return next(t for t, n in _TYPE_NAMES.items() if n == name)

    @property
    def config(self) -> dict[str, Any]:
        """Settings under cuCIM's keys (``type``, ``memory_capacity`` in MiB, ``capacity``, ...)."""
        cfg = self._current().config
        memory = int(cfg["memory_capacity"]) or DEFAULT_MEMORY_CAPACITY
        capacity = int(cfg["capacity"]) or _default_capacity(memory)
        out: dict[str, Any] = {
            "type": cfg["type"],
            "memory_capacity": memory,
            "capacity": capacity,
            "mutex_pool_capacity": _MUTEX_POOL_CAPACITY,
            "list_padding": _LIST_PADDING,
            "extra_shared_memory_size": _EXTRA_SHARED_MEMORY_SIZE,
            "record_stat": bool(cfg["record_stat"]),
        }
        if cfg.get("name"):
            out["name"] = cfg["name"]
        return out

    @property
    def size(self) -> int:
        """Tiles held."""
        return self._current().size

    @property
    def memory_size(self) -> int:
        """Bytes holding tiles."""
        return self._current().memory_size

    @property
    def capacity(self) -> int:
        """Item budget (0 without a cache)."""
        return self._current().capacity

    @property
    def memory_capacity(self) -> int:
        """Byte budget (0 without a cache)."""
        return self._current().memory_capacity

    @property
    def free_memory(self) -> int:
        """Bytes of the budget not holding tiles."""
        return self._current().free_memory

    @property
    def hit_count(self) -> int:
        """Tiles served from the cache while recording."""
        return self._current().hit_count

    @property
    def miss_count(self) -> int:
        """Tiles decoded because the cache lacked them, while recording."""
        return self._current().miss_count

    def record(self, value: bool | None = None) -> bool:
        """With no argument, whether statistics are recorded; else turn recording on or off."""
        return self._current().record(value)

    def reserve(self, memory_capacity: int, **kwargs: Any) -> None:
        """New budgets: ``memory_capacity`` MiB, optionally ``capacity`` items; the cache restarts empty."""
        self._current().reserve(memory_capacity, kwargs.get("capacity"))

    def __repr__(self) -> str:
        return (f"<wsiarray.compat.ImageCache {self.type.name} "
                f"{self.memory_size}/{self.memory_capacity} bytes>")


def _configure_cache(type: Any = None, **kwargs: Any) -> ImageCache:
    """``CuImage.cache``: configure (or, without arguments, return) the tile cache."""
    known = {"memory_capacity", "capacity", "mutex_pool_capacity", "list_padding",
             "extra_shared_memory_size", "record_stat", "name"}
    unknown = set(kwargs) - known
    if unknown:
        raise TypeError(f"cache() got unexpected keyword arguments {sorted(unknown)}")
    if type is None and not kwargs:
        return ImageCache()
    if isinstance(type, CacheType):
        name = _TYPE_NAMES[type]
    elif type is None:
        name = _tile_cache().type
        if name == "nocache":
            name = "per_process"
    else:
        name = _TYPE_ALIASES.get(str(type).lower())
        if name is None:
            raise ArgumentError(f"unknown cache type {type!r}; expected one of {sorted(_TYPE_ALIASES)}")
    _tile_cache(
        name,
        memory_capacity=kwargs.get("memory_capacity"),
        capacity=kwargs.get("capacity"),
        record_stat=bool(kwargs.get("record_stat", False)),
        name=kwargs.get("name"),
    )
    return ImageCache()


def preferred_memory_capacity(
    img: CuImage | None = None,
    image_size: Sequence[int] | None = None,
    tile_size: Sequence[int] | None = None,
    patch_size: Sequence[int] | None = None,
    bytes_per_pixel: int = 3,
) -> int:
    """cuCIM's ``cucim.clara.cache.preferred_memory_capacity``: MiB for a row-by-row patch scan.

    Sizes are ``(width, height)``; ``img`` supplies level 0's image and tile size.

    Example:
        >>> preferred_memory_capacity(image_size=(1048576, 1048576), tile_size=(256, 256),
        ...                           patch_size=(256, 256))
        1536
    """
    if img is not None:
        dims = img.resolutions["level_dimensions"][0]
        tiles = img.resolutions["level_tile_sizes"][0]
        image_size = image_size or dims
        tile_size = tile_size or tiles
    return _preferred_memory_capacity(
        None,
        image_size=_pair_or_none(image_size),
        tile_size=_pair_or_none(tile_size),
        patch_size=_pair_or_none(patch_size),
        bytes_per_pixel=bytes_per_pixel,
    )


def _pair_or_none(value: Sequence[int] | None) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


# -- the image ------------------------------------------------------------------------


class _Loaded:
    """Pixels and description of a read result or an associated image."""

    __slots__ = ("array", "channel_names", "dims", "path", "raw", "spacing", "units")

    def __init__(self, array: np.ndarray, dims: str, spacing: Sequence[float], units: Sequence[str],
                 channel_names: Sequence[str], path: str, raw: str = "") -> None:
        self.array = array
        self.dims = dims
        self.spacing = [float(v) for v in spacing]
        self.units = [str(u) for u in units]
        self.channel_names = [str(c) for c in channel_names]
        self.path = path
        self.raw = raw


class _FileInfo:
    """What a file-backed :class:`CuImage` reports, computed once at open (kept after close)."""

    def __init__(self, slide: Slide, path: str) -> None:
        self.path = path
        self.vendor = slide.vendor
        self.fill = _BACKGROUND.get(slide.vendor, 0)
        self.dtype = np.dtype(slide.dtype)
        self.channel_names = list(slide.channel_names)
        self.shape = [int(v) for v in slide.shape]
        self.level_dimensions = tuple((int(w), int(h)) for w, h in slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in slide.level_downsamples)
        self.level_tile_sizes = tuple((int(w), int(h)) for w, h in slide.level_tile_sizes)
        mpp = slide.mpp
        if mpp is not None:
            self.pixel_size = (float(mpp[0]), float(mpp[1]))
            self.pixel_unit = "micrometer"
        else:
            self.pixel_size = (1.0, 1.0)
            self.pixel_unit = ""
        props = dict(slide.properties)
        self.properties = props
        self.raw = props.get("tiff.ImageDescription", "")
        self.associated = sorted(slide.associated_images)


def _aperio_section(description: str) -> dict[str, str]:
    """cuCIM's ``"aperio"`` metadata: ``Header`` and ``Key = value`` pairs (first of a repeated key)."""
    header, *items = description.split("|")
    section = {"Header": header}
    for item in items:
        parts = item.split(" = ")
        if len(parts) == 2:
            section.setdefault(parts[0].strip(" \r\n\t"), parts[1].strip(" \r\n\t"))
    return section


def _tiff_section(props: dict[str, str]) -> dict[str, Any]:
    """cuCIM's ``"tiff"`` metadata from the TIFF tags of the first page."""
    has_resolution = "tiff.XResolution" in props
    return {
        "model": props.get("tiff.Model", ""),
        "resolution_unit": props.get("tiff.ResolutionUnit", "") if has_resolution else "",
        "software": props.get("tiff.Software", ""),
        "x_resolution": _float(props.get("tiff.XResolution"), 1.0),
        "y_resolution": _float(props.get("tiff.YResolution"), 1.0),
    }


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


class CuImage:
    """A whole-slide image, or pixels read from one, with cuCIM's ``CuImage`` API.

    ``CuImage(path)`` opens a slide (any format :func:`wsiarray.open` reads);
    :meth:`read_region` returns ``CuImage`` objects holding pixels, which
    ``np.asarray`` views without copying (``__array_interface__``). See the module
    docstring for what differs from cuCIM on purpose.

    Example:
        >>> from wsiarray import CuImage
        >>> img = CuImage("CMU-1-Small-Region.svs")
        >>> img.resolutions["level_dimensions"]
        ((2220, 2967),)
        >>> np.asarray(img.read_region((0, 0), (256, 128))).shape
        (128, 256, 3)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._loaded: _Loaded | None = None
        try:
            slide = Slide(self._path)
        except OpenError as exc:
            raise CuImageOpenError(*exc.args) from exc
        if slide.vendor in _BACKGROUND:
            slide = Slide._from_recipe(slide.path, slide.identity, _BACKGROUND[slide.vendor])
        self._slide: Slide | None = slide
        self._info: _FileInfo | None = _FileInfo(slide, self._path)
        self._closed = False

    @classmethod
    def _from_array(cls, loaded: _Loaded) -> CuImage:
        self = cls.__new__(cls)
        self._path = loaded.path
        self._loaded = loaded
        self._slide = None
        self._info = None
        self._closed = False
        return self

    # -- cache ---------------------------------------------------------------------------

    @staticmethod
    def cache(type: Any = None, **kwargs: Any) -> ImageCache:
        """Configure the tile cache, or with no arguments return it (cuCIM's ``CuImage.cache``).

        ``type`` is ``"nocache"``, ``"per_process"``, ``"shared_memory"`` or a
        :class:`CacheType`; keywords ``memory_capacity`` (MiB), ``capacity`` (tiles),
        ``record_stat`` (default False, as cuCIM) and ``name`` (shared memory); cuCIM's
        ``mutex_pool_capacity``, ``list_padding`` and ``extra_shared_memory_size`` are
        accepted and ignored.

        Example:
            >>> c = CuImage.cache("per_process", memory_capacity=1024, record_stat=True)
            >>> c.hit_count, c.miss_count
            (0, 0)
        """
        return _configure_cache(type, **kwargs)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Release the file; the description stays readable, reading pixels raises."""
        if self._slide is not None:
            self._slide.close()
            self._closed = True

    def __enter__(self) -> CuImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._loaded is not None:
            return (CuImage._from_array, (self._loaded_state(),))
        return (CuImage, (self._path,))

    def _loaded_state(self) -> _Loaded:
        assert self._loaded is not None
        return self._loaded

    def __repr__(self) -> str:
        return f"<wsiarray.CuImage path:{self._path}>"

    # -- description ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The path given to the constructor (results keep their slide's path)."""
        return self._path

    @property
    def is_loaded(self) -> bool:
        """Always True (cuCIM reports True for opened files too)."""
        return True

    @property
    def device(self) -> str:
        """``"cpu"``."""
        return "cpu"

    @property
    def dims(self) -> str:
        """Axis names: ``"YXC"``, or ``"NYXC"`` for a batch."""
        return self._loaded.dims if self._loaded is not None else "YXC"

    @property
    def shape(self) -> list[int]:
        """Sizes in :attr:`dims` order, as a list."""
        if self._loaded is not None:
            return [int(v) for v in self._loaded.array.shape]
        assert self._info is not None
        return list(self._info.shape)

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.dims)

    @property
    def _dtype(self) -> np.dtype:
        if self._loaded is not None:
            return self._loaded.array.dtype
        assert self._info is not None
        return self._info.dtype

    @property
    def dtype(self) -> DLDataType:
        """The sample type as a :class:`DLDataType` (``np.dtype(img.typestr)`` gives NumPy's)."""
        return DLDataType.from_numpy(self._dtype)

    @property
    def typestr(self) -> str:
        """NumPy's array-interface type string, e.g. ``"|u1"``."""
        return self._dtype.str

    @property
    def channel_names(self) -> list[str]:
        """Channel names (``["R", "G", "B"]`` for RGB)."""
        if self._loaded is not None:
            return list(self._loaded.channel_names)
        assert self._info is not None
        return list(self._info.channel_names)

    @property
    def origin(self) -> list[float]:
        """``[0.0, 0.0, 0.0]``, as cuCIM."""
        return list(_ORIGIN)

    @property
    def direction(self) -> list[list[float]]:
        """The identity matrix, as cuCIM."""
        return [list(row) for row in _DIRECTION]

    @property
    def coord_sys(self) -> str:
        """``"LPS"``, as cuCIM."""
        return _COORD_SYS

    def _spacing_by_axis(self) -> dict[str, tuple[float, str]]:
        if self._loaded is not None:
            return {d: (s, u) for d, s, u in zip(self._loaded.dims, self._loaded.spacing,
                                                 self._loaded.units, strict=True)}
        assert self._info is not None
        (sx, sy), unit = self._info.pixel_size, self._info.pixel_unit
        return {"Y": (sy, unit), "X": (sx, unit), "C": (1.0, "color")}

    def size(self, dim_order: str = "") -> list[int]:
        """Sizes of the axes named in ``dim_order`` (all axes when empty); absent axes are skipped.

        Example:
            >>> img.size("XY")  # width, height of level 0
            [2220, 2967]
        """
        sizes = dict(zip(self.dims, self.shape, strict=True))
        order = dim_order or self.dims
        return [sizes[d] for d in order if d in sizes]

    def spacing(self, dim_order: str = "") -> list[float]:
        """Physical pixel size per axis in ``dim_order`` (all axes when empty); 1.0 for absent axes.

        Example:
            >>> img.spacing("XY")
            [0.499, 0.499]
        """
        by_axis = self._spacing_by_axis()
        order = dim_order or self.dims
        return [by_axis[d][0] if d in by_axis else 1.0 for d in order]

    def spacing_units(self, dim_order: str = "") -> list[str]:
        """Units of :meth:`spacing` (``"micrometer"``, ``"color"``, ``""`` when unknown or absent).

        Example:
            >>> img.spacing_units()
            ['micrometer', 'micrometer', 'color']
        """
        by_axis = self._spacing_by_axis()
        order = dim_order or self.dims
        return [by_axis[d][1] if d in by_axis else "" for d in order]

    @property
    def resolutions(self) -> dict[str, Any]:
        """``level_count``, ``level_dimensions`` (w, h), ``level_downsamples``, ``level_tile_sizes`` (w, h).

        A read result has one level: its own size.

        Example:
            >>> img.resolutions["level_count"]
            1
        """
        if self._loaded is not None:
            w, h = self.size("XY")
            return {"level_count": 1, "level_dimensions": ((w, h),), "level_downsamples": (1.0,),
                    "level_tile_sizes": ((w, h),)}
        assert self._info is not None
        info = self._info
        return {
            "level_count": len(info.level_dimensions),
            "level_dimensions": info.level_dimensions,
            "level_downsamples": info.level_downsamples,
            "level_tile_sizes": info.level_tile_sizes,
        }

    @property
    def metadata(self) -> dict[str, Any]:
        """A dict: ``"cucim"`` (cuCIM's description keys), plus ``"tiff"`` and the vendor's section for files.

        Example:
            >>> sorted(img.metadata["cucim"])[:3]
            ['associated_images', 'channel_names', 'coord_sys']
        """
        res = self.resolutions
        cucim = {
            "associated_images": sorted(self.associated_images),
            "channel_names": self.channel_names,
            "coord_sys": self.coord_sys,
            "dims": self.dims,
            "direction": self.direction,
            "dtype": self.dtype.as_dict(),
            "ndim": self.ndim,
            "origin": self.origin,
            "path": self.path,
            "resolutions": {
                "level_count": res["level_count"],
                "level_dimensions": [list(d) for d in res["level_dimensions"]],
                "level_downsamples": list(res["level_downsamples"]),
                "level_tile_sizes": [list(t) for t in res["level_tile_sizes"]],
            },
            "shape": self.shape,
            "spacing": self.spacing(),
            "spacing_units": self.spacing_units(),
            "typestr": self.typestr,
        }
        out: dict[str, Any] = {"cucim": cucim}
        if self._info is not None:
            out["tiff"] = _tiff_section(self._info.properties)
            if self._info.vendor == "aperio" and self._info.raw:
                out["aperio"] = _aperio_section(self._info.raw)
        return out

    @property
    def raw_metadata(self) -> str:
        """The ImageDescription of the image's TIFF page (``""`` for read results)."""
        if self._loaded is not None:
            return self._loaded.raw
        assert self._info is not None
        return self._info.raw

    @property
    def associated_images(self) -> set[str]:
        """Names of the associated images (``label``, ``macro``, ``thumbnail``)."""
        if self._info is None:
            return set()
        return set(self._info.associated)

    def associated_image(self, name: str = "", device: Any = "cpu") -> CuImage:
        """The associated image ``name`` as a ``YXC`` ``CuImage``.

        Example:
            >>> np.asarray(img.associated_image("label")).shape
            (463, 387, 3)
        """
        _check_device(device)
        if self._info is None or name not in self._info.associated:
            raise _UnknownAssociatedImage(f"{self._path}: no associated image {name!r}")
        slide = self._open_slide()
        array = np.array(slide.associated_images[name], copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        channels = array.shape[2]
        names = {1: ["Y"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "A"]}.get(
            channels, [f"C{i}" for i in range(channels)])
        return CuImage._from_array(_Loaded(
            array, "YXC", (1.0, 1.0, 1.0), ("micrometer", "micrometer", "color"), names,
            self._path, _associated_description(slide, name),
        ))

    # -- pixels --------------------------------------------------------------------------

    @property
    def __array_interface__(self) -> dict[str, Any]:
        """NumPy's array interface of a read result (file-backed images have none, as in cuCIM)."""
        if self._loaded is None:
            raise AttributeError("'CuImage' object read from a file has no '__array_interface__'; "
                                 "call read_region() first")
        return self._loaded.array.__array_interface__

    def _open_slide(self) -> Slide:
        if self._slide is None:
            raise ArgumentError("this CuImage holds pixels, not a file")
        if self._closed:
            raise CuImageClosedError(f"{self._path}: the image file is closed")
        return self._slide

    def read_region(
        self,
        location: Any = (),
        size: Any = (),
        level: int = 0,
        num_workers: int = 0,
        batch_size: int = 1,
        drop_last: bool = False,
        prefetch_factor: int = 2,
        shuffle: bool = False,
        seed: int = 0,
        device: Any = "cpu",
        buf: Any = None,
        shm_name: str = "",
        **kwargs: Any,
    ) -> CuImage | CuImageIterator:
        """Read one region (a ``CuImage``), many (a :class:`CuImageIterator`), or the whole level.

        ``location`` is ``(x, y)`` in level-0 pixels, or many of them (list, tuple,
        generator, NumPy array, or flat ``[x0, y0, x1, y1, ...]``); ``size`` is
        ``(width, height)`` in ``level``'s pixels. Without ``location`` the region
        starts at ``(0, 0)``; without ``size`` it runs to the end of the level.
        ``num_workers`` threads of wsiarray's native pool decode each request.
        Batches: ``batch_size`` patches each (``YXC`` images when 1, else ``NYXC``),
        decoded ``prefetch_factor`` batches ahead; ``shuffle`` reads the locations in
        the order ``np.random.default_rng(seed).permutation(n)``; ``drop_last`` drops
        a short final batch.

        Example:
            >>> region = img.read_region((100, 200), (64, 32), level=0)
            >>> region.shape, region.dims
            ([32, 64, 3], 'YXC')
            >>> batches = img.read_region([(0, 0), (64, 0), (128, 0)], (64, 64), batch_size=2,
            ...                           num_workers=2)
            >>> len(batches), [b.shape[0] for b in batches]
            (2, [2, 1])
        """
        if kwargs:
            raise TypeError(f"read_region() got unsupported keyword arguments {sorted(kwargs)}")
        _check_device(device)
        if buf is not None:
            raise ArgumentError("read_region(buf=...) is not supported (nor by cuCIM)")
        if shm_name:
            raise ArgumentError("read_region(shm_name=...) is not supported (nor by cuCIM)")
        if self._loaded is not None:
            return self._crop_loaded(location, size, level)
        slide = self._open_slide()
        assert self._info is not None
        info = self._info
        if not isinstance(level, (int, np.integer)) or isinstance(level, bool) \
                or not 0 <= level < len(info.level_dimensions):
            raise ArgumentError(f"Invalid level ({level}) in the request! "
                                f"(Should be < {len(info.level_dimensions)})")
        level = int(level)
        if num_workers < 0:
            raise ArgumentError(f"num_workers must be >= 0, got {num_workers}")
        if batch_size < 0:
            raise ArgumentError(f"batch_size must be >= 0, got {batch_size}")
        batch_size = max(1, int(batch_size))
        level_w, level_h = info.level_dimensions[level]
        width, height = _size_or_default(size, (level_w, level_h))

        locations = _locations_or_none(location)
        if locations is None or len(locations) == 0:
            if _is_empty(size) and locations is None:
                array = slide.read_region(level=level, fill=info.fill, num_workers=num_workers)
            else:
                array = slide.read_region((0, 0), (width, height), level, fill=info.fill,
                                          num_workers=num_workers)
            assert isinstance(array, np.ndarray)
            return self._result(array, level, "YXC")
        if len(locations) == 1:
            x, y = (int(v) for v in locations[0])
            array = slide.read_region((x, y), (width, height), level, fill=info.fill,
                                      num_workers=num_workers)
            assert isinstance(array, np.ndarray)
            return self._result(array, level, "YXC")
        batches = slide.read_region(
            locations, (width, height), level, fill=info.fill, num_workers=num_workers,
            batch_size=batch_size, drop_last=drop_last, prefetch_factor=prefetch_factor,
            shuffle=shuffle, seed=seed,
        )
        assert isinstance(batches, BatchIterator)
        return CuImageIterator(self, batches, level, squeeze=batch_size == 1)

    def _result(self, array: np.ndarray, level: int, dims: str) -> CuImage:
        """Wrap pixels read from ``level`` (spacing scaled by the level's downsample)."""
        assert self._info is not None
        info = self._info
        downsample = info.level_downsamples[level]
        (sx, sy), unit = info.pixel_size, info.pixel_unit
        spacing: list[float] = [sy * downsample, sx * downsample, 1.0]
        units = [unit, unit, "color"]
        if dims == "NYXC":
            spacing = [1.0, *spacing]
            units = ["batch", *units]
        return CuImage._from_array(_Loaded(array, dims, spacing, units, info.channel_names, self._path))

    def _crop_loaded(self, location: Any, size: Any, level: int) -> CuImage:
        """``read_region`` on pixels already read: a crop (zero outside), level 0 only."""
        loaded = self._loaded
        assert loaded is not None
        if loaded.dims != "YXC":
            raise ArgumentError("read_region on a batch is not supported")
        if level != 0:
            raise ArgumentError(f"Invalid level ({level}) in the request! (Should be < 1)")
        h, w, c = loaded.array.shape
        locations = _locations_or_none(location)
        if locations is not None and len(locations) > 1:
            raise ArgumentError("read_region on pixels already read takes one location")
        x, y = (int(v) for v in locations[0]) if locations is not None and len(locations) else (0, 0)
        width, height = _size_or_default(size, (w, h))
        out = np.zeros((height, width, c), loaded.array.dtype)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, w), min(y + height, h)
        if x0 < x1 and y0 < y1:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = loaded.array[y0:y1, x0:x1]
        return CuImage._from_array(_Loaded(out, "YXC", loaded.spacing, loaded.units, loaded.channel_names,
                                           loaded.path))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a read 3-channel uint8 result as a binary PPM file (what cuCIM's ``save`` supports).

        Example:
            >>> img.read_region((0, 0), (64, 64)).save("/tmp/patch.ppm")
        """
        loaded = self._loaded
        if loaded is None or loaded.dims != "YXC" or loaded.array.dtype != np.uint8 \
                or loaded.array.shape[2] != 3:
            raise ArgumentError("save() writes read 3-channel uint8 images only (as .ppm)")
        h, w, _ = loaded.array.shape
        with open(path, "wb") as f:
            f.write(f"P6\n{w} {h}\n255\n".encode("ascii"))
            f.write(np.ascontiguousarray(loaded.array).tobytes())


class CuImageIterator(Iterator[CuImage]):
    """Batches of a many-location :meth:`CuImage.read_region`; ``len()`` is the batch count.

    Yields ``YXC`` ``CuImage`` objects when ``batch_size`` is 1, else ``NYXC`` ones of
    up to ``batch_size`` patches. Each yielded image owns its pixels.

    Example:
        >>> it = img.read_region([(0, 0), (10, 10), (20, 20)], (32, 32), batch_size=2, num_workers=1)
        >>> len(it), [b.shape for b in it]
        (2, [[2, 32, 32, 3], [1, 32, 32, 3]])
    """

    def __init__(self, image: CuImage, batches: BatchIterator, level: int, *, squeeze: bool) -> None:
        self._image = image
        self._batches = batches
        self._level = level
        self._squeeze = squeeze

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> CuImageIterator:
        return self

    def __next__(self) -> CuImage:
        array = next(self._batches)
        if self._squeeze:
            return self._image._result(array[0], self._level, "YXC")
        return self._image._result(array, self._level, "NYXC")

    def close(self) -> None:
        """Stop reading ahead."""
        self._batches.close()

    def __repr__(self) -> str:
        return f"<wsiarray.compat.CuImageIterator {len(self)} batches>"


# -- argument helpers -------------------------------------------------------------------


def _check_device(device: Any) -> None:
    name = "cpu" if device is None else str(device).lower()
    if name != "cpu":
        raise ArgumentError(f"device {device!r} is not supported by wsiarray.CuImage; only 'cpu'")


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    try:
        return len(value) == 0
    except TypeError:
        return False


def _size_or_default(size: Any, default: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)``; cuCIM's default is the rest of the level, and sizes must be positive."""
    if _is_empty(size):
        return default
    try:
        w, h = size
        width, height = int(w), int(h)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"size must be (width, height), got {size!r}") from exc
    if width != w or height != h:
        raise ArgumentError(f"size must be integers, got {size!r}")
    for value in (width, height):
        if value <= 0:
            raise ArgumentError(f"Invalid size ({value}) in the request! (Should be > 0)")
    return width, height


def _locations_or_none(location: Any) -> np.ndarray | None:
    """``(N, 2)`` int64 locations, or None when ``location`` is empty (cuCIM's default)."""
    if isinstance(location, Iterator):
        location = list(location)
    if _is_empty(location):
        return None
    many = as_locations(location)
    if many is None:
        try:
            x, y = location
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f"location must be (x, y), got {location!r}") from exc
        many = np.array([[_integer(x), _integer(y)]], np.int64)
    return many


def _integer(value: Any) -> int:
    out = int(value)
    if out != value:
        raise ArgumentError(f"locations must be integers, got {value!r}")
    return out


def _associated_description(slide: Slide, name: str) -> str:
    """The ImageDescription of the page holding associated image ``name`` (``""`` if unknown)."""
    try:
        loader = slide._open.info.associated[name]
        pages = getattr(loader, "pages", None)
        if not pages:
            return ""
        import tifffile

        with tifffile.TiffFile(slide.path) as tif:
            return tif.pages[int(pages[0])].description or ""
    except (WSIError, OSError, LookupError, ValueError, TypeError):
        return ""
