"""`Slide`: an open whole-slide image and its OpenSlide-style read API.

A `Slide` is a thin handle over a shared, per-process *reader*: the tables
the format layer built (:mod:`wsiarray.formats`) loaded into the native
engine.  Handles pickle as recipes (path, file identity, options) and reopen
lazily where they are unpickled, so they travel to thread pools, spawned
processes and dask workers without special care.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from . import _native
from ._handles import manager
from ._icc import SrgbTransform, apply_srgb, srgb_transform
from ._memory import empty_output
from ._progress import Progress, row_bands
from ._reader import FileIdentity, Level, OpenedSlide
from ._remote import RemoteSource
from ._request import (
    DEFAULT_FILE_ACCESS,
    DctLike,
    FillLike,
    MppLike,
    MppTarget,
    check_request_size,
    dct_code,
    icc_mode,
    mpp_target,
    parse_apply_icc,
    parse_batch_options,
    parse_dct,
    parse_device,
    parse_file_access,
    parse_fill,
    parse_level,
    parse_location,
    parse_locations,
    parse_progress,
    parse_size,
    parse_source,
    parse_workers,
    to_level,
    to_level_locations,
)
from .batch import BatchIterator
from .errors import ArgumentError, ClosedError

if TYPE_CHECKING:
    import dask.array
    import xarray

    from .formats import SlideInfo

__all__ = ["DEFAULT_FILL", "FileIdentity", "Level", "Slide", "open", "read_regions"]

#: Value of pixels outside the image, per sample, unless ``fill=`` says otherwise.
#: 0 matches tifffile's padding and OpenSlide's colour channels.
DEFAULT_FILL = 0

class _DefaultLevel(int):
    """Level 0 when ``level`` is not given: told apart from an explicit 0 (not with ``mpp=``)."""

    def __repr__(self) -> str:
        return "0"


#: The default of ``level=``: 0, but ``mpp=`` can tell that it was not given.
DEFAULT_LEVEL: int = _DefaultLevel(0)

#: A location: ``(x, y)`` in level-0 pixels.
Location = tuple[int, int] | Sequence[int] | np.ndarray
#: Many locations: pairs, an ``(N, 2)`` array, a generator, or a flat ``[x0, y0, ...]``.
Locations = Sequence[Sequence[int]] | np.ndarray | Iterator[Sequence[int]]


class Slide:
    """An open whole-slide image; use :func:`wsiarray.open` to make one.

    Coordinates follow OpenSlide and cuCIM: ``location`` is ``(x, y)`` in
    level-0 pixels, ``size`` is ``(width, height)`` in the chosen level's
    pixels, and arrays come back as ``(height, width, channels)`` of the
    slide's :attr:`dtype`; bilevel (1 bit per sample) images come back as
    ``uint8`` 0 or 1, the stored bit (tifffile's ``bool`` values; a
    WhiteIsZero image's 0 is white).

    A handle holds no open file: the process's handle manager
    (:func:`wsiarray.file_handles`) opens the file once, shares it with every
    handle, dask task and xarray array of the same file, and closes and
    reopens it when more files are in use than it keeps open.

    Example:
        >>> with wsiarray.open(path) as slide:
        ...     patch = slide.read_region((100, 100), (256, 256), level=0)
        >>> patch.shape
        (256, 256, 3)
    """

    def __init__(self, path: str | os.PathLike[str], *, fill: FillLike = None,
                 apply_icc: bool = False, file_access: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        self._path = parse_source(path, storage_options)
        apply_icc = parse_apply_icc(apply_icc, False)
        file_access = parse_file_access(file_access)
        if isinstance(self._path, RemoteSource) and file_access != DEFAULT_FILE_ACCESS:
            raise ArgumentError(f"file_access applies to local files; {self._path} is a URL")
        opened = manager.acquire(self._path, None, file_access)
        self._setup(opened.identity, fill, apply_icc, file_access)
        self._checked = True
        if fill is not None:
            self._fill_bytes(None)  # a bad fill is refused when the slide is opened
        if apply_icc:
            self._transform(opened, None)  # so is a profile that cannot be applied

    def _setup(self, identity: FileIdentity, fill: FillLike, apply_icc: bool, file_access: str) -> None:
        self._identity: FileIdentity = tuple(identity)  # type: ignore[assignment]
        self._fill = fill
        self._apply_icc = apply_icc
        self._file_access = file_access
        self._default_fill: bytes | None = None  # the fill pixel's bytes, made on first use
        self._closed = False
        manager.retain(self._path, self._identity, file_access)
        # A handle that is dropped unclosed leaves the file open for the next one.
        self._finalizer = weakref.finalize(self, manager.release, self._path, self._identity, file_access,
                                           close=False)

    @classmethod
    def _from_recipe(cls, path: str, identity: FileIdentity, fill: FillLike,
                     apply_icc: bool = False, file_access: str | None = None) -> Slide:
        # Opens nothing: the file is opened (or found open) on first use, so a
        # process that only passes the handle along never touches the file.
        slide = cls.__new__(cls)
        slide._path = path
        slide._setup(identity, fill, apply_icc, parse_file_access(file_access))
        slide._checked = False  # the file's identity is checked on first use
        return slide

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Release this handle; the file closes once no open handle in the process uses it.

        Example:
            >>> s = wsiarray.open(path); s.close(); s
            <wsiarray.Slide ... closed>
        """
        if not self._closed:
            self._closed = True
            self._finalizer.detach()
            manager.release(self._path, self._identity, self._file_access, close=True)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # A recipe, not a handle: reopened (and shared) where it is unpickled.
        if self._closed:
            raise ClosedError(f"{self._path}: a closed slide cannot be pickled")
        recipe = (self._path, self._identity, self._fill, self._apply_icc, self._file_access)
        return (Slide._from_recipe, recipe)

    def __copy__(self) -> Slide:
        """A new handle on the same file: closing either leaves the other open."""
        if self._closed:
            raise ClosedError(f"{self._path}: slide is closed")
        twin = Slide._from_recipe(self._path, self._identity, self._fill, self._apply_icc, self._file_access)
        twin._checked = self._checked
        return twin

    def __repr__(self) -> str:
        if self._closed:
            return f"<wsiarray.Slide {self._path!r} closed>"
        return f"<wsiarray.Slide {self._path!r}>"

    def _opened(self) -> OpenedSlide:
        if self._closed:
            raise ClosedError(f"{self._path}: slide is closed")
        if self._checked:
            return manager.acquire(self._path, self._identity, self._file_access)
        opened = manager.acquire(self._path, self._identity, self._file_access, check=True)
        self._checked = True
        return opened

    # -- description ---------------------------------------------------------------

    @property
    def path(self) -> str:
        """Absolute path of the file, or the slide's URL (a ``str`` carrying its storage options)."""
        return self._path

    @property
    def remote(self) -> bool:
        """Whether the slide is read from a URL (object storage, HTTP) rather than a local file.

        Example:
            >>> wsiarray.open(path).remote
            False
        """
        return isinstance(self._path, RemoteSource)

    @property
    def identity(self) -> FileIdentity:
        """``(st_dev, st_ino, st_size, st_mtime_ns)`` of the file when it was opened."""
        return self._identity

    @property
    def file_access(self) -> str:
        """How the native engine reads this file: ``"pread"``, ``"mmap"``, ``"direct"`` or ``"preload"``.

        Set with ``wsiarray.open(path, file_access=...)``; it travels with pickles
        and copies of the handle.

        Example:
            >>> wsiarray.open(path, file_access="mmap").file_access
            'mmap'
        """
        return self._file_access

    @property
    def vendor(self) -> str:
        """OpenSlide's vendor name: ``"aperio"``, ``"generic-tiff"`` or ``"ome-tiff"``."""
        return self._opened().info.vendor

    @property
    def levels(self) -> tuple[Level, ...]:
        """Every pyramid level, largest first."""
        return self._opened().levels

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self._opened().levels)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of each level."""
        return tuple(level.dimensions for level in self._opened().levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each level against level 0, ``(w0/w + h0/h) / 2`` as OpenSlide computes it."""
        return tuple(level.downsample for level in self._opened().levels)

    @property
    def level_tile_sizes(self) -> tuple[tuple[int, int], ...]:
        """``(tile_width, tile_height)`` of each level (strips count as full-width tiles)."""
        return tuple(level.tile_size for level in self._opened().levels)

    @property
    def dtype(self) -> np.dtype:
        """Sample type of every level, in native byte order (``uint8`` 0/1 for bilevel images)."""
        return self._opened().dtype

    @property
    def channels(self) -> int:
        """Samples per pixel in the arrays this slide returns (alpha included)."""
        return self._opened().channels

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of level 0."""
        opened = self._opened()
        level0 = opened.levels[0]
        return (level0.height, level0.width, opened.channels)

    @property
    def dims(self) -> tuple[str, str, str]:
        """Names of the array axes: ``("y", "x", "c")``."""
        return ("y", "x", "c")

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Names of the channels (``R, G, B[, A]`` for colour slides)."""
        opened = self._opened()
        if opened.info.channel_names:
            return tuple(opened.info.channel_names)
        channels = opened.channels
        return {1: ("Y",), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}.get(
            channels, tuple(f"C{i}" for i in range(channels))
        )

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Level-0 pixel size ``(x, y)`` in micrometres, or None when the file does not say."""
        return self._opened().info.mpp

    @property
    def objective_power(self) -> float | None:
        """Scanner objective magnification, or None when the file does not say."""
        return self._opened().info.objective_power

    @property
    def properties(self) -> Mapping[str, str]:
        """Metadata with OpenSlide's keys (``openslide.mpp-x``, ...) beside the vendor's own."""
        return self._opened().info.properties

    @property
    def format_info(self) -> SlideInfo:
        """What the format layer found: levels' tile tables, properties, associated images.

        Example:
            >>> slide.format_info.vendor
            'generic-tiff'
        """
        return self._opened().info

    @property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        """Associated images by name (``thumbnail``, ``label``, ``macro``), decoded on first access.

        On a handle opened with ``apply_icc=True``, an image whose page has an ICC
        profile of its own (:attr:`associated_icc_profiles`) comes back in sRGB; the
        others as stored.
        """
        opened = self._opened()
        if self._apply_icc and opened.info.associated_icc_profiles:
            return _SrgbAssociatedImages(opened.associated, opened.info.associated_icc_profiles, self._path)
        return opened.associated

    @property
    def apply_icc(self) -> bool:
        """Whether reads of this handle return sRGB pixels unless told otherwise (``open(apply_icc=)``)."""
        return self._apply_icc

    @property
    def icc_profile(self) -> bytes | None:
        """The slide's ICC profile (TIFF tag InterColorProfile, 34675, of level 0), or None.

        Every level is read with this profile when ``apply_icc=True``, as OpenSlide
        attaches level 0's profile to every region. The bytes open with
        ``PIL.ImageCms.ImageCmsProfile(io.BytesIO(profile))``.

        Example:
            >>> slide.icc_profile is None
            True
            >>> profile = b"any ICC profile bytes"
            >>> tifffile.imwrite("icc.tif", np.zeros((64, 64, 3), np.uint8), tile=(32, 32),
            ...                  extratags=[(34675, 7, len(profile), profile, True)])
            >>> wsiarray.open("icc.tif").icc_profile
            b'any ICC profile bytes'
        """
        return self._opened().info.icc_profile

    @property
    def associated_icc_profiles(self) -> Mapping[str, bytes]:
        """The ICC profiles of associated images whose own page has one, by name.

        Example:
            >>> wsiarray.open(svs_path).associated_icc_profiles
            {}
        """
        return dict(self._opened().info.associated_icc_profiles)

    # -- pixels --------------------------------------------------------------------

    @overload
    def read_region(
        self, location: Location, size: tuple[int, int], level: int = DEFAULT_LEVEL, *, fill: FillLike = None,
        num_workers: int = 0, device: str = "cpu", apply_icc: bool | None = None, mpp: MppLike = None,
        dct: DctLike = True, progress: bool | None = False,
    ) -> np.ndarray: ...

    @overload
    def read_region(
        self, location: None = None, size: None = None, level: int = DEFAULT_LEVEL, *, fill: FillLike = None,
        num_workers: int = 0, device: str = "cpu", apply_icc: bool | None = None, mpp: MppLike = None,
        dct: DctLike = True, progress: bool | None = False,
    ) -> np.ndarray: ...

    @overload
    def read_region(
        self, location: Locations, size: tuple[int, int], level: int = DEFAULT_LEVEL, *,
        fill: FillLike = None,
        num_workers: int = 0, batch_size: int = 1, drop_last: bool = False, prefetch_factor: int = 2,
        shuffle: bool = False, seed: int = 0, device: str = "cpu", apply_icc: bool | None = None,
        mpp: MppLike = None, dct: DctLike = True, progress: bool | None = False,
    ) -> BatchIterator: ...

    def read_region(
        self,
        location: Any = None,
        size: Any = None,
        level: int = DEFAULT_LEVEL,
        *,
        fill: FillLike = None,
        num_workers: int = 0,
        batch_size: int = 1,
        drop_last: bool = False,
        prefetch_factor: int = 2,
        shuffle: bool = False,
        seed: int = 0,
        device: str = "cpu",
        apply_icc: bool | None = None,
        mpp: MppLike = None,
        dct: DctLike = True,
        progress: bool | None = False,
    ) -> np.ndarray | BatchIterator:
        """Read ``size`` pixels of ``level`` at level-0 ``location``: one region, many, or the level.

        - One location ``(x, y)``: returns an ``(h, w, c)`` array.
        - Many locations (list, tuple, generator, ``(N, 2)`` array, or a flat
          ``[x0, y0, x1, y1, ...]``): returns a :class:`~wsiarray.BatchIterator`
          over ``(batch_size, h, w, c)`` arrays, decoded ``prefetch_factor`` batches
          ahead; ``shuffle``/``seed``/``drop_last`` as in PyTorch's DataLoader.
        - No location and no size: the whole level.

        The argument order ``(location, size, level)`` is OpenSlide's and cuCIM's.
        Level-0 locations map to the level with OpenSlide's rule
        ``floor(x / downsample)``. Pixels outside the image are ``fill`` (a scalar
        or one value per channel; default :data:`DEFAULT_FILL`). ``num_workers``
        threads of the process's native pool decode each request (0 or 1: the
        calling thread). The GIL is released while tiles are read and decoded.

        ``apply_icc=True`` returns sRGB pixels: the slide's ICC profile
        (:attr:`icc_profile`) is applied with littleCMS to the whole output once
        (each batch as a whole), after decoding; ``None`` means the handle's
        setting (``wsiarray.open(path, apply_icc=...)``, default False). A slide
        without a profile is returned unchanged. Needs Pillow (``wsiarray[icc]``)
        and uint8 RGB or RGBA pixels.

        ``mpp`` (micrometres per output pixel, a number or ``(x, y)``; not with
        ``level``) reads at a target resolution: ``size`` is then in output pixels
        and each output pixel is the area average of the level-0 area it covers,
        read from the coarsest level no coarser than the target and downsampled the
        rest of the way (a level of exactly that pixel size is read directly). With
        ``dct=True`` JPEG tiles are decoded at 1/2, 1/4 or 1/8 size by libjpeg when
        the rest is a factor of 2 or more (faster, slightly less exact); ``dct="snap"``
        also moves a region off the DCT block grid onto it (by at most half an output
        pixel) so that it can be decoded smaller; see
        ``docs/architecture.md``, "Reads at a target resolution". No location and
        no size reads the whole slide at ``mpp``.

        ``device="cuda"`` (the current GPU) or ``"cuda:N"`` returns CuPy arrays (batches:
        ``(batch_size, h, w, c)`` CuPy arrays): JPEG tiles are decoded by nvImageCodec on
        the GPU straight into the output, other codecs on the CPU and copied up once per
        request (``mpp`` and ``apply_icc`` reads too); see the GPU guide. It needs
        ``pip install 'wsiarray[cuda12]'`` (or ``[cuda13]``); without a usable GPU it
        raises :class:`~wsiarray.GPUUnavailableError`.

        ``progress=True`` shows a progress bar (in a notebook, or on stderr) while
        one region or a whole level is read: the read is then done in bands of
        whole tile rows, about 100 at most, with the same pixels; ``None`` shows
        it when stderr is a terminal. Batches refuse ``progress=True`` (iterate
        them with a bar of your own).

        Example:
            >>> slide.read_region((0, 0), (512, 512), level=1).shape
            (512, 512, 3)
            >>> slide.read_region((100, 100), (64, 48), mpp=0.7).shape
            (48, 64, 3)
            >>> for batch in slide.read_region([(0, 0), (224, 0)], (224, 224), batch_size=2):
            ...     batch.shape
            (2, 224, 224, 3)
        """
        opened = self._opened()
        target: MppTarget | None = None
        if mpp is not None:
            given = None if level is DEFAULT_LEVEL else level
            target = mpp_target(mpp, opened.info.mpp, [lv.dimensions for lv in opened.levels], given)
            dct = parse_dct(dct)
            level = target.level
        else:
            level = parse_level(0 if level is DEFAULT_LEVEL else level, len(opened.levels))
        workers = parse_workers(num_workers)
        if device != "cpu":
            device = parse_device(device)
        show = progress is not False and parse_progress(progress)
        transform = self._transform(opened, apply_icc)
        if location is None and size is None:
            if target is not None and not target.exact:
                return _on_device(self._read_at(opened, target, 0.0, 0.0, target.shape, fill, workers, dct,
                                                None, transform, show), device)
            width, height = opened.levels[level].dimensions
            return self._read(opened, level, 0, 0, width, height, fill, workers, None, transform, show,
                              device)
        if type(location) is tuple and len(location) == 2 and type(location[0]) is int \
                and type(location[1]) is int:
            many: tuple[int, int] | np.ndarray = location  # the common case, kept cheap
        else:
            many = parse_locations(location)
        width, height = parse_size(size)
        downsample = opened.levels[level].downsample
        if isinstance(many, tuple):
            if target is not None and not target.exact:
                lx, ly = target.level_xy(many[0], many[1])
                return _on_device(self._read_at(opened, target, lx, ly, (width, height), fill, workers, dct,
                                                None, transform, show), device)
            x, y = to_level(many[0], many[1], downsample)
            return self._read(opened, level, x, y, width, height, fill, workers, None, transform, show,
                              device)
        if show and progress is not None:  # None ("when stderr is a terminal") just shows nothing here
            raise ArgumentError("progress= is for one region or a whole level; a batch iterator yields "
                                "batch by batch, so wrap it in a progress bar of your own")
        count = len(many)
        batch_size, prefetch_factor = parse_batch_options(batch_size, prefetch_factor)
        return BatchIterator(
            [(self._path, self._identity, self._file_access)], np.zeros(count, np.int64),
            np.full(count, level, np.int64),
            to_level_locations(many, downsample), (width, height),
            fill=self._fill_bytes(fill), channels=opened.channels, dtype=opened.dtype,
            num_workers=workers, batch_size=batch_size, drop_last=drop_last,
            prefetch_factor=prefetch_factor, shuffle=shuffle, seed=seed, transforms=[transform],
            resample=None if target is None else _resample_coords(target, many, downsample), dct=dct,
            device=device,
        )

    def read_level_region(
        self,
        level: int,
        location: tuple[int, int],
        size: tuple[int, int],
        *,
        fill: FillLike = None,
        num_workers: int = 0,
        out: np.ndarray | None = None,
        apply_icc: bool | None = None,
        device: str = "cpu",
    ) -> np.ndarray:
        """Like :meth:`read_region`, but ``location`` is in the level's own pixels.

        This is what tile-aligned consumers (dask chunks, xarray indexing) use:
        no rounding through level-0 coordinates. ``out``, a C-contiguous writable
        ``(h, w, c)`` array of the slide's dtype, receives the pixels instead of a
        new array (reusing one saves the page faults of fresh memory).
        ``apply_icc`` and ``device`` as in :meth:`read_region` (``out`` is transformed in
        place; it is a host array, so not with ``device="cuda"``).

        Example:
            >>> slide.read_level_region(1, (128, 0), (128, 128)).shape
            (128, 128, 3)
        """
        opened = self._opened()
        level = parse_level(level, len(opened.levels))
        x, y = parse_location(location)
        width, height = parse_size(size)
        workers = parse_workers(num_workers)
        if device != "cpu":
            device = parse_device(device)
        transform = self._transform(opened, apply_icc)
        return self._read(opened, level, x, y, width, height, fill, workers, out, transform, device=device)

    def _read(self, opened: OpenedSlide, level: int, x: int, y: int, width: int, height: int,
              fill: FillLike, workers: int, out: np.ndarray | None,
              transform: SrgbTransform | None, progress: bool = False, device: str = "cpu") -> Any:
        """The one single-region read every entry point ends in: level pixels into ``out``.

        With ``progress``, the region is read in bands of whole tile rows (one
        native call each, so no tile is decoded twice) and a bar counts the rows.
        A GPU ``device`` decodes JPEG levels with nvImageCodec into a new device
        array (``wsiarray._cuda``); a transform or a progress bar reads on the CPU
        and copies the result up once.
        """
        if device != "cpu":
            from ._cuda import read_requests, resolve, upload

            if out is not None:
                raise ArgumentError("out= is a host array: it cannot receive a device='cuda' read")
            target = resolve(device)
            if transform is not None or progress:
                return upload(self._read(opened, level, x, y, width, height, fill, workers, None, transform,
                                         progress), target)
            check_request_size(1, width, height, opened.channels, opened.dtype)
            return read_requests(target, [(opened.native, level, x, y)], width, height,
                                 self._fill_bytes(fill), opened.dtype, opened.channels, workers)[0]
        fill_bytes = self._fill_bytes(fill)
        out = _output(opened, width, height, out)
        if out.size:
            pixels = out.view(np.uint8).reshape(height, width, -1)
            if not progress:
                opened.native.read_region(level, x, y, pixels, fill_bytes, workers)
            else:
                label = f"{os.path.basename(self._path)} level {level}, rows"
                with Progress(height, label) as bar:
                    for y0, y1 in row_bands(y, y + height, opened.levels[level].tile_size[1]):
                        opened.native.read_region(level, x, y0, pixels[y0 - y:y1 - y], fill_bytes, workers)
                        bar.advance(y1 - y0)
            if transform is not None:
                apply_srgb(out, transform, workers)  # the whole region at once, in place
        return out

    def _transform(self, opened: OpenedSlide, apply_icc: bool | None) -> SrgbTransform | None:
        """The sRGB transform a read with ``apply_icc`` needs: None for none, or no profile to apply."""
        if not parse_apply_icc(apply_icc, self._apply_icc):
            return None
        profile = opened.info.icc_profile
        if profile is None:
            return None  # nothing to apply: the pixels as stored, as a viewer shows them
        return srgb_transform(profile, icc_mode(opened.channels, opened.dtype, self._path), self._path)

    def read_mpp_region(
        self,
        mpp: MppLike,
        location: tuple[int, int],
        size: tuple[int, int],
        *,
        dct: DctLike = True,
        fill: FillLike = None,
        num_workers: int = 0,
        out: np.ndarray | None = None,
        apply_icc: bool | None = None,
    ) -> np.ndarray:
        """Like :meth:`read_region` with ``mpp=``, but ``location`` is in output pixels.

        The slide at ``mpp`` is a virtual level of ``(w0 * mpp0_x / mpp_x, ...)``
        pixels whose pixel ``(i, j)`` covers level-0 ``[i * t, (i + 1) * t)``
        (``t = mpp / mpp0``): what chunked consumers (``to_dask(mpp=...)``, the
        xarray engine) read, block by block, with no rounding through level-0
        coordinates. At a level's own pixel size this is :meth:`read_level_region`
        of that level. ``out`` and ``apply_icc`` as in :meth:`read_level_region`.

        Example:
            >>> slide.read_mpp_region(1.0, (10, 20), (32, 16)).shape
            (16, 32, 3)
        """
        opened = self._opened()
        target = mpp_target(mpp, opened.info.mpp, [lv.dimensions for lv in opened.levels])
        x, y = parse_location(location)
        width, height = parse_size(size)
        workers = parse_workers(num_workers)
        transform = self._transform(opened, apply_icc)
        if target.exact:
            return self._read(opened, target.level, x, y, width, height, fill, workers, out, transform)
        lx, ly = x * target.factor[0], y * target.factor[1]
        return self._read_at(opened, target, lx, ly, (width, height), fill, workers, parse_dct(dct), out,
                             transform)

    def _read_at(self, opened: OpenedSlide, target: MppTarget, x: float, y: float, size: tuple[int, int],
                 fill: FillLike, workers: int, dct: DctLike, out: np.ndarray | None,
                 transform: SrgbTransform | None, progress: bool = False) -> np.ndarray:
        """The one resampled read: output pixels from ``(x, y)`` (level pixels) of ``target``'s level.

        With ``progress``, bands of output rows (about a source tile row each, 100
        at most) are read one native call at a time while a bar counts them.
        """
        width, height = size
        fill_bytes = self._fill_bytes(fill)
        out = _output(opened, width, height, out)
        if out.size:
            where = np.array([[0, target.level]], np.int64)
            pixels = out.view(np.uint8).reshape(1, height, width, -1)
            step = max(1, round(opened.levels[target.level].tile_size[1] / target.factor[1]))
            bands = row_bands(0, height, step) if progress else [(0, height)]
            with contextlib.ExitStack() as stack:
                label = f"{os.path.basename(self._path)} from level {target.level}, output rows"
                bar = stack.enter_context(Progress(height, label)) if progress else None
                for y0, y1 in bands:
                    coords = np.array([[x, y + y0 * target.factor[1], *target.factor]], np.float64)
                    _native.read_resampled([opened.native], where, coords, pixels[:, y0:y1], fill_bytes,
                                           opened.dtype.str[1:], dct_code(dct), workers)
                    if bar is not None:
                        bar.advance(y1 - y0)
            if transform is not None:
                apply_srgb(out, transform, workers)
        return out

    def _fill_bytes(self, fill: FillLike) -> bytes:
        if fill is None:
            if self._default_fill is None:
                default = self._fill if self._fill is not None else DEFAULT_FILL
                self._default_fill = self._fill_bytes(default)
            return self._default_fill
        opened = self._opened()
        return parse_fill(fill, opened.channels, opened.dtype)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The largest level whose downsample is at most ``downsample`` (OpenSlide's rule).

        Example:
            >>> slide.get_best_level_for_downsample(2.5)
            1
        """
        best = 0
        for i, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample + 1e-9:
                best = i
        return best

    def get_thumbnail(self, max_size: tuple[int, int], *, apply_icc: bool | None = None) -> np.ndarray:
        """The whole slide scaled to fit in ``max_size`` ``(width, height)``, keeping its aspect.

        Reads the best level for the scale and box-filters it down. With
        ``apply_icc`` (see :meth:`read_region`) the small image is transformed
        to sRGB after scaling, which costs a fraction of transforming the level.

        Example:
            >>> slide.get_thumbnail((256, 256)).shape[:2]
            (195, 256)
        """
        max_w, max_h = parse_size(max_size, "max_size")
        if max_w <= 0 or max_h <= 0:
            raise ArgumentError(f"max_size must be positive, got {max_size!r}")
        transform = self._transform(self._opened(), apply_icc)
        w0, h0 = self.level_dimensions[0]
        scale = max(w0 / max_w, h0 / max_h, 1.0)
        target = (max(1, round(w0 / scale)), max(1, round(h0 / scale)))
        level = self.get_best_level_for_downsample(scale)
        image = self.read_region(level=level, num_workers=os.cpu_count() or 1, apply_icc=False)
        thumbnail = _box_resize(image, target)
        if transform is not None:
            apply_srgb(thumbnail, transform)  # a fresh C-contiguous array, the level's or the resized one
        return thumbnail

    # -- arrays (dask, xarray, OME-Zarr); imported on use so `import wsiarray` stays light --

    def to_dask(self, level: int = DEFAULT_LEVEL, chunks: Any = None, device: str = "cpu",
                apply_icc: bool | None = None, *, mpp: MppLike = None,
                dct: DctLike = True) -> dask.array.Array:
        """Level ``level`` as a lazy, tile-aligned ``dask.array.Array`` of shape ``(h, w, c)``.

        See :func:`wsiarray.dask.to_dask` for ``chunks`` (default about 2048 px),
        ``apply_icc`` (each chunk is transformed to sRGB as it is read) and ``mpp``
        (the slide at a target pixel size, not with ``level``).

        Example:
            >>> slide.to_dask(0).chunksize
            (763, 1000, 3)
            >>> slide.to_dask(mpp=1.0).shape
            (382, 500, 3)
        """
        from .dask import to_dask

        return to_dask(self, level=level, chunks=chunks, device=device, apply_icc=apply_icc, mpp=mpp, dct=dct)

    def to_dask_pyramid(self, chunks: Any = None, device: str = "cpu",
                        apply_icc: bool | None = None) -> list[dask.array.Array]:
        """Every level as a dask array, largest first (napari's ``multiscale=True`` input).

        Example:
            >>> [a.shape for a in slide.to_dask_pyramid()]
            [(763, 1000, 3), (382, 500, 3), (191, 250, 3)]
        """
        from .dask import to_dask_pyramid

        return to_dask_pyramid(self, chunks=chunks, device=device, apply_icc=apply_icc)

    @overload
    def to_xarray(self, level: int, device: str = "cpu", chunks: Any = None,
                  apply_icc: bool | None = None) -> xarray.Dataset: ...

    @overload
    def to_xarray(self, level: None = None, device: str = "cpu", chunks: Any = None,
                  apply_icc: bool | None = None) -> xarray.DataTree: ...

    def to_xarray(self, level: int | None = None, device: str = "cpu",
                  chunks: Any = None, apply_icc: bool | None = None) -> xarray.Dataset | xarray.DataTree:
        """One level as an ``xarray.Dataset`` (or, with ``level=None``, every level as a ``DataTree``).

        Example:
            >>> slide.to_xarray(0)["image"].sizes["x"]
            1000
        """
        from .xarray_backend import to_xarray

        return to_xarray(self, level=level, device=device, chunks=chunks, apply_icc=apply_icc)

    def to_zarr(self, store: Any, levels: Sequence[int] | None = None, **options: Any) -> Any:
        """Write the slide as an OME-Zarr pyramid (NGFF 0.5, Zarr v3); see ``zarr_export.to_zarr``.

        Example:
            >>> group = slide.to_zarr(str(tmp / "slide.ome.zarr"))
            >>> sorted(group.array_keys())
            ['0', '1', '2']
        """
        from .zarr_export import to_zarr

        return to_zarr(self, store, levels=levels, **options)


class _SrgbAssociatedImages(Mapping[str, np.ndarray]):
    """Associated images in sRGB: each one with a profile of its own is transformed on access.

    The decoded images stay shared (and read-only) in the opened file; each access
    returns a transformed copy, small next to a level read.
    """

    def __init__(self, images: Mapping[str, np.ndarray], profiles: Mapping[str, bytes], path: str) -> None:
        self._images = images
        self._profiles = profiles
        self._path = path

    def __getitem__(self, name: str) -> np.ndarray:
        image = self._images[name]
        profile = self._profiles.get(name)
        if profile is None:
            return image
        channels = image.shape[2] if image.ndim == 3 else 1
        where = f"{self._path}: associated image {name!r}"
        transform = srgb_transform(profile, icc_mode(channels, image.dtype, where), where)
        pixels = np.array(image, order="C")  # a writable copy
        apply_srgb(pixels, transform)
        pixels.flags.writeable = False
        return pixels

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        return f"<associated images {sorted(self._images)} in sRGB>"


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


def _on_device(pixels: np.ndarray, device: str) -> Any:
    """``pixels`` (read on the CPU) on ``device``: themselves for ``"cpu"``, else copied up once."""
    if device == "cpu":
        return pixels
    from ._cuda import resolve, upload

    return upload(pixels, resolve(device))


def _output(opened: OpenedSlide, width: int, height: int, out: np.ndarray | None) -> np.ndarray:
    """The array a single-region read fills: ``out`` checked, or a new one within the request limit."""
    shape = (height, width, opened.channels)
    if out is None:
        check_request_size(1, width, height, opened.channels, opened.dtype)
        return empty_output(shape, opened.dtype)
    if not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == opened.dtype
            and out.flags.c_contiguous and out.flags.writeable):
        raise ArgumentError(f"out must be a writable C-contiguous {shape} {opened.dtype} array")
    return out


def _resample_coords(target: MppTarget, level0: np.ndarray, downsample: float) -> np.ndarray:
    """``(N, 4)`` ``(x, y, fx, fy)`` in ``target``'s level pixels for level-0 locations.

    An exact target reads whole level pixels at OpenSlide's ``floor(x / downsample)``
    with factor 1: the native average then copies them, as a plain read would.
    """
    coords = np.empty((len(level0), 4), np.float64)
    if target.exact:
        coords[:, :2] = to_level_locations(level0, downsample)
    else:
        coords[:, 0] = level0[:, 0] * target.per_level0[0]
        coords[:, 1] = level0[:, 1] * target.per_level0[1]
    coords[:, 2:] = target.factor
    return coords


def open(path: str | os.PathLike[str], *, fill: FillLike = None, apply_icc: bool = False,
         file_access: str | None = None, storage_options: dict[str, Any] | None = None) -> Slide:
    """Open a whole-slide image (Aperio SVS, OME-TIFF, generic tiled TIFF), a local path or a URL.

    ``path`` may be an fsspec URL (``s3://``, ``gs://``, ``az://``, ``https://``,
    ``http://``; ``file://`` is a local path), with ``storage_options`` for its
    filesystem (credentials, endpoint, ...; ``pip install "wsiarray[remote]"``).
    Opening one costs a few requests; each read then fetches its tiles' byte
    ranges, merged, in one batch of concurrent requests (``docs/guide/remote.md``).

    ``fill`` sets the value of pixels outside the image for this handle.
    ``apply_icc=True`` makes every read of this handle (regions, batches,
    thumbnails, associated images, dask and xarray arrays) return sRGB pixels
    through the slide's ICC profile unless a read says ``apply_icc=False``; a
    profile that cannot be applied is refused here. Slides without a profile
    read unchanged.

    ``file_access`` chooses how the native engine reads the file's bytes:
    ``"pread"`` (the default), ``"mmap"``, ``"direct"`` (``O_DIRECT``, bypassing
    the page cache) or ``"preload"`` (``O_DIRECT``, and whole-level reads load
    the level's byte span first); pixels are the same in every mode (see
    ``wsiarray._request.parse_file_access``). Handles opened with different
    modes do not share a reader.

    Example:
        >>> slide = wsiarray.open(path)
        >>> slide.level_dimensions
        ((1000, 763), (500, 382), (250, 191))
        >>> direct = wsiarray.open(path, file_access="direct")
        >>> bool((direct.read_region((0, 0), (64, 64)) == slide.read_region((0, 0), (64, 64))).all())
        True
    """
    return Slide(path, fill=fill, apply_icc=apply_icc, file_access=file_access,
                 storage_options=storage_options)


def read_regions(
    items: Iterable[tuple[Slide | str | os.PathLike[str], Location]],
    size: tuple[int, int],
    *,
    level: int = DEFAULT_LEVEL,
    fill: FillLike = None,
    num_workers: int = 0,
    batch_size: int = 1,
    drop_last: bool = False,
    prefetch_factor: int = 2,
    shuffle: bool = False,
    seed: int = 0,
    apply_icc: bool | None = None,
    mpp: MppLike = None,
    dct: DctLike = True,
    device: str = "cpu",
    storage_options: dict[str, Any] | None = None,
) -> BatchIterator:
    """Patches from many slides in one stream: ``items`` are ``(slide_or_path, (x, y))``.

    A path may be a URL (``storage_options`` apply to the URLs among them).

    Locations are level-0 pixels of each item's slide, ``size`` is in ``level``'s
    pixels. All slides must share dtype and channel count; ``fill`` defaults to
    the first slide's. Paths are opened once; open files are bounded by the
    handle manager, which reopens them batch by batch as needed.

    ``apply_icc=True`` returns sRGB pixels, each patch through its own slide's
    ICC profile (patches of slides that share a profile are transformed together,
    once per batch); ``None`` means each slide's own setting (paths: False).

    ``mpp`` (not with ``level``) reads every patch at that pixel size, ``size``
    in output pixels, each from its own slide's best level (see
    :meth:`Slide.read_region`); every slide must know its pixel size.

    ``device="cuda"`` (or ``"cuda:N"``) yields CuPy batches decoded on the GPU (see
    :meth:`Slide.read_region`).

    Example:
        >>> items = [(path, (0, 0)), (path, (500, 300)), (slide, (10, 10))]
        >>> [b.shape for b in wsiarray.read_regions(items, (224, 224), batch_size=2)]
        [(2, 224, 224, 3), (1, 224, 224, 3)]
    """
    width, height = parse_size(size)
    workers = parse_workers(num_workers)
    device = parse_device(device)
    batch_size, prefetch_factor = parse_batch_options(batch_size, prefetch_factor)
    if apply_icc is not None:
        parse_apply_icc(apply_icc, False)  # a bad value is refused before any file is opened
    if mpp is not None:
        dct = parse_dct(dct)
    targets: list[MppTarget] = []
    slides: list[Slide] = []
    transforms: list[SrgbTransform | None] = []
    index_of: dict[int | str, int] = {}
    which: list[int] = []
    points: list[tuple[int, int]] = []
    slide_levels: list[int] = []
    slide_downsamples: list[float] = []
    for source, location in items:
        key: int | str = id(source) if isinstance(source, Slide) else _item_source(source, storage_options)
        if key not in index_of:
            index_of[key] = len(slides)
            slide = source if isinstance(source, Slide) else Slide(key)
            # Checked now, while the file is open: with more files than the
            # handle manager keeps open, a later check would reopen each one.
            if slides and (slide.dtype, slide.channels) != (slides[0].dtype, slides[0].channels):
                first = slides[0]
                raise ArgumentError(
                    f"{slide.path} has {slide.channels} x {slide.dtype} pixels, "
                    f"{first.path} has {first.channels} x {first.dtype}: they cannot share a batch"
                )
            slides.append(slide)
            transforms.append(slide._transform(slide._opened(), apply_icc))
            if mpp is not None:
                targets.append(mpp_target(mpp, slide.mpp, slide.level_dimensions,
                                          None if level is DEFAULT_LEVEL else level))
                index = targets[-1].level
            else:
                index = parse_level(0 if level is DEFAULT_LEVEL else level, slide.level_count)
            slide_levels.append(index)
            slide_downsamples.append(slide.level_downsamples[index])
        which.append(index_of[key])
        points.append(parse_location(location))
    if not slides:
        raise ArgumentError("read_regions needs at least one item")
    first = slides[0]
    which_array = np.asarray(which, np.int64)
    level0 = np.asarray(points, np.int64).reshape(-1, 2)
    levels = np.asarray(slide_levels, np.int64)[which_array]
    downsamples = np.asarray(slide_downsamples, np.float64)[which_array]
    level_xy = np.empty_like(level0)
    # Per distinct downsample, not per slide: 10,000 slides share a handful.
    for downsample in np.unique(downsamples):
        mask = downsamples == downsample
        level_xy[mask] = to_level_locations(level0[mask], float(downsample))
    resample = None
    if targets:
        resample = np.empty((len(which_array), 4), np.float64)
        for index, target in enumerate(targets):
            mask = which_array == index
            resample[mask] = _resample_coords(target, level0[mask], slide_downsamples[index])
    return BatchIterator(
        [(slide.path, slide.identity, slide.file_access) for slide in slides], which_array, levels, level_xy,
        (width, height),
        fill=first._fill_bytes(fill), channels=first.channels, dtype=first.dtype,
        num_workers=workers, batch_size=batch_size, drop_last=drop_last,
        prefetch_factor=prefetch_factor, shuffle=shuffle, seed=seed, transforms=transforms,
        resample=resample, dct=dct, device=device,
    )


def _item_source(source: Any, storage_options: dict[str, Any] | None) -> str:
    """A read_regions item's path or URL; ``storage_options`` apply to URLs only."""
    parsed = parse_source(source)
    if isinstance(parsed, RemoteSource) and storage_options is not None:
        return parse_source(parsed, storage_options)
    return parsed
