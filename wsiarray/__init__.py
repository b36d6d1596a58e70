"""wsiarray: fast, lazy, exact reading of whole-slide images.

``import wsiarray`` is light: it loads the native engine and numpy only. The
format layer (tifffile, imagecodecs) loads when the first slide is opened, the
cache configuration is read then too, and the dask, xarray and cuCIM layers
load when they are used.

Example:
    >>> import wsiarray
    >>> with wsiarray.open(path) as slide:
    ...     print(slide.level_dimensions[0], slide.mpp)
    ...     tile = slide.read_region((0, 0), (256, 256))
    (1000, 763) (0.5, 0.5)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._handles import HandleManager, file_handles
from ._memory import OutputMemory, output_memory
from ._native import pool_size, set_pool_size
from ._request import request_limit
from .batch import BatchIterator
from .cache import TileCache, cache, preferred_memory_capacity
from .errors import (
    ArgumentError,
    CacheError,
    ClosedError,
    FormatError,
    GPUUnavailableError,
    OpenError,
    RequestTooLargeError,
    TileDecodeError,
    TileReadError,
    UnsupportedError,
    WSIError,
)
from .slide import DEFAULT_FILL, Level, Slide, open, read_regions

if TYPE_CHECKING:
    from .compat import CuImage

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_FILL",
    "ArgumentError",
    "BatchIterator",
    "CacheError",
    "ClosedError",
    "CuImage",
    "FormatError",
    "GPUUnavailableError",
    "HandleManager",
    "Level",
    "OpenError",
    "OutputMemory",
    "RequestTooLargeError",
    "Slide",
    "TileCache",
    "TileDecodeError",
    "TileReadError",
    "UnsupportedError",
    "WSIError",
    "__version__",
    "cache",
    "file_handles",
    "open",
    "output_memory",
    "pool_size",
    "preferred_memory_capacity",
    "read_regions",
    "request_limit",
    "set_pool_size",
]


def __getattr__(name: str) -> Any:
    # The cuCIM facade loads on first use (PEP 562), keeping `import wsiarray` light.
    if name == "CuImage":
        from .compat import CuImage

        return CuImage
    raise AttributeError(f"module 'wsiarray' has no attribute {name!r}")
