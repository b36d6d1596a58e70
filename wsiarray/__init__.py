"""wsiarray: fast, lazy, exact reading of whole-slide images.

Example:
    >>> import wsiarray
    >>> with wsiarray.open("CMU-1-Small-Region.svs") as slide:
    ...     print(slide.level_dimensions, slide.mpp)
    ...     tile = slide.read_region((0, 0), (256, 256))
    ((2220, 2967),) (0.499, 0.499)
"""

from __future__ import annotations

from ._memory import OutputMemory, output_memory
from ._native import pool_size, set_pool_size
from .batch import BatchIterator, read_regions
from .cache import TileCache, cache, configure_from_environment, preferred_memory_capacity
from .compat import CuImage
from .errors import (
    ArgumentError,
    ClosedError,
    FormatError,
    OpenError,
    TileDecodeError,
    TileReadError,
    UnsupportedError,
    WSIError,
)
from .slide import DEFAULT_FILL, Level, Slide, open

__version__ = "0.1.0"

configure_from_environment()

__all__ = [
    "DEFAULT_FILL",
    "ArgumentError",
    "BatchIterator",
    "ClosedError",
    "CuImage",
    "FormatError",
    "Level",
    "OpenError",
    "OutputMemory",
    "Slide",
    "TileCache",
    "TileDecodeError",
    "TileReadError",
    "UnsupportedError",
    "WSIError",
    "__version__",
    "cache",
    "open",
    "output_memory",
    "pool_size",
    "preferred_memory_capacity",
    "read_regions",
    "set_pool_size",
]
