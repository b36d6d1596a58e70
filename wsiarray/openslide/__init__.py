"""openslide-python's API on top of wsiarray: porting a script is one import.

::

    # import openslide
    import wsiarray.openslide as openslide
    from wsiarray.openslide.deepzoom import DeepZoomGenerator

    with openslide.OpenSlide("slide.svs") as osr:
        print(osr.level_dimensions, osr.properties[openslide.PROPERTY_NAME_MPP_X])
        patch = osr.read_region((1000, 2000), 0, (512, 512))    # PIL RGBA image
        thumb = osr.get_thumbnail((512, 512))                    # PIL RGB image

Written from openslide-python's documentation and checked against openslide-python
1.4 with OpenSlide 4.0 (``tests/test_openslide_api.py``), not from its code. Needs
Pillow (``pip install 'wsiarray[openslide]'``); ``import wsiarray`` alone never
imports it.

What is mirrored:

- :class:`OpenSlide`, :class:`ImageSlide` (a PIL image, or a file PIL opens),
  :class:`AbstractSlide`, :func:`open_slide` (an :class:`OpenSlide`, or an
  :class:`ImageSlide` when the file is not a slide), :class:`OpenSlideCache`,
  the ``PROPERTY_NAME_*`` constants, :class:`OpenSlideError`,
  :class:`OpenSlideUnsupportedFormatError`, :class:`OpenSlideVersionError`;
- ``level_count``, ``dimensions``, ``level_dimensions``, ``level_downsamples``,
  ``get_best_level_for_downsample`` (the last level whose downsample is at most
  the argument, with no tolerance, as OpenSlide), ``properties`` (OpenSlide's
  keys and values: ``openslide.*``, ``tiff.*``, ``aperio.*``), ``associated_images``
  (a lazy mapping of RGBA images), ``color_profile`` and the ``icc_profile`` of
  every image returned, ``detect_format``;
- ``read_region(location, level, size)``: a PIL RGBA image, not premultiplied,
  ``(0, 0, 0, 0)`` outside the level and in tiles the file never wrote; a level
  out of range gives a transparent image, a negative size an :class:`OpenSlideError`;
- ``get_thumbnail(size)``: the best level for the scale, composited on
  ``openslide.background-color`` (white by default), shrunk with Lanczos;
- errors latch as in OpenSlide: once a read fails, every later call but ``close()``
  raises the same :class:`OpenSlideError`; a closed slide raises
  ``ctypes.ArgumentError("argument 1: ValueError: Passing closed slide object")``
  (our class is also a :class:`wsiarray.ClosedError`), and so does a second ``close()``.

Pixels of other sample types become 8-bit as OpenSlide shows them: ``uint16`` (and
wider unsigned integers) keep their high byte, signed integers are read as the
unsigned integers of the same bits (OpenSlide shows ``int8`` that way), grayscale is
replicated into R, G and B. Four or more channels: the first three are R, G, B and a
fourth channel of a 4-channel image is alpha as stored; floating-point samples are
refused (:class:`OpenSlideUnsupportedFormatError`).

Deliberate differences (see also ``docs/architecture.md``):

- wsiarray reads more files: WebP, zstd and OME-TIFF slides open here, where OpenSlide
  refuses them; ``detect_format`` then says ``"ome-tiff"`` or ``"generic-tiff"``.
  Levels are wsiarray's: transparency masks are not levels (OpenSlide counts them).
- ``openslide.quickhash-1`` is not provided: OpenSlide documents it only as "a hash of a
  subset of the slide data", and the subset is not documented. The check that makes
  OpenSlide refuse a file whose lowest level's tiles lie past the end of the file
  (it reads them to hash them) is made at open.
- A level-0 location that falls between two pixels of a downsampled level (``x /
  downsample`` not a whole number, e.g. any ``x`` but 0 on a level of downsample 4.0002):
  OpenSlide 4 renders the level shifted by the fraction, resampled (measured: within 1-2
  of a bilinear blend of the neighbouring pixels, but not equal to any rounding of one
  that we tried); wsiarray reads whole pixels at ``int(x / downsample)``, which is
  OpenSlide's answer whenever the location maps to a whole pixel or is negative. Deep Zoom
  tiles read from such levels differ the same way.
- ``detect_format`` returns None for files wsiarray cannot open, also where OpenSlide
  names the vendor of a file it then fails to open.
- The tile cache is process-wide in wsiarray: ``set_cache`` sets the process's cache
  (``wsiarray.cache("per_process", ...)``) to the :class:`OpenSlideCache`'s capacity.
- Associated images carry the ICC profile of their own TIFF page, if any.
- Error messages are wsiarray's (they name the file, level and tile).
"""

from __future__ import annotations

import abc
import ctypes
import operator
import os
import threading
from collections.abc import Iterator, Mapping
from io import BytesIO
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

try:
    from PIL import Image, ImageCms
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("wsiarray.openslide needs Pillow: pip install 'wsiarray[openslide]'") from exc

from .. import __version__ as _wsiarray_version
from ..cache import cache as _configure_cache
from ..errors import ArgumentError, ClosedError, FormatError, OpenError, UnsupportedError, WSIError
from ..slide import Slide

if TYPE_CHECKING:
    from ..formats import SlideInfo

__all__ = [
    "PROPERTY_NAME_BACKGROUND_COLOR",
    "PROPERTY_NAME_BARCODE",
    "PROPERTY_NAME_BOUNDS_HEIGHT",
    "PROPERTY_NAME_BOUNDS_WIDTH",
    "PROPERTY_NAME_BOUNDS_X",
    "PROPERTY_NAME_BOUNDS_Y",
    "PROPERTY_NAME_COMMENT",
    "PROPERTY_NAME_MPP_X",
    "PROPERTY_NAME_MPP_Y",
    "PROPERTY_NAME_OBJECTIVE_POWER",
    "PROPERTY_NAME_QUICKHASH1",
    "PROPERTY_NAME_VENDOR",
    "AbstractSlide",
    "ImageSlide",
    "OpenSlide",
    "OpenSlideCache",
    "OpenSlideError",
    "OpenSlideUnsupportedFormatError",
    "OpenSlideVersionError",
    "open_slide",
]

__version__ = _wsiarray_version
#: What openslide-python reports as the C library's version; here, the engine's.
__library_version__ = f"wsiarray {_wsiarray_version}"

PROPERTY_NAME_COMMENT = "openslide.comment"
PROPERTY_NAME_VENDOR = "openslide.vendor"
PROPERTY_NAME_QUICKHASH1 = "openslide.quickhash-1"
PROPERTY_NAME_BACKGROUND_COLOR = "openslide.background-color"
PROPERTY_NAME_OBJECTIVE_POWER = "openslide.objective-power"
PROPERTY_NAME_MPP_X = "openslide.mpp-x"
PROPERTY_NAME_MPP_Y = "openslide.mpp-y"
PROPERTY_NAME_BOUNDS_X = "openslide.bounds-x"
PROPERTY_NAME_BOUNDS_Y = "openslide.bounds-y"
PROPERTY_NAME_BOUNDS_WIDTH = "openslide.bounds-width"
PROPERTY_NAME_BOUNDS_HEIGHT = "openslide.bounds-height"
PROPERTY_NAME_BARCODE = "openslide.barcode"

#: wsiarray's own property keys that OpenSlide does not set.
_NOT_OPENSLIDE_KEYS = frozenset({"aperio.Header"})


class OpenSlideError(WSIError):
    """An OpenSlide operation failed; ``__cause__`` holds wsiarray's error when there is one.

    Example:
        >>> import wsiarray.openslide as openslide
        >>> issubclass(openslide.OpenSlideError, wsiarray.WSIError)
        True
    """


class OpenSlideUnsupportedFormatError(OpenSlideError):
    """The file is not a slide wsiarray can open (missing, not a TIFF, corrupt structure).

    Example:
        >>> import wsiarray.openslide as openslide
        >>> try:
        ...     openslide.OpenSlide("missing.svs")
        ... except openslide.OpenSlideUnsupportedFormatError as exc:
        ...     print(exc, "|", type(exc.__cause__).__name__)
        Unsupported or missing image file | OpenError
    """


class OpenSlideVersionError(OpenSlideError):
    """Kept for scripts that catch it; wsiarray never raises it."""


class _ClosedSlideError(ClosedError, ctypes.ArgumentError):
    """openslide-python's error for a closed slide (a ``ctypes.ArgumentError``), also a ``ClosedError``."""


class _ArgumentTypeError(ArgumentError, ctypes.ArgumentError):
    """A wrongly typed argument: ``ctypes.ArgumentError`` as in openslide-python, and an ``ArgumentError``."""


def _closed_error() -> _ClosedSlideError:
    return _ClosedSlideError("argument 1: ValueError: Passing closed slide object")


def _as_int(value: Any, position: int) -> int:
    # OpenSlide passes coordinates to C as int64: Python and NumPy integers only
    if isinstance(value, (bool, np.bool_)):
        raise _ArgumentTypeError(f"argument {position}: TypeError: wrong type")
    try:
        return operator.index(value)
    except TypeError:
        raise _ArgumentTypeError(f"argument {position}: TypeError: wrong type") from None


def _open_error(path: str, exc: WSIError) -> OpenSlideError:
    """OpenSlide's class for a file that does not open: unrecognised, or recognised but unreadable."""
    if isinstance(exc, UnsupportedError):
        return OpenSlideError(str(exc))  # a slide, with a feature we do not read (a codec, ...)
    if isinstance(exc, (OpenError, FormatError)):
        return OpenSlideUnsupportedFormatError("Unsupported or missing image file")
    return OpenSlideError(str(exc))


def _to_rgba(array: np.ndarray, inside: np.ndarray | None) -> np.ndarray:
    """An ``(h, w, c)`` array of any integer type as 8-bit RGBA; ``inside`` is the alpha mask (None: all)."""
    if array.dtype.kind == "f":
        raise OpenSlideUnsupportedFormatError("floating-point samples cannot be shown as RGBA")
    if array.dtype.kind == "i":
        array = array.view(array.dtype.str.replace("i", "u"))
    if array.dtype.itemsize > 1:
        array = (array >> (8 * array.dtype.itemsize - 8)).astype(np.uint8)
    height, width, channels = array.shape
    out = np.empty((height, width, 4), np.uint8)
    if channels < 3:
        out[..., :3] = array[..., :1]
    else:
        out[..., :3] = array[..., :3]
    if channels == 4:
        out[..., 3] = array[..., 3]
    elif channels == 2:
        out[..., 3] = array[..., 1]  # gray + alpha
    else:
        out[..., 3] = 255
    if inside is not None:
        out[~inside] = 0
    return out


def _attach_profile(image: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        image.info["icc_profile"] = icc
    return image


class AbstractSlide(metaclass=abc.ABCMeta):
    """The base of :class:`OpenSlide` and :class:`ImageSlide`: what every slide offers.

    Example:
        >>> import wsiarray.openslide as openslide
        >>> issubclass(openslide.OpenSlide, openslide.AbstractSlide)
        True
    """

    def __enter__(self) -> AbstractSlide:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False

    @classmethod
    @abc.abstractmethod
    def detect_format(cls, filename: str | bytes | os.PathLike[Any]) -> str | None:
        """The format vendor of ``filename``, or None when this class cannot open it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the slide."""

    @property
    @abc.abstractmethod
    def level_count(self) -> int:
        """The number of levels in the image."""

    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of each level, level 0 first."""

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    @abc.abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """The downsample of each level against level 0."""

    @property
    @abc.abstractmethod
    def properties(self) -> Mapping[str, str]:
        """Metadata about the image."""

    @property
    @abc.abstractmethod
    def associated_images(self) -> Mapping[str, Image.Image]:
        """Images associated with the slide (label, macro, thumbnail), by name."""

    @property
    def color_profile(self) -> ImageCms.ImageCmsProfile | None:
        """The slide's ICC profile, or None when it has none."""
        return None

    @abc.abstractmethod
    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The best level for displaying the given downsample."""

    @abc.abstractmethod
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """An RGBA image of ``size`` pixels of ``level`` at level-0 ``location``."""

    def set_cache(self, cache: OpenSlideCache) -> None:  # noqa: B027 (a no-op for slides without a cache)
        """Use ``cache`` for this slide's tiles (no-op here)."""

    def get_thumbnail(self, size: tuple[int, int]) -> Image.Image:
        """An RGB thumbnail fitting in ``size``, composited on the background colour.

        Example:
            >>> import wsiarray.openslide as openslide
            >>> with openslide.OpenSlide(path) as osr:
            ...     osr.get_thumbnail((256, 256)).size
            (256, 196)
        """
        width0, height0 = self.dimensions
        downsample = max(width0 / size[0], height0 / size[1])
        level = self.get_best_level_for_downsample(downsample)
        tile = self.read_region((0, 0), level, self.level_dimensions[level])
        background = "#" + self.properties.get(PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
        thumb = Image.new("RGB", tile.size, background)
        thumb.paste(tile, None, tile)
        thumb.thumbnail(size, Image.Resampling.LANCZOS)
        return _attach_profile(thumb, tile.info.get("icc_profile"))


class _SlideMap(Mapping[str, Any]):
    """A read-only mapping that checks its slide on every access (after ``close()`` it raises)."""

    def __init__(self, osr: OpenSlide) -> None:
        self._osr = osr

    def _keys(self) -> list[str]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {dict(self)!r}>"


class _PropertyMap(_SlideMap):
    def _keys(self) -> list[str]:
        return list(self._osr._openslide_properties())

    def __getitem__(self, key: str) -> str:
        return self._osr._openslide_properties()[key]


class _AssociatedImageMap(_SlideMap):
    def _keys(self) -> list[str]:
        return self._osr._associated_names()

    def __getitem__(self, key: str) -> Image.Image:
        return self._osr._associated_image(key)


class OpenSlide(AbstractSlide):
    """An open whole-slide image, read by wsiarray.

    ``filename`` is a path (``str``, ``bytes`` or path-like), or a URL with
    ``storage_options`` (wsiarray's addition; see :func:`wsiarray.open`). Opening a file that is
    not a slide raises :class:`OpenSlideUnsupportedFormatError`; a slide wsiarray
    recognises but cannot read raises :class:`OpenSlideError`.

    Example:
        >>> import wsiarray.openslide as openslide
        >>> osr = openslide.OpenSlide(svs_path)
        >>> osr.level_count, osr.dimensions, osr.properties[openslide.PROPERTY_NAME_VENDOR]
        (2, (1024, 768), 'aperio')
        >>> region = osr.read_region((1000, 700), 0, (64, 64))
        >>> region.mode, region.size, region.getpixel((63, 63))  # past the edge: transparent
        ('RGBA', (64, 64), (0, 0, 0, 0))
        >>> sorted(osr.associated_images)
        ['label', 'macro', 'thumbnail']
        >>> osr.close()
    """

    def __init__(self, filename: str | bytes | os.PathLike[Any], *,
                 storage_options: dict[str, Any] | None = None) -> None:
        self._filename = filename
        self._slide: Slide | None = None
        self._error: str | None = None  # the message of the error that latched
        path = os.fsdecode(os.fspath(filename))
        try:
            slide = Slide(path, storage_options=storage_options)
        except WSIError as exc:
            raise _open_error(path, exc) from exc
        try:
            info = slide.format_info
            if info.levels[0].dtype.kind == "f":
                raise OpenSlideUnsupportedFormatError(f"{path}: floating-point samples are not shown as RGBA")
            _check_lowest_level(slide.path, info, slide.identity[2])
        except BaseException:
            slide.close()
            raise
        self._slide = slide
        self._info: SlideInfo = info
        self._properties = {key: value for key, value in info.properties.items()
                            if key not in _NOT_OPENSLIDE_KEYS}
        self._associated_cache: dict[str, Image.Image] = {}
        self._lock = threading.Lock()
        self._profile: ImageCms.ImageCmsProfile | None = None
        self._levels = tuple(slide.level_dimensions)
        self._downsamples = tuple(slide.level_downsamples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._filename!r})"

    @classmethod
    def detect_format(cls, filename: str | bytes | os.PathLike[Any]) -> str | None:
        """The vendor of the slide (``"aperio"``, ``"generic-tiff"``, ``"ome-tiff"``) or None.

        Example:
            >>> import wsiarray.openslide as openslide
            >>> openslide.OpenSlide.detect_format(svs_path), openslide.OpenSlide.detect_format("x.png")
            ('aperio', None)
        """
        try:
            with Slide(os.fsdecode(os.fspath(filename))) as slide:
                return slide.vendor
        except WSIError:
            return None

    # -- state ---------------------------------------------------------------------

    def _live(self) -> Slide:
        """The wsiarray handle, after the checks every call makes: closed, latched error."""
        if self._slide is None:
            raise _closed_error()
        if self._error is not None:
            raise OpenSlideError(self._error)
        return self._slide

    def _latch(self, exc: WSIError) -> OpenSlideError:
        # OpenSlide's latching errors: the first failure is the answer to every later call
        self._error = str(exc)
        return OpenSlideError(self._error)

    def close(self) -> None:
        """Close the slide; a second ``close()`` raises, as in openslide-python."""
        if self._slide is None:
            raise _closed_error()
        slide, self._slide = self._slide, None
        slide.close()

    # -- description ---------------------------------------------------------------

    @property
    def level_count(self) -> int:
        """The number of levels."""
        self._live()
        return len(self._levels)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of each level."""
        self._live()
        return self._levels

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each level, ``(w0/w + h0/h) / 2`` as OpenSlide computes it."""
        self._live()
        return self._downsamples

    @property
    def properties(self) -> Mapping[str, str]:
        """OpenSlide's properties (``openslide.*``, ``tiff.*``, vendor keys), read on access."""
        return _PropertyMap(self)

    def _openslide_properties(self) -> dict[str, str]:
        self._live()
        return self._properties

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        """Associated images as RGBA PIL images, decoded on first access.

        Example:
            >>> import wsiarray.openslide as openslide
            >>> with openslide.OpenSlide(svs_path) as osr:
            ...     osr.associated_images["label"].size
            (100, 80)
        """
        return _AssociatedImageMap(self)

    def _associated_names(self) -> list[str]:
        self._live()
        return sorted(self._info.associated)

    def _associated_image(self, name: str) -> Image.Image:
        slide = self._live()
        if name not in self._info.associated:
            raise KeyError(name)
        with self._lock:
            if name not in self._associated_cache:
                try:
                    array = slide.associated_images[name]
                except WSIError as exc:
                    raise self._latch(exc) from exc
                image = Image.fromarray(_to_rgba(np.asarray(array), None), "RGBA")
                self._associated_cache[name] = image
            image = self._associated_cache[name].copy()  # callers may draw on theirs
        return _attach_profile(image, self._info.associated_icc_profiles.get(name))

    @property
    def color_profile(self) -> ImageCms.ImageCmsProfile | None:
        """The ICC profile of level 0 (TIFF tag InterColorProfile), or None.

        Example:
            >>> import wsiarray.openslide as openslide
            >>> openslide.OpenSlide(path).color_profile is None
            True
        """
        icc = self._info.icc_profile
        if icc is None:
            return None
        if self._profile is None:
            self._profile = ImageCms.getOpenProfile(BytesIO(icc))
        return self._profile

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The last level whose downsample is at most ``downsample`` (0 below level 1's).

        Example:
            >>> import wsiarray.openslide as openslide
            >>> openslide.OpenSlide(path).get_best_level_for_downsample(3.9)
            1
        """
        self._live()
        return _best_level(self._downsamples, downsample)

    def set_cache(self, cache: OpenSlideCache) -> None:
        """Make ``cache`` the process's tile cache (wsiarray has one cache per process).

        Example:
            >>> import wsiarray.openslide as openslide
            >>> osr = openslide.OpenSlide(path)
            >>> osr.set_cache(openslide.OpenSlideCache(64 << 20))
            >>> wsiarray.cache().type, wsiarray.cache().memory_capacity >> 20
            ('per_process', 64)
        """
        if not isinstance(cache, OpenSlideCache):
            raise TypeError("Not a cache object")
        self._live()
        cache._install()

    # -- pixels --------------------------------------------------------------------

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """An RGBA image of ``size`` pixels of ``level``, its top left at level-0 ``location``.

        Pixels outside the level and in tiles the file never wrote are ``(0, 0, 0, 0)``.

        Example:
            >>> import wsiarray.openslide as openslide
            >>> osr = openslide.OpenSlide(path)
            >>> osr.read_region((-8, 0), 1, (16, 16)).getpixel((0, 0))
            (0, 0, 0, 0)
        """
        slide = self._live()
        x, y = _as_int(location[0], 3), _as_int(location[1], 4)
        level = _as_int(level, 5)
        width, height = _as_int(size[0], 6), _as_int(size[1], 7)
        if width < 0 or height < 0:
            raise OpenSlideError(f"negative width ({width}) or negative height ({height}) not allowed")
        icc = self._info.icc_profile
        if not 0 <= level < len(self._levels) or width == 0 or height == 0:
            return _attach_profile(Image.new("RGBA", (width, height), (0, 0, 0, 0)), icc)
        # OpenSlide's level coordinates: the level-0 location divided by the downsample,
        # truncated toward zero (not floored: -1 at a 2x level is column 0)
        downsample = self._downsamples[level]
        x, y = int(x / downsample), int(y / downsample)
        try:
            array = slide.read_level_region(level, (x, y), (width, height), fill=0)
        except WSIError as exc:
            raise self._latch(exc) from exc
        inside = _present_mask(self._info, level, x, y, width, height)
        return _attach_profile(Image.fromarray(_to_rgba(array, inside), "RGBA"), icc)


def _best_level(downsamples: tuple[float, ...], downsample: float) -> int:
    # OpenSlide's rule, no tolerance; NaN compares false everywhere and gives the last level
    for index in range(1, len(downsamples)):
        if downsample < downsamples[index]:
            return index - 1
    return len(downsamples) - 1


def _check_lowest_level(path: str, info: SlideInfo, file_size: int) -> None:
    """Refuse a slide whose lowest level has tiles past the end of the file, as OpenSlide does at open."""
    level = info.levels[-1]
    ends = level.offsets.astype(np.uint64) + level.bytecounts.astype(np.uint64)
    if ends.size and int(ends.max()) > file_size:
        raise OpenSlideError(f"{path}: tiles of level {len(info.levels) - 1} lie past the end of the file")


def _present_mask(info: SlideInfo, level: int, x: int, y: int, width: int, height: int) -> np.ndarray | None:
    """Where the region ``(width, height)`` at ``(x, y)`` of ``level`` shows pixels of the level.

    None when it all does. Outside the level and in tiles never written
    (offset and byte count 0) the answer is False.
    """
    return info.levels[level].present(x, y, width, height)


class OpenSlideCache:
    """A tile cache of ``capacity`` bytes; :meth:`OpenSlide.set_cache` makes it the process's cache.

    wsiarray keeps one tile cache per process: ``set_cache`` configures it as
    ``wsiarray.cache("per_process", memory_capacity=<capacity in MiB, rounded up>)``
    (``"nocache"`` for a capacity of 0). Slides that share an ``OpenSlideCache`` share
    the process's cache without resetting it.

    Example:
        >>> import wsiarray.openslide as openslide
        >>> openslide.OpenSlideCache(256 << 20)
        OpenSlideCache(268435456)
    """

    _installed: tuple[OpenSlideCache, Any] | None = None  # (cache, wsiarray's TileCache) set last

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
            raise _ArgumentTypeError("argument 1: TypeError: Incorrect type")
        if capacity < 0:
            raise _ArgumentTypeError("argument 1: ValueError: Value out of range")
        self._capacity = int(capacity)

    def __repr__(self) -> str:
        return f"OpenSlideCache({self._capacity})"

    def _install(self) -> None:
        installed = OpenSlideCache._installed
        if installed is not None and installed[0] is self and installed[1] is _configure_cache():
            return  # already the process's cache: keep its tiles
        if self._capacity == 0:
            tile_cache = _configure_cache("nocache")
        else:
            mib = max(1, -(-self._capacity // (1 << 20)))  # rounded up
            tile_cache = _configure_cache("per_process", memory_capacity=mib)
        OpenSlideCache._installed = (self, tile_cache)


class ImageSlide(AbstractSlide):
    """A plain image (a PIL image, or a file PIL opens) with the slide API: one level.

    Example:
        >>> import wsiarray.openslide as openslide
        >>> from PIL import Image
        >>> islide = openslide.ImageSlide(Image.new("RGB", (40, 30), (10, 20, 30)))
        >>> islide.dimensions, islide.read_region((30, 0), 0, (20, 2)).getpixel((15, 0))
        ((40, 30), (0, 0, 0, 0))
    """

    def __init__(self, file: str | bytes | os.PathLike[Any] | Image.Image) -> None:
        self._file_arg = file
        if isinstance(file, Image.Image):
            self._close = False
            self._image: Image.Image | None = file
        else:
            self._close = True
            self._image = Image.open(file)
        self._profile: ImageCms.ImageCmsProfile | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._file_arg!r})"

    @classmethod
    def detect_format(cls, filename: str | bytes | os.PathLike[Any]) -> str | None:
        """The PIL format name of the file (``"PNG"``, ``"TIFF"``, ...) or None.

        Example:
            >>> import wsiarray.openslide as openslide
            >>> openslide.ImageSlide.detect_format(path)
            'TIFF'
        """
        try:
            with Image.open(filename) as image:
                return image.format
        except OSError:
            return None

    def _live(self) -> Image.Image:
        if self._image is None:
            raise ClosedError("Cannot read from a closed slide")
        return self._image

    def close(self) -> None:
        """Close the image (if this slide opened it)."""
        if self._close and self._image is not None:
            self._image.close()
        self._image = None

    @property
    def level_count(self) -> int:
        """Always 1."""
        self._live()
        return 1

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``((width, height),)``."""
        return (self._live().size,)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """``(1.0,)``."""
        self._live()
        return (1.0,)

    @property
    def properties(self) -> Mapping[str, str]:
        """Empty."""
        self._live()
        return {}

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        """Empty."""
        self._live()
        return {}

    @property
    def color_profile(self) -> ImageCms.ImageCmsProfile | None:
        """The image's embedded ICC profile, or None."""
        icc = self._live().info.get("icc_profile")
        if not icc:
            return None
        if self._profile is None:
            self._profile = ImageCms.getOpenProfile(BytesIO(icc))
        return self._profile

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """Always 0."""
        self._live()
        return 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """An RGBA crop of the image; transparent outside it."""
        image = self._live()
        if level != 0:
            raise OpenSlideError("Invalid level")
        if size[0] < 0 or size[1] < 0:
            raise OpenSlideError(f"Size {tuple(size)} must be non-negative")
        tile = Image.new("RGBA", tuple(size), (0, 0, 0, 0))
        x, y = location
        left, top = max(0, x), max(0, y)
        right = min(image.size[0], x + size[0])
        bottom = min(image.size[1], y + size[1])
        if right > left and bottom > top:
            crop = image.crop((left, top, right, bottom)).convert("RGBA")
            tile.paste(crop, (left - x, top - y))
        return _attach_profile(tile, image.info.get("icc_profile"))


def open_slide(filename: str | bytes | os.PathLike[Any]) -> OpenSlide | ImageSlide:
    """An :class:`OpenSlide`, or an :class:`ImageSlide` when the file is not a slide.

    Example:
        >>> import wsiarray.openslide as openslide
        >>> openslide.open_slide(svs_path)
        OpenSlide('...small.svs')
    """
    try:
        return OpenSlide(filename)
    except OpenSlideUnsupportedFormatError:
        return ImageSlide(filename)
