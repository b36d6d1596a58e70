"""Exceptions raised by wsiarray; all derive from :class:`WSIError`.

The native engine raises these same classes (it looks them up here when it is
imported), so ``except wsiarray.WSIError`` catches everything the library
raises about a file.

Example:
    >>> import wsiarray
    >>> try:
    ...     wsiarray.open("not-a-slide.txt")
    ... except wsiarray.WSIError as exc:
    ...     print(type(exc).__name__)
    OpenError
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "CacheError",
    "ClosedError",
    "FormatError",
    "GPUUnavailableError",
    "OpenError",
    "RequestTooLargeError",
    "TileDecodeError",
    "TileReadError",
    "UnsupportedError",
    "WSIError",
]


class WSIError(Exception):
    """Base class of every error wsiarray raises about a slide."""


class OpenError(WSIError, OSError):
    """The file cannot be opened as a slide (missing, not TIFF, not readable)."""


class CacheError(OpenError):
    """The tile cache cannot be created or attached: /dev/shm too small, or an unsafe shared segment.

    A subclass of :class:`OpenError`, which cache failures raised before this class existed.
    """


class FormatError(WSIError, ValueError):
    """The file is a TIFF but its structure is corrupt or self-contradictory."""


class UnsupportedError(FormatError):
    """The file is valid but uses a feature wsiarray does not support."""


class TileReadError(WSIError, OSError):
    """Reading a tile's bytes failed (offset past the end of the file, I/O error)."""


class TileDecodeError(WSIError, ValueError):
    """A tile's bytes could not be decoded (corrupt or truncated data)."""


class ClosedError(WSIError, ValueError):
    """The slide was used after ``close()``."""


class ArgumentError(WSIError, ValueError):
    """A call's arguments are invalid (level out of range, negative size, ...)."""


class RequestTooLargeError(ArgumentError, MemoryError):
    """A request's output would need more memory than the request limit allows.

    Raised before anything is allocated; the message says how many bytes the
    request needs, the limit, and what to change (``size``, ``batch_size``, or
    the limit: :func:`wsiarray.request_limit`, ``WSIARRAY_MAX_REQUEST_MIB``).
    An :class:`ArgumentError` (the caller's arguments are what is too large)
    and a :class:`MemoryError` (what such a request used to end in, so code
    that catches that keeps working).
    """


class GPUUnavailableError(WSIError, RuntimeError):
    """``device="cuda"`` was asked for, the GPU packages are installed, but no GPU can be used.

    No NVIDIA driver, no device of that number, or CUDA failing to start: the
    message says which. (Without the packages themselves the error is an
    ``ImportError`` naming the extra to install, ``wsiarray[cuda12]`` or
    ``wsiarray[cuda13]``.)
    """
