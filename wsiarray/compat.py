"""`CuImage`: cuCIM's ``cucim.CuImage`` Python API on top of wsiarray.

Code written for cuCIM's CPU path runs by changing one import::

    # from cucim import CuImage
    from wsiarray import CuImage

    img = CuImage("slide.svs")
    patch = img.read_region((1000, 2000), (224, 224), level=0)     # a CuImage
    array = np.asarray(patch)                                       # (224, 224, 3) uint8
    for batch in img.read_region(locations, (224, 224), batch_size=32, num_workers=2):
        x = np.asarray(batch)                                       # (32, 224, 224, 3)

Two kinds of ``CuImage``, as openslide-python has ``OpenSlide`` and ``ImageSlide``
over ``AbstractSlide``: :class:`CuImage` is the base holding the API both share
(``dims``, ``shape``, ``dtype``, ``spacing`` ..., ``metadata``);
``CuImage(path)`` makes a :class:`FileCuImage` (a slide file: regions, associated
images, ``close``); results are :class:`ArrayCuImage` (a block of pixels:
``__array_interface__``, crops, ``save``, ``__iter__``). Both are ``CuImage``
instances whose type is named ``CuImage``, as cuCIM's one class is. What a file
says comes from the format layer (:attr:`wsiarray.Slide.format_info`).

What is mirrored (checked against cuCIM 26.10.00, ``cucim-cu12`` on the CPU, by
``tests/test_compat.py``, and against cuCIM's sources where its CPU path cannot show it):

- ``CuImage(path)``; ``read_region(location, size, level, num_workers, batch_size,
  drop_last, prefetch_factor, shuffle, seed, device, buf, shm_name)`` with cuCIM's
  defaults: no ``location`` reads from ``(0, 0)``, no ``size`` reads the rest of the
  level, neither reads the whole level (split across ``num_workers``); one location
  (``(x, y)``, ``[x, y]`` or ``[(x, y)]``, with any ``num_workers``) returns a
  ``CuImage``, several return a :class:`CuImageIterator` with ``len()`` that yields
  ``YXC`` images for ``batch_size=1`` and ``NYXC`` images of up to ``batch_size``
  patches otherwise;
- results: ``__array_interface__`` (so ``np.asarray`` is zero-copy), ``shape`` (a list),
  ``dims`` (``"YXC"``/``"NYXC"``), ``ndim``, ``dtype`` (a :class:`DLDataType`),
  ``typestr``, ``size(dim_order)``, ``spacing(dim_order)``, ``spacing_units(dim_order)``,
  ``channel_names``, ``origin``, ``direction``, ``coord_sys``, ``resolutions``,
  ``metadata``, ``raw_metadata``, ``path``, ``is_loaded``, ``device``; iterating a
  result yields the result itself, once (cuCIM's ``CuImage.__iter__``);
  ``read_region`` on a result crops it (``YXC`` only, level 0, inside the image);
- the image: ``resolutions`` (``level_count``, ``level_dimensions``,
  ``level_downsamples``, ``level_tile_sizes``), ``metadata`` (a dict with a ``"cucim"``
  section holding the same keys as cuCIM, a ``"tiff"`` section, and ``"aperio"`` for
  Aperio slides: the ImageDescription's ``Key = value`` pairs, the first of a
  repeated key, plus ``Header``), ``raw_metadata`` (the first ImageDescription),
  ``associated_images`` (a set), ``associated_image(name)`` (a ``CuImage`` whose
  ``raw_metadata`` is its page's ImageDescription), ``close()`` and the context manager;
- spacing when the file has no physical pixel size: TIFFs with ResolutionUnit NONE
  report their raw X/YResolution values as spacing, with unit ``""``, and ``"tiff"``
  metadata ``resolution_unit`` ``""``;
- the fill value outside the image: 255 for Aperio slides, 0 for the others (cuCIM's
  background values);
- errors, class and message: a missing file raises ``ValueError("Cannot open PATH!")``,
  a file that cannot be read as a slide ``ValueError("Cannot load PATH!")``; a level
  out of range ``ValueError("Invalid level (L) in the request! (Should be < N)")``, or
  ``"'level' should be less than N"`` when no ``size`` is given (cuCIM then asks the
  level for its size first); ``"Invalid size (S) in the request! (Should be > 0)"``;
  crops outside a result ``"Invalid location (X) in the request! (Should be >= 0)"`` /
  ``"Invalid location/size (it exceeds the image width W)"``; a crop of a batch
  ``RuntimeError("[Error] The image is not in YXC format! (NYXC)")``; reading a closed
  image ``RuntimeError("[Error] The image file is closed!")``. The same bad input
  gives the same class and message whichever form of ``read_region`` it reaches;
- ``CuImage.cache(type, memory_capacity=MiB, capacity=..., record_stat=...)`` returns an
  :class:`ImageCache` with cuCIM's properties (``type`` is a :class:`CacheType`, which
  ``int()`` converts, ``memory_capacity`` in bytes, ``config`` with cuCIM's keys);
  ``record(value)`` sets recording and restarts both counters at zero, every time
  (cuCIM's ``PerProcessImageCache::record``); ``reserve(memory_capacity, capacity=...)``
  only ever grows each budget ("Reserves more memory if possible"; a smaller request
  leaves the cache as it is); :func:`preferred_memory_capacity` is cuCIM's function:
  ``tile_size`` and ``patch_size`` default to ``(256, 256)``, ``image_size`` is
  required without ``img``, and ``img`` supplies image size, tile size and bytes per
  pixel (``patch_size`` alone is taken from the arguments then);
- the names cuCIM exports beside ``CuImage`` (``cucim.clara``): :class:`DLDataType`,
  :class:`DLDataTypeCode` (``DLInt``, ``DLUInt``, ``DLFloat``, ``DLBfloat``), and from
  ``cucim.clara.cache`` :class:`CacheType`, :class:`ImageCache`,
  :func:`preferred_memory_capacity`.

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
  image (the outside is filled; cuCIM raises). Any file wsiarray opens is read,
  whatever its name (cuCIM picks a plugin by extension and says "Cannot find a plugin
  to handle 'PATH'!" for other names).
- **Level coordinates round down** (``floor(x / downsample)``, OpenSlide's rule) also for
  negative locations; cuCIM truncates toward zero, so ``x = -3`` at a 4x level is column
  -1 here and 0 in cuCIM. A negative ``level`` is reported as given (cuCIM prints it
  wrapped to 16 bits, ``Invalid level (65535) ...``).
- **Samples are returned as stored**: a grayscale slide gives one channel (cuCIM expands
  some files to RGBA); associated images keep their channel count.
- **Picklable**: an image pickles as its path (reopened where it is unpickled, as
  :class:`wsiarray.Slide` does), a result as its pixels and metadata; cuCIM's objects do
  not pickle.
- **Errors are also** :class:`wsiarray.WSIError` subclasses: opening fails with
  :class:`CuImageOpenError` (both ``OSError`` and ``ValueError``; cuCIM raises
  ``ValueError``) whose ``__cause__`` says why, invalid arguments with
  :class:`wsiarray.ArgumentError` (a ``ValueError``, as in cuCIM), reading a closed
  image with :class:`CuImageClosedError` (a ``RuntimeError`` as in cuCIM); an unknown
  ``associated_image(name)`` raises ``KeyError``-compatible :class:`wsiarray.ArgumentError`
  instead of returning an empty image; ``read_region`` on a result with several
  locations raises (cuCIM crops at the first); iterating a file-backed image raises
  ``TypeError`` (cuCIM raises ``IndexError``).
- ``ImageCache.memory_capacity`` and ``capacity`` report the usable budget, which
  wsiarray's sharded cache rounds down (to 16 KiB pages, to a multiple of its shards),
  so they can be a little below the request that cuCIM reports; ``config`` holds the
  request. A ``reserve`` that grows a budget restarts wsiarray's cache empty with its
  counters at zero (cuCIM keeps the tiles and the counts). ``record(value)`` restarts
  this process's counters; the totals of a shared-memory segment seen by other
  processes stay.
- The ``"aperio"`` metadata splits items as OpenSlide does (at the first ``=``, spaces
  around it optional); cuCIM keeps only items with exactly one ``" = "`` and keeps an
  empty key.
- ``device`` is ``"cpu"``, or ``"cuda"``/``"cuda:N"`` for reads decoded on the GPU (the
  result then holds a CuPy array and has ``__cuda_array_interface__``; associated images
  stay on the CPU); ``buf`` must be ``None`` and ``shm_name`` empty (cuCIM documents them
  as not supported yet); other keyword arguments raise ``TypeError``.
"""

from __future__ import annotations

import abc
import enum
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from ._request import parse_device, parse_file_access, parse_locations
from .batch import BatchIterator
from .cache import TileCache
from .cache import cache as _tile_cache
from .cache import preferred_memory_capacity as _preferred_memory_capacity
from .errors import ArgumentError, ClosedError, OpenError, WSIError
from .formats.aperio import split_description
from .formats.base import SlideInfo
from .slide import Slide

__all__ = [
    "ArrayCuImage",
    "CacheType",
    "CuImage",
    "CuImageClosedError",
    "CuImageIterator",
    "CuImageOpenError",
    "DLDataType",
    "DLDataTypeCode",
    "FileCuImage",
    "ImageCache",
    "preferred_memory_capacity",
]

#: cuCIM's background value outside the image, per vendor (0 for the others).
_BACKGROUND = {"aperio": 255, "philips": 255}
#: cuCIM's constant geometry fields.
_ORIGIN = (0.0, 0.0, 0.0)
_DIRECTION = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
_COORD_SYS = "LPS"
#: cuCIM's cache defaults and fixed settings (``ImageCacheConfig``), reported in ``ImageCache.config``.
_DEFAULT_MEMORY_CAPACITY = 1024  # MiB
_MUTEX_POOL_CAPACITY = 100003
_LIST_PADDING = 10000
_EXTRA_SHARED_MEMORY_SIZE = 100
#: cuCIM's ``kDefaultTileSize`` and ``kDefaultPatchSize`` for ``preferred_memory_capacity``.
_DEFAULT_TILE = (256, 256)
_DEFAULT_PATCH = (256, 256)
_MIB = 1 << 20


def _default_cache_capacity(memory_capacity_mib: int) -> int:
    """cuCIM's ``calc_default_cache_capacity``: 256x256 RGB tiles that fit the memory."""
    return max(1, memory_capacity_mib * _MIB // (256 * 256 * 3))


class CuImageOpenError(OpenError, ValueError):
    """The file cannot be opened; a ``ValueError`` as in cuCIM, and a :class:`wsiarray.OpenError`.

    Example:
        >>> CuImage("missing.svs")
        Traceback (most recent call last):
        ...
        wsiarray.compat.CuImageOpenError: Cannot open missing.svs!
    """


class CuImageClosedError(ClosedError, RuntimeError):
    """Pixels asked of a closed image: a ``RuntimeError`` as in cuCIM, and a :class:`wsiarray.ClosedError`.

    Example:
        >>> img.close(); img.read_region((0, 0), (8, 8))
        Traceback (most recent call last):
        ...
        wsiarray.compat.CuImageClosedError: [Error] The image file is closed!
    """


class _UnknownAssociatedImage(ArgumentError, KeyError):
    """``associated_image(name)`` for a name the slide does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class _NotYXC(ArgumentError, RuntimeError):
    """``read_region`` on a batch result: cuCIM's ``RuntimeError``."""


# -- small value types ----------------------------------------------------------------


class DLDataTypeCode(enum.IntEnum):
    """cuCIM's ``DLDataTypeCode``: DLPack's type codes; compares and converts as an int.

    Example:
        >>> DLDataTypeCode.DLUInt, int(DLDataTypeCode.DLUInt), str(DLDataTypeCode.DLFloat)
        (<DLDataTypeCode.DLUInt: 1>, 1, 'DLDataTypeCode.DLFloat')
    """

    DLInt = 0
    DLUInt = 1
    DLFloat = 2
    DLBfloat = 4

    def __str__(self) -> str:  # cuCIM's (pybind11's) form, not int's
        return f"{type(self).__name__}.{self.name}"


class DLDataType:
    """cuCIM's ``DLDataType``: a DLPack type as ``code`` (a :class:`DLDataTypeCode`), ``bits``, ``lanes``.

    Example:
        >>> DLDataType.from_numpy(np.dtype("uint8"))
        <wsiarray.compat.DLDataType code:DLUInt(1) bits:8 lanes:1>
        >>> DLDataType(DLDataTypeCode.DLFloat, 32, 1).code
        2
    """

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
        """``{"bits", "code", "lanes"}``, as in cuCIM's metadata.

        Example:
            >>> DLDataType(1, 8).as_dict()
            {'bits': 8, 'code': 1, 'lanes': 1}
        """
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
        try:
            name = DLDataTypeCode(self.code).name
        except ValueError:
            name = "DLUnknown"
        return f"<wsiarray.compat.DLDataType code:{name}({self.code}) bits:{self.bits} lanes:{self.lanes}>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (DLDataType, (self.code, self.bits, self.lanes))


class CacheType(enum.Enum):
    """cuCIM's cache types; :attr:`ImageCache.type` returns one. ``int()`` gives its value.

    Like cuCIM's, a ``CacheType`` does not compare equal to an int.

    Example:
        >>> CuImage.cache().type, int(CacheType.SharedMemory)
        (<CacheType.NoCache: 0>, 2)
    """

    NoCache = 0
    PerProcess = 1
    SharedMemory = 2

    def __int__(self) -> int:
        return int(self.value)

    def __index__(self) -> int:
        return int(self.value)


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
        memory = int(cfg["memory_capacity"]) or _DEFAULT_MEMORY_CAPACITY
        capacity = int(cfg["capacity"]) or _default_cache_capacity(memory)
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
        """Tiles served from the cache since recording was last set."""
        return self._current().hit_count

    @property
    def miss_count(self) -> int:
        """Tiles decoded because the cache lacked them, since recording was last set."""
        return self._current().miss_count

    def record(self, value: bool | None = None) -> bool:
        """With no argument, whether statistics are recorded; else set recording and zero the counters.

        As cuCIM, every ``record(True)`` or ``record(False)`` restarts ``hit_count`` and
        ``miss_count`` at zero; cached tiles stay.

        Example:
            >>> c = CuImage.cache("per_process", memory_capacity=64, record_stat=True)
            >>> c.record(True), c.hit_count, c.miss_count
            (True, 0, 0)
        """
        cache = self._current()
        if value is None:
            return cache.record()
        if not isinstance(value, (bool, np.bool_)):
            raise ArgumentError("Only 'NoneType' or 'bool' is available for the argument")
        recording = cache.record(bool(value))
        cache.reset_counters()
        return recording

    def reserve(self, memory_capacity: int, **kwargs: Any) -> None:
        """Grow the budgets to ``memory_capacity`` MiB and ``capacity`` items; never shrinks them.

        As cuCIM, ``capacity`` defaults to what ``memory_capacity`` holds of 256x256 RGB
        tiles, and each budget only changes when the request is larger. Growing
        restarts wsiarray's cache empty (see the module docstring).

        Example:
            >>> c = CuImage.cache("per_process", memory_capacity=64)
            >>> c.reserve(32); c.config["memory_capacity"]
            64
            >>> c.reserve(128); c.config["memory_capacity"]
            128
        """
        unknown = set(kwargs) - {"capacity"}
        if unknown:
            raise TypeError(f"reserve() got unexpected keyword arguments {sorted(unknown)}")
        memory = int(memory_capacity)
        capacity = kwargs.get("capacity")
        capacity = _default_cache_capacity(memory) if capacity is None else int(capacity)
        cache = self._current()
        if cache.type == "nocache":
            return
        config = self.config
        new_memory = max(memory, config["memory_capacity"])
        new_capacity = max(capacity, config["capacity"])
        if (new_memory, new_capacity) != (config["memory_capacity"], config["capacity"]):
            cache.reserve(new_memory, new_capacity)

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

    Sizes are ``(width, height)``. ``tile_size`` and ``patch_size`` default to
    ``(256, 256)``. ``img`` supplies level 0's image size, tile size and bytes per
    pixel; only ``patch_size`` is then taken from the arguments. Without ``img``,
    ``image_size`` is required.

    Example:
        >>> preferred_memory_capacity(image_size=(1048576, 1048576), tile_size=(256, 256),
        ...                           patch_size=(256, 256))
        1536
        >>> preferred_memory_capacity(None, (1048576, 1048576), patch_size=(256, 256))
        1536
    """
    if img is not None:
        image_size = tuple(img.size("XY"))
        tile_size = img.resolutions["level_tile_sizes"][0]
        bytes_per_pixel = (int(img.dtype.bits) * int(np.prod(img.size("C"))) + 7) // 8
    elif image_size is None or len(image_size) != 2:
        raise ArgumentError("Please specify 'image_size' parameter (e.g., 'image_size=(100000, 100000)')!")
    if tile_size is None or len(tile_size) != 2:
        tile_size = _DEFAULT_TILE
    if patch_size is None or len(patch_size) != 2:
        patch_size = _DEFAULT_PATCH
    return _preferred_memory_capacity(
        None,
        image_size=_pair(image_size),
        tile_size=_pair(tile_size),
        patch_size=_pair(patch_size),
        bytes_per_pixel=int(bytes_per_pixel),
    )


def _pair(value: Sequence[int]) -> tuple[int, int]:
    return int(value[0]), int(value[1])


# -- the images -----------------------------------------------------------------------


class CuImage(abc.ABC):
    """A whole-slide image, or pixels read from one, with cuCIM's ``CuImage`` API.

    ``CuImage(path)`` opens a slide (any format :func:`wsiarray.open` reads) as a
    :class:`FileCuImage`; :meth:`read_region` returns :class:`ArrayCuImage` objects
    holding pixels, which ``np.asarray`` views without copying
    (``__array_interface__``). Both are ``CuImage`` instances. See the module
    docstring for what differs from cuCIM on purpose.

    Example:
        >>> from wsiarray import CuImage
        >>> img = CuImage(svs_path)
        >>> img.resolutions["level_dimensions"]
        ((1024, 768), (512, 384))
        >>> region = img.read_region((0, 0), (256, 128))
        >>> isinstance(region, CuImage), np.asarray(region).shape
        (True, (128, 256, 3))
    """

    _path: str

    def __new__(cls, *args: Any, **kwargs: Any) -> CuImage:
        # ``CuImage(path)`` is cuCIM's constructor: it opens the file.
        return super().__new__(FileCuImage if cls is CuImage else cls)

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

    # -- what each kind provides -----------------------------------------------------------

    @property
    @abc.abstractmethod
    def dims(self) -> str:
        """Axis names: ``"YXC"``, or ``"NYXC"`` for a batch.

        Example:
            >>> img.dims
            'YXC'
        """

    @property
    @abc.abstractmethod
    def shape(self) -> list[int]:
        """Sizes in :attr:`dims` order, as a list.

        Example:
            >>> img.shape
            [768, 1024, 3]
        """

    @property
    @abc.abstractmethod
    def _numpy_dtype(self) -> np.dtype: ...

    @property
    @abc.abstractmethod
    def channel_names(self) -> list[str]:
        """Channel names (``["R", "G", "B"]`` for RGB).

        Example:
            >>> img.channel_names
            ['R', 'G', 'B']
        """

    @abc.abstractmethod
    def _spacing_by_axis(self) -> dict[str, tuple[float, str]]:
        """Axis name -> (spacing, unit)."""

    @property
    @abc.abstractmethod
    def resolutions(self) -> dict[str, Any]:
        """``level_count``, ``level_dimensions`` (w, h), ``level_downsamples``, ``level_tile_sizes`` (w, h).

        Example:
            >>> img.resolutions["level_count"]
            2
        """

    @property
    @abc.abstractmethod
    def raw_metadata(self) -> str:
        """The ImageDescription of the image's TIFF page (``""`` for read results).

        Example:
            >>> img.raw_metadata.startswith("Aperio")
            True
        """

    @abc.abstractmethod
    def read_region(self, location: Any = (), size: Any = (), level: int = 0, **kwargs: Any) -> Any:
        """Pixels of a region: see :meth:`FileCuImage.read_region` and :meth:`ArrayCuImage.read_region`."""

    def _vendor_metadata(self) -> dict[str, Any]:
        """Metadata sections beside ``"cucim"`` (none for pixels)."""
        return {}

    # -- description shared by both kinds -------------------------------------------------

    @property
    def path(self) -> str:
        """The path given to the constructor (results keep their slide's path).

        Example:
            >>> img.read_region((0, 0), (8, 8)).path == img.path
            True
        """
        return self._path

    @property
    def is_loaded(self) -> bool:
        """Always True (cuCIM reports True for opened files too).

        Example:
            >>> img.is_loaded
            True
        """
        return True

    @property
    def device(self) -> str:
        """``"cpu"``.

        Example:
            >>> img.device
            'cpu'
        """
        return "cpu"

    @property
    def ndim(self) -> int:
        """Number of axes.

        Example:
            >>> img.ndim
            3
        """
        return len(self.dims)

    @property
    def dtype(self) -> DLDataType:
        """The sample type as a :class:`DLDataType` (``np.dtype(img.typestr)`` gives NumPy's).

        Example:
            >>> img.dtype.bits
            8
        """
        return DLDataType.from_numpy(self._numpy_dtype)

    @property
    def typestr(self) -> str:
        """NumPy's array-interface type string.

        Example:
            >>> img.typestr
            '|u1'
        """
        return self._numpy_dtype.str

    @property
    def origin(self) -> list[float]:
        """``[0.0, 0.0, 0.0]``, as cuCIM.

        Example:
            >>> img.origin
            [0.0, 0.0, 0.0]
        """
        return list(_ORIGIN)

    @property
    def direction(self) -> list[list[float]]:
        """The identity matrix, as cuCIM.

        Example:
            >>> img.direction[0]
            [1.0, 0.0, 0.0]
        """
        return [list(row) for row in _DIRECTION]

    @property
    def coord_sys(self) -> str:
        """``"LPS"``, as cuCIM.

        Example:
            >>> img.coord_sys
            'LPS'
        """
        return _COORD_SYS

    def size(self, dim_order: str = "") -> list[int]:
        """Sizes of the axes named in ``dim_order`` (all axes when empty); absent axes are skipped.

        Example:
            >>> img.size("XY")  # width, height of level 0
            [1024, 768]
        """
        sizes = dict(zip(self.dims, self.shape, strict=True))
        order = dim_order or self.dims
        return [sizes[d] for d in order if d in sizes]

    def spacing(self, dim_order: str = "") -> list[float]:
        """Physical pixel size per axis in ``dim_order`` (all axes when empty); 1.0 for absent axes.

        Example:
            >>> img.spacing("XY")
            [0.25, 0.25]
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
    def associated_images(self) -> set[str]:
        """Names of the associated images (``label``, ``macro``, ``thumbnail``); none for read results.

        Example:
            >>> sorted(img.associated_images)
            ['label', 'macro', 'thumbnail']
        """
        return set()

    def associated_image(self, name: str = "", device: Any = "cpu") -> ArrayCuImage:
        """The associated image ``name`` as a ``YXC`` ``CuImage``; ``KeyError`` if there is none.

        Example:
            >>> np.asarray(img.associated_image("label")).shape
            (80, 100, 3)
        """
        _check_cpu(device)
        raise _UnknownAssociatedImage(f"{self._path}: no associated image {name!r}")

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
        return {"cucim": cucim, **self._vendor_metadata()}

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:  # noqa: B027 (a no-op for pixels; files override it)
        """Release what the image holds (a file; nothing for pixels).

        Example:
            >>> img.close()
        """

    def __enter__(self) -> CuImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<wsiarray.CuImage path:{self._path}>"


class FileCuImage(CuImage):
    """A slide file opened with ``CuImage(path)``: regions, associated images, ``close``.

    The description (levels, spacing, metadata) is read once from the format layer
    and stays readable after :meth:`close`; reading pixels then raises.
    ``file_access`` (wsiarray's, not cuCIM's) chooses how the file's bytes are read,
    as in :func:`wsiarray.open`; ``path`` may be a URL, with ``storage_options``
    for fsspec, as there.

    Example:
        >>> img = CuImage(svs_path)
        >>> isinstance(img, FileCuImage), type(img).__name__
        (True, 'CuImage')
        >>> CuImage(svs_path, file_access="mmap").read_region((0, 0), (64, 64)).shape
        [64, 64, 3]
    """

    def __init__(self, path: str | os.PathLike[str], *, file_access: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        self._path = os.fspath(path)
        file_access = parse_file_access(file_access)  # a bad value is the caller's ArgumentError
        try:
            slide = Slide(self._path, file_access=file_access, storage_options=storage_options)
            info = slide.format_info
        except (WSIError, OSError) as exc:
            # (a URL that could not be opened counts as absent)
            exists = not isinstance(exc, OpenError) if "://" in self._path else os.path.exists(self._path)
            raise CuImageOpenError(f"Cannot {'load' if exists else 'open'} {self._path}!") from exc
        self._slide = slide
        self._closed = False
        self._vendor = info.vendor
        self._fill = _BACKGROUND.get(info.vendor, 0)
        self._info = info
        self._dtype = np.dtype(slide.dtype)
        self._channel_names = [str(c) for c in slide.channel_names]
        self._shape = [int(v) for v in slide.shape]
        self._level_dimensions = tuple((int(w), int(h)) for w, h in slide.level_dimensions)
        self._level_downsamples = tuple(float(d) for d in slide.level_downsamples)
        self._level_tile_sizes = tuple((int(w), int(h)) for w, h in slide.level_tile_sizes)
        self._pixel_size, self._pixel_unit = _pixel_size(info)

    # -- description ---------------------------------------------------------------------

    @property
    def dims(self) -> str:
        """``"YXC"``."""
        return "YXC"

    @property
    def shape(self) -> list[int]:
        """``[height, width, channels]`` of level 0."""
        return list(self._shape)

    @property
    def _numpy_dtype(self) -> np.dtype:
        return self._dtype

    @property
    def channel_names(self) -> list[str]:
        """Channel names (``["R", "G", "B"]`` for RGB)."""
        return list(self._channel_names)

    def _spacing_by_axis(self) -> dict[str, tuple[float, str]]:
        (sx, sy), unit = self._pixel_size, self._pixel_unit
        return {"Y": (sy, unit), "X": (sx, unit), "C": (1.0, "color")}

    @property
    def resolutions(self) -> dict[str, Any]:
        """``level_count``, ``level_dimensions`` (w, h), ``level_downsamples``, ``level_tile_sizes`` (w, h).

        Example:
            >>> img.resolutions["level_tile_sizes"]
            ((256, 256), (256, 256))
        """
        return {
            "level_count": len(self._level_dimensions),
            "level_dimensions": self._level_dimensions,
            "level_downsamples": self._level_downsamples,
            "level_tile_sizes": self._level_tile_sizes,
        }

    @property
    def raw_metadata(self) -> str:
        """The first page's ImageDescription."""
        return self._info.properties.get("tiff.ImageDescription", "")

    def _vendor_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tiff": _tiff_section(self._info.properties)}
        if self._vendor == "aperio" and self.raw_metadata:
            out["aperio"] = _aperio_section(self.raw_metadata)
        return out

    @property
    def associated_images(self) -> set[str]:
        """Names of the associated images (``label``, ``macro``, ``thumbnail``).

        Example:
            >>> sorted(img.associated_images)
            ['label', 'macro', 'thumbnail']
        """
        return set(self._info.associated)

    def associated_image(self, name: str = "", device: Any = "cpu") -> ArrayCuImage:
        """The associated image ``name`` as a ``YXC`` ``CuImage``; ``raw_metadata`` is its page's description.

        Example:
            >>> label = img.associated_image("label")
            >>> np.asarray(label).shape, label.raw_metadata.splitlines()[1]
            ((80, 100, 3), 'label 100x80')
        """
        _check_cpu(device)
        if name not in self._info.associated:
            raise _UnknownAssociatedImage(f"{self._path}: no associated image {name!r}")
        array = np.array(self._open_slide().associated_images[name], copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        return ArrayCuImage(
            array, "YXC", (1.0, 1.0, 1.0), ("micrometer", "micrometer", "color"),
            _channel_names(array.shape[2]), self._path,
            self._info.associated_descriptions.get(name, ""),
        )

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Release the file; the description stays readable, reading pixels raises.

        Example:
            >>> with CuImage(svs_path) as img:
            ...     pass
            >>> img.shape
            [768, 1024, 3]
        """
        self._slide.close()
        self._closed = True

    def __reduce__(self) -> tuple[Any, ...]:
        return (CuImage, (self._path,))

    def _open_slide(self) -> Slide:
        if self._closed:
            raise CuImageClosedError("[Error] The image file is closed!")
        return self._slide

    # -- pixels --------------------------------------------------------------------------

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
    ) -> ArrayCuImage | CuImageIterator:
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
        device = _check_request(kwargs, device, buf, shm_name)
        slide = self._open_slide()
        level = _check_level(level, len(self._level_dimensions), size)
        if num_workers < 0:
            raise ArgumentError(f"num_workers must be >= 0, got {num_workers}")
        if batch_size < 0:
            raise ArgumentError(f"batch_size must be >= 0, got {batch_size}")
        batch_size = max(1, int(batch_size))
        width, height = _size_or_default(size, self._level_dimensions[level])

        locations = _locations_or_none(location)
        if locations is None and _is_empty(size):
            array = slide.read_region(level=level, fill=self._fill, num_workers=num_workers, device=device)
            return self._result(array, level, "YXC")
        if locations is None or len(locations) <= 1:
            x, y = (int(v) for v in locations[0]) if locations is not None and len(locations) else (0, 0)
            array = slide.read_region((x, y), (width, height), level, fill=self._fill,
                                      num_workers=num_workers, device=device)
            return self._result(array, level, "YXC")
        batches = slide.read_region(
            locations, (width, height), level, fill=self._fill, num_workers=num_workers,
            batch_size=batch_size, drop_last=drop_last, prefetch_factor=prefetch_factor,
            shuffle=shuffle, seed=seed, device=device,
        )
        return CuImageIterator(self, batches, level, squeeze=batch_size == 1)

    def _result(self, array: Any, level: int, dims: str) -> ArrayCuImage:
        """Wrap pixels read from ``level`` (spacing scaled by the level's downsample; NumPy or CuPy)."""
        downsample = self._level_downsamples[level]
        (sx, sy), unit = self._pixel_size, self._pixel_unit
        spacing: list[float] = [sy * downsample, sx * downsample, 1.0]
        units = [unit, unit, "color"]
        if dims == "NYXC":
            spacing = [1.0, *spacing]
            units = ["batch", *units]
        return ArrayCuImage(array, dims, spacing, units, self._channel_names, self._path)


class ArrayCuImage(CuImage):
    """A block of pixels with cuCIM's ``CuImage`` API: a read result or an associated image.

    ``np.asarray`` views the pixels without copying (``__array_interface__``);
    ``read_region`` crops; iterating yields the image itself, once (cuCIM's
    ``__iter__``); ``save`` writes a PPM.

    Example:
        >>> block = ArrayCuImage(np.zeros((4, 6, 3), np.uint8))
        >>> block.shape, block.dims, block.spacing_units(), [b is block for b in block]
        ([4, 6, 3], 'YXC', ['', '', 'color'], [True])
    """

    def __init__(
        self,
        array: np.ndarray,
        dims: str = "YXC",
        spacing: Sequence[float] | None = None,
        units: Sequence[str] | None = None,
        channel_names: Sequence[str] | None = None,
        path: str = "",
        raw_metadata: str = "",
    ) -> None:
        if array.ndim != len(dims):
            raise ArgumentError(f"an array of {array.ndim} axes cannot have dims {dims!r}")
        self._array = array
        self._dims = dims
        self._spacing = [float(v) for v in spacing] if spacing is not None else [1.0] * len(dims)
        if units is None:
            units = [{"N": "batch", "C": "color"}.get(d, "") for d in dims]
        self._units = [str(u) for u in units]
        self._channel_names = [str(c) for c in (channel_names if channel_names is not None
                                                else _channel_names(array.shape[-1]))]
        self._path = str(path)
        self._raw = str(raw_metadata)

    # -- description ---------------------------------------------------------------------

    @property
    def dims(self) -> str:
        """``"YXC"``, or ``"NYXC"`` for a batch."""
        return self._dims

    @property
    def shape(self) -> list[int]:
        """The array's shape, as a list."""
        return [int(v) for v in self._array.shape]

    @property
    def _numpy_dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def channel_names(self) -> list[str]:
        """Channel names (``["R", "G", "B"]`` for RGB)."""
        return list(self._channel_names)

    def _spacing_by_axis(self) -> dict[str, tuple[float, str]]:
        return {d: (s, u) for d, s, u in zip(self._dims, self._spacing, self._units, strict=True)}

    @property
    def resolutions(self) -> dict[str, Any]:
        """One level: the block's own size.

        Example:
            >>> img.read_region((0, 0), (64, 32)).resolutions["level_dimensions"]
            ((64, 32),)
        """
        w, h = self.size("XY")
        return {"level_count": 1, "level_dimensions": ((w, h),), "level_downsamples": (1.0,),
                "level_tile_sizes": ((w, h),)}

    @property
    def raw_metadata(self) -> str:
        """The associated image's page description; ``""`` for read results."""
        return self._raw

    # -- pixels --------------------------------------------------------------------------

    @property
    def __array_interface__(self) -> dict[str, Any]:
        """NumPy's array interface of the pixels (``np.asarray`` makes no copy).

        Example:
            >>> np.asarray(img.read_region((0, 0), (8, 8))).shape
            (8, 8, 3)
        """
        return self._array.__array_interface__

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        """CUDA's array interface of pixels read with ``device="cuda"`` (``cupy.asarray`` makes no copy).

        Pixels in host memory have none (``AttributeError``), as in cuCIM.

        Example:
            >>> hasattr(img.read_region((0, 0), (8, 8)), "__cuda_array_interface__")
            False
        """
        return self._array.__cuda_array_interface__

    @property
    def device(self) -> str:
        """``"cuda"`` for pixels read with ``device="cuda"``, else ``"cpu"``.

        Example:
            >>> img.read_region((0, 0), (8, 8)).device
            'cpu'
        """
        return "cuda" if hasattr(self._array, "__cuda_array_interface__") else "cpu"

    def __iter__(self) -> Iterator[ArrayCuImage]:
        """Yields the image itself, once, as cuCIM's ``CuImage.__iter__`` does.

        Example:
            >>> region = img.read_region([(0, 0)], (8, 8), num_workers=2)
            >>> [np.asarray(r).shape for r in region]
            [(8, 8, 3)]
        """
        yield self

    def __reduce__(self) -> tuple[Any, ...]:
        return (ArrayCuImage, (self._array, self._dims, self._spacing, self._units, self._channel_names,
                               self._path, self._raw))

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
    ) -> ArrayCuImage:
        """A crop of these pixels: level 0 only, inside the image, ``YXC`` only (as cuCIM).

        Without ``location`` the crop starts at ``(0, 0)``; without ``size`` it is the
        image's size.

        Example:
            >>> region = img.read_region((0, 0), (16, 12))
            >>> region.read_region((4, 2), (8, 6)).shape
            [6, 8, 3]
        """
        _check_request(kwargs, device, buf, shm_name)
        if self._dims != "YXC":
            raise _NotYXC(f"[Error] The image is not in YXC format! ({self._dims})")
        _check_level(level, 1, size)
        h, w = self._array.shape[:2]
        width, height = _size_or_default(size, (w, h))
        locations = _locations_or_none(location)
        if locations is not None and len(locations) > 1:
            raise ArgumentError("read_region on pixels already read takes one location")
        x, y = (int(v) for v in locations[0]) if locations is not None and len(locations) else (0, 0)
        for value in (x, y):
            if value < 0:
                raise ArgumentError(f"Invalid location ({value}) in the request! (Should be >= 0)")
        if x + width > w:
            raise ArgumentError(f"Invalid location/size (it exceeds the image width {w})")
        if y + height > h:
            raise ArgumentError(f"Invalid location/size (it exceeds the image height {h})")
        crop = np.ascontiguousarray(self._array[y : y + height, x : x + width])
        return ArrayCuImage(crop, "YXC", self._spacing, self._units, self._channel_names, self._path)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a 3-channel uint8 ``YXC`` image as a binary PPM file (what cuCIM's ``save`` supports).

        Example:
            >>> img.read_region((0, 0), (64, 64)).save("patch.ppm")
        """
        array = self._array
        if self._dims != "YXC" or array.dtype != np.uint8 or array.shape[2] != 3:
            raise ArgumentError("save() writes read 3-channel uint8 images only (as .ppm)")
        h, w, _ = array.shape
        with open(path, "wb") as f:
            f.write(f"P6\n{w} {h}\n255\n".encode("ascii"))
            f.write(np.ascontiguousarray(array).tobytes())


# cuCIM has one class, ``CuImage``; code that prints or compares ``type(x).__name__``
# sees that name for both kinds. The qualified names (repr(type(x)), pickle) tell them apart.
FileCuImage.__name__ = "CuImage"
ArrayCuImage.__name__ = "CuImage"


class CuImageIterator(Iterator[ArrayCuImage]):
    """Batches of a many-location :meth:`FileCuImage.read_region`; ``len()`` is the batch count.

    Yields ``YXC`` ``CuImage`` objects when ``batch_size`` is 1, else ``NYXC`` ones of
    up to ``batch_size`` patches. Each yielded image owns its pixels.

    Example:
        >>> it = img.read_region([(0, 0), (10, 10), (20, 20)], (32, 32), batch_size=2, num_workers=1)
        >>> len(it), [b.shape for b in it]
        (2, [[2, 32, 32, 3], [1, 32, 32, 3]])
    """

    def __init__(self, image: FileCuImage, batches: BatchIterator, level: int, *, squeeze: bool) -> None:
        self._image = image
        self._batches = batches
        self._level = level
        self._squeeze = squeeze

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> CuImageIterator:
        return self

    def __next__(self) -> ArrayCuImage:
        array = next(self._batches)
        if self._squeeze:
            return self._image._result(array[0], self._level, "YXC")
        return self._image._result(array, self._level, "NYXC")

    def close(self) -> None:
        """Stop reading ahead.

        Example:
            >>> it = img.read_region([(0, 0), (10, 10)], (32, 32), num_workers=1); it.close()
        """
        self._batches.close()

    def __repr__(self) -> str:
        return f"<wsiarray.compat.CuImageIterator {len(self)} batches>"


# -- metadata from the format layer ------------------------------------------------------


def _channel_names(channels: int) -> list[str]:
    return {1: ["Y"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "A"]}.get(
        channels, [f"C{i}" for i in range(channels)])


def _pixel_size(info: SlideInfo) -> tuple[tuple[float, float], str]:
    """Level-0 ``(x, y)`` spacing and unit: the slide's pixel size, else cuCIM's rule for the tags."""
    if info.mpp is not None:
        return (float(info.mpp[0]), float(info.mpp[1])), "micrometer"
    props = info.properties
    if props.get("tiff.ResolutionUnit") == "none":
        # cuCIM reports a unitless resolution's raw values as the spacing, with no unit
        x, y = _float(props.get("tiff.XResolution"), 0.0), _float(props.get("tiff.YResolution"), 0.0)
        if x > 0 and y > 0:
            return (x, y), ""
    return (1.0, 1.0), ""


def _aperio_section(description: str) -> dict[str, str]:
    """cuCIM's ``"aperio"`` metadata: ``Header`` and the ``Key = value`` pairs.

    The pairs come from the one Aperio parser (:func:`wsiarray.formats.aperio.split_description`);
    cuCIM's rule on top of it: the FIRST value of a repeated key wins (OpenSlide's
    ``aperio.*`` properties keep the last).
    """
    header, pairs = split_description(description)
    section = {"Header": header}
    for key, value in pairs:
        section.setdefault(key, value)
    return section


def _tiff_section(props: dict[str, str]) -> dict[str, Any]:
    """cuCIM's ``"tiff"`` metadata from the TIFF tags of the first page."""
    unit = props.get("tiff.ResolutionUnit", "") if "tiff.XResolution" in props else ""
    return {
        "model": props.get("tiff.Model", ""),
        "resolution_unit": "" if unit == "none" else unit,
        "software": props.get("tiff.Software", ""),
        "x_resolution": _float(props.get("tiff.XResolution"), 1.0),
        "y_resolution": _float(props.get("tiff.YResolution"), 1.0),
    }


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


# -- argument helpers -------------------------------------------------------------------


def _check_device(device: Any) -> str:
    """The parsed device (the request layer's rule; ``None`` is ``"cpu"``)."""
    return parse_device(device)


def _check_cpu(device: Any) -> None:
    if _check_device(device) != "cpu":
        raise ArgumentError(f"device {device!r}: associated images are read on the CPU only")


def _check_request(kwargs: dict[str, Any], device: Any, buf: Any, shm_name: str) -> str:
    """What both kinds' ``read_region`` refuse alike; returns the parsed device."""
    if kwargs:
        raise TypeError(f"read_region() got unsupported keyword arguments {sorted(kwargs)}")
    device = _check_device(device)
    if buf is not None:
        raise ArgumentError("read_region(buf=...) is not supported (nor by cuCIM)")
    if shm_name:
        raise ArgumentError("read_region(shm_name=...) is not supported (nor by cuCIM)")
    return device


def _check_level(level: Any, level_count: int, size: Any) -> int:
    """``level`` as an index, else cuCIM's message (without ``size`` it asks the level for its size first)."""
    if isinstance(level, (int, np.integer)) and not isinstance(level, (bool, np.bool_)) \
            and 0 <= level < level_count:
        return int(level)
    if _is_empty(size):
        raise ArgumentError(f"'level' should be less than {level_count}")
    raise ArgumentError(f"Invalid level ({level}) in the request! (Should be < {level_count})")


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    try:
        return len(value) == 0
    except TypeError:
        return False


def _size_or_default(size: Any, default: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)``; cuCIM's default when empty, and sizes must be positive."""
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
    many = parse_locations(location)
    if isinstance(many, tuple):
        return np.array([many], np.int64)
    return many
