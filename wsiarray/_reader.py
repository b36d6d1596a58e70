"""An opened slide: the format layer's tables loaded into one native reader.

:class:`OpenedSlide` is what the handle manager (:mod:`wsiarray._handles`) keeps
per file: the :class:`~wsiarray.formats.SlideInfo` the format layer found, the
native ``Reader`` (one file descriptor, the levels' tile tables), the public
:class:`Level` descriptions and the associated images, decoded on first use.
Every handle on the same file in a process shares one.

The format layer (and with it tifffile and imagecodecs) is imported when the
first slide is opened, not when wsiarray is imported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import _native, _remote
from ._request import DEFAULT_FILE_ACCESS, parse_remote_options
from .cache import ensure_configured
from .errors import OpenError, UnsupportedError, WSIError

if TYPE_CHECKING:
    from .formats import SlideInfo

__all__ = ["AssociatedImages", "FileIdentity", "Level", "OpenedSlide"]

#: ``(st_dev, st_ino, st_size, st_mtime_ns)``: what makes a file "the same file".
FileIdentity = tuple[int, int, int, int]


@dataclass(frozen=True)
class Level:
    """Geometry and encoding of one pyramid level.

    Example:
        >>> slide.levels[0].tile_size
        (128, 128)
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
        """``(width, height)``."""
        return (self.width, self.height)

    @property
    def tile_size(self) -> tuple[int, int]:
        """``(tile_width, tile_height)``."""
        return (self.tile_width, self.tile_height)


class AssociatedImages(Mapping[str, np.ndarray]):
    """Associated images (label, macro, thumbnail), decoded on first access, read-only.

    Example:
        >>> sorted(AssociatedImages({"label": lambda: np.zeros((2, 2, 3), np.uint8)}))
        ['label']
    """

    def __init__(self, loaders: Mapping[str, Callable[[], np.ndarray]]) -> None:
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


class OpenedSlide:
    """One file's format tables and native reader, shared by all its handles in a process.

    Example:
        >>> from wsiarray._handles import file_identity
        >>> opened = OpenedSlide.open(path, file_identity(path))
        >>> opened.levels[0].dimensions, opened.info.vendor
        ((1000, 763), 'generic-tiff')
        >>> opened.native.close()
    """

    def __init__(self, path: str, identity: FileIdentity, info: SlideInfo, native: _native.Reader) -> None:
        self.path = path
        self.identity = identity
        #: How the native reader reads the file (``wsiarray.open(file_access=...)``).
        self.file_access: str = native.file_access
        self.info = info
        self.native = native
        from .formats import Codec

        level0 = info.levels[0]
        self.levels = tuple(
            Level(
                index=i,
                width=spec.width,
                height=spec.height,
                downsample=spec.downsample
                if spec.downsample is not None
                else (level0.width / spec.width + level0.height / spec.height) / 2,
                tile_width=spec.tile_width,
                tile_height=spec.tile_height,
                compression=spec.compression_name,
                native_codec=spec.codec is not Codec.EXTERNAL,
            )
            for i, spec in enumerate(info.levels)
        )
        self.associated = AssociatedImages(info.associated)
        self.channels = level0.samples
        self.dtype = level0.dtype
        #: A remote slide's :class:`~wsiarray._remote.RangeFetcher` (its request counts), else None.
        self.fetcher: _remote.RangeFetcher | None = None

    @classmethod
    def open(cls, path: str, identity: FileIdentity, file_access: str = DEFAULT_FILE_ACCESS) -> OpenedSlide:
        """Describe ``path`` with the format layer and load its levels into a native reader.

        The reader reads the file's bytes as ``file_access`` says
        (:func:`~wsiarray._request.parse_file_access`). Raises
        :class:`~wsiarray.OpenError` when the file no longer has ``identity``.
        """
        from .formats import read_slide_info

        ensure_configured()  # the cache a configuration file or WSIARRAY_CACHE asks for
        if isinstance(path, _remote.RemoteSource):
            return cls._open_remote(path, identity)
        info = read_slide_info(path)
        if not info.levels:
            raise OpenError(f"{path}: no image levels found")
        native = _native.Reader(path, file_access)
        if tuple(native.identity) != identity:
            native.close()
            raise OpenError(f"{path}: the file changed while it was being opened")
        try:
            files: dict[str | None, int] = {None: 0, path: 0}  # the path opened is file 0
            for spec in info.levels:
                for name in (spec.file, *spec.plane_files):
                    if name in files:
                        continue
                    files[name] = native.add_file(name)
                    expected = info.file_identities.get(name) if name is not None else None
                    if expected is not None and tuple(native.file_identity(files[name])) != expected:
                        raise OpenError(f"{name}: the file changed while the slide was being opened")
                spec.add_to(native, files[spec.file], [files[name] for name in spec.plane_files])
        except BaseException:
            native.close()
            raise
        return cls(path, identity, info, native)

    @classmethod
    def _open_remote(cls, source: _remote.RemoteSource, identity: FileIdentity) -> OpenedSlide:
        """A remote object: parsed through a block-cached file, read through a fetcher of its own."""
        from .formats import read_slide_info

        obj = _remote.seen(source, identity)
        options = parse_remote_options()
        info = read_slide_info(source)
        if not info.levels:
            raise OpenError(f"{source}: no image levels found")
        fetcher = _remote.RangeFetcher(obj, options)
        native = _native.Reader.open_remote(source.url, identity, fetcher, options.max_gap, options.max_span)
        try:
            for spec in info.levels:
                if spec.file not in (None, source) or spec.plane_files:
                    raise UnsupportedError(f"{source}: levels in other objects (multi-file slides) cannot be "
                                           "read remotely")
                spec.add_to(native, 0, [])
        except BaseException:
            native.close()
            raise
        opened = cls(source, identity, info, native)
        opened.fetcher = fetcher
        return opened
