"""The request layer: one set of rules for the arguments of every entry point.

``Slide.read_region``, ``Slide.read_level_region``, :func:`wsiarray.read_regions`,
batches, ``to_dask``, the xarray engine, OME-Zarr export and the PyTorch dataset
all parse their arguments here, so the same bad input gives the same
:class:`~wsiarray.ArgumentError` with the same message everywhere. (The
:class:`~wsiarray.CuImage` facade alone speaks cuCIM's classes and messages.)

The rules:

- **level**: an integer (Python or NumPy, not a bool) in ``[0, level_count)``.
  Negative levels are refused, as OpenSlide and cuCIM refuse them: a computed
  level that went below zero is a bug to report, not "the last level".
- **location**: ``(x, y)``, two integers (integral floats are accepted, as NumPy
  hands them out); many locations are a sequence, generator or ``(N, 2)`` array
  of them, or cuCIM's flat ``[x0, y0, x1, y1, ...]``.
- **size**: ``(width, height)``, two integers >= 0; a zero gives an empty array.
- **fill**: a number or one number per channel, each representable in the
  slide's dtype (256 is not a uint8; silently wrapping it would be wrong).
- **num_workers**: an integer >= 0; 0 and 1 both mean the calling thread.
- **device**: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; the GPU decode backend
  (``WSIARRAY_GPU_BACKEND``).
- **file_access** (``open``): one of :data:`FILE_ACCESS_MODES`, how the native
  engine reads the file's bytes (see :func:`parse_file_access`).
- **source** (``open``, ``read_regions``, the facades): a local path, or an fsspec URL
  (``s3://``, ``gs://``, ``az://``, ``https://``, ...) with optional ``storage_options``
  (a dict, for URLs only); ``file://`` URLs are local paths (see :func:`parse_source`).
- **apply_icc**: ``True`` or ``False`` (a Python or NumPy bool), or ``None`` for the
  handle's own setting (``wsiarray.open(path, apply_icc=...)``, default ``False``).
  ``True`` returns sRGB pixels through the slide's ICC profile; that needs uint8
  RGB or RGBA pixels (:func:`icc_mode`). A slide without a profile is returned
  unchanged, as a viewer shows it.
- Level-0 locations become level locations with OpenSlide's rule
  ``floor(x / downsample)``.
- **mpp** (reads at a target resolution): a number > 0 or an ``(x, y)`` pair of
  them, micrometres per output pixel; not with ``level``; the slide must know
  its pixel size; no finer than level 0. The level read is the coarsest whose
  pixels are no larger than the target (within :data:`MPP_TOLERANCE`); one
  that matches the target within that tolerance is read directly.
- **progress**: ``True`` or ``False`` (a Python or NumPy bool), or ``None`` for
  "when standard error is a terminal" (:func:`parse_progress`); a bar is shown
  for whole-level and other single-region reads and for OME-Zarr exports.
- **request size**: the output a request allocates (a region, or one batch)
  may need at most :func:`request_limit` bytes; a larger one is refused with
  :class:`~wsiarray.RequestTooLargeError` before anything is allocated.
  Outputs the caller passes (``out=``) are not counted.

Example:
    >>> from wsiarray._request import parse_level, parse_pair, parse_locations
    >>> parse_level(1, 3), parse_pair((10, 20.0), "size")
    (1, (10, 20))
    >>> parse_locations([0, 0, 256, 0]).tolist()
    [[0, 0], [256, 0]]
    >>> parse_level(-1, 3)
    Traceback (most recent call last):
    ...
    wsiarray.errors.ArgumentError: level must be an integer in [0, 3), got -1
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._remote import RemoteOptions, RemoteSource
from .errors import ArgumentError, RequestTooLargeError, UnsupportedError

__all__ = [
    "DEFAULT_FILE_ACCESS",
    "DEFAULT_GPU_BACKEND",
    "DEVICES",
    "FILE_ACCESS_MODES",
    "GPU_BACKENDS",
    "GPU_BACKEND_ENV",
    "LIMIT_ENV",
    "MPP_TOLERANCE",
    "REMOTE_ENV",
    "DctLike",
    "FillLike",
    "MppLike",
    "MppTarget",
    "check_request_size",
    "dct_code",
    "device_index",
    "icc_mode",
    "mpp_target",
    "parse_apply_icc",
    "parse_batch_options",
    "parse_dct",
    "parse_device",
    "parse_file_access",
    "parse_fill",
    "parse_gpu_backend",
    "parse_level",
    "parse_location",
    "parse_locations",
    "parse_mpp",
    "parse_pair",
    "parse_progress",
    "parse_remote_options",
    "parse_size",
    "parse_source",
    "parse_workers",
    "request_limit",
    "to_level",
    "to_level_locations",
]

#: What ``fill=`` accepts: a number, or one number per channel (None: the default).
FillLike = float | Sequence[float] | None

#: What ``mpp=`` accepts: micrometres per output pixel, one number or ``(x, y)``.
MppLike = float | tuple[float, float] | Sequence[float] | None

#: Relative tolerance on pixel sizes: a level whose pixel size is within it of
#: the target counts as the target (it is read directly, not resampled). It
#: absorbs float noise and the difference between a level's per-axis size
#: (``w0 / w``) and OpenSlide's averaged downsample.
MPP_TOLERANCE = 1e-3

#: Devices a read may target: ``"cuda:N"`` names the N-th GPU, ``"cuda"`` the current one.
DEVICES = ("cpu", "cuda")

#: How ``device="cuda"`` decodes JPEG tiles with nvImageCodec (see :func:`parse_gpu_backend`).
GPU_BACKENDS = ("hw", "cuda", "hybrid", "cpu")

#: Environment variable that picks the GPU decode backend (one of :data:`GPU_BACKENDS`).
GPU_BACKEND_ENV = "WSIARRAY_GPU_BACKEND"

#: The backend used unless :data:`GPU_BACKEND_ENV` says otherwise. Not yet measured on a
#: device: the hardware JPEG engines (A100/H100/H200), with the CUDA decoder behind them
#: for what they cannot decode.
DEFAULT_GPU_BACKEND = "hw"

#: How the native engine may read a file's bytes (``wsiarray.open(file_access=...)``).
FILE_ACCESS_MODES = ("pread", "mmap", "direct", "preload")

#: The mode files are opened with unless ``file_access=`` says otherwise: the
#: fastest in ``benchmarks/bench_file_access.py`` (see ``docs/architecture.md``).
DEFAULT_FILE_ACCESS = "pread"

#: Environment variables that tune remote reads (see :func:`parse_remote_options`).
REMOTE_ENV = {
    "max_gap": "WSIARRAY_REMOTE_MAX_GAP_MIB",
    "max_span": "WSIARRAY_REMOTE_MAX_SPAN_MIB",
    "retries": "WSIARRAY_REMOTE_RETRIES",
    "timeout": "WSIARRAY_REMOTE_TIMEOUT",
    "concurrency": "WSIARRAY_REMOTE_CONCURRENCY",
}

#: Environment variable that sets the request limit, in MiB (see :func:`request_limit`).
LIMIT_ENV = "WSIARRAY_MAX_REQUEST_MIB"

#: The limit set by request_limit(max_mib=...), in bytes; None: the environment or the default.
_limit_bytes: int | None = None


def parse_level(level: Any, level_count: int) -> int:
    """``level`` as an index in ``[0, level_count)``; anything else is an :class:`ArgumentError`.

    Example:
        >>> parse_level(np.int64(2), 3)
        2
    """
    if type(level) is int and 0 <= level < level_count:  # the common case, kept cheap
        return level
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, np.integer)) \
            or not 0 <= level < level_count:
        raise ArgumentError(f"level must be an integer in [0, {level_count}), got {level!r}")
    return int(level)


def _integer(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("a bool is not a coordinate")
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or value != int(value):
            raise ValueError("not an integer")
        return int(value)
    return operator.index(value)


def parse_pair(value: Any, name: str) -> tuple[int, int]:
    """Two integers, such as ``(x, y)`` or ``(width, height)``, named ``name`` in errors.

    Example:
        >>> parse_pair(np.array([3, 4]), "location")
        (3, 4)
    """
    try:
        a, b = value
        return _integer(a), _integer(b)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"{name} must be a pair of integers, got {value!r}") from exc


def parse_location(location: Any) -> tuple[int, int]:
    """One ``(x, y)`` location.

    Example:
        >>> parse_location([5, 7])
        (5, 7)
    """
    return parse_pair(location, "location")


def parse_size(size: Any, name: str = "size") -> tuple[int, int]:
    """``(width, height)``, both >= 0.

    Example:
        >>> parse_size((224, 0))
        (224, 0)
    """
    width, height = parse_pair(size, name)
    if width < 0 or height < 0:
        raise ArgumentError(f"{name} must not be negative, got {size!r}")
    return width, height


def parse_locations(location: Any) -> tuple[int, int] | np.ndarray:
    """One location as ``(x, y)``, or many as an ``(N, 2)`` int64 array.

    Many are a list, tuple, generator or array of pairs, or a flat sequence
    ``[x0, y0, x1, y1, ...]`` as cuCIM takes them. A flat sequence of two
    numbers (or of an odd count) is one location. A bad location among many
    gets the message it would get alone, naming it.

    Example:
        >>> parse_locations([(0, 0), (256, 0)]).shape
        (2, 2)
        >>> parse_locations(np.array([3, 4]))
        (3, 4)
    """
    if isinstance(location, Iterator):
        location = list(location)
    ragged = False
    if isinstance(location, np.ndarray):
        array = location
    elif isinstance(location, (list, tuple)):
        try:
            array = np.asarray(location)
        except (TypeError, ValueError):  # ragged: checked pair by pair below
            array, ragged = np.empty(0), True
    else:
        return parse_location(location)
    if array.ndim == 2 and array.shape[1] == 2 and array.dtype.kind in "iu":
        return array.astype(np.int64)  # the common case, checked in bulk
    if len(location) == 0:
        return np.empty((0, 2), np.int64)
    nested = ragged or array.ndim >= 2 or (array.ndim == 1 and array.dtype == object
                                 and any(isinstance(v, (list, tuple, np.ndarray)) for v in location))
    if not nested:
        if array.ndim != 1 or len(location) <= 2 or len(location) % 2:
            return parse_location(location)
        rows: Any = zip(location[::2], location[1::2], strict=True)
    else:
        rows = location
    return np.array([parse_location(row) for row in rows], np.int64).reshape(-1, 2)


def parse_fill(fill: Any, channels: int, dtype: np.dtype) -> bytes:
    """One pixel of ``fill`` (a number or ``channels`` numbers) as the bytes of ``dtype``.

    Example:
        >>> parse_fill(255, 3, np.dtype("uint8"))
        b'\\xff\\xff\\xff'
    """
    problem = f"fill must be a number or {channels} numbers that fit {np.dtype(dtype)}, got {fill!r}"
    if isinstance(fill, (str, bytes)):
        raise ArgumentError(problem)
    try:
        values = np.broadcast_to(np.asarray(fill, dtype=np.float64), (channels,))
    except (TypeError, ValueError) as exc:
        raise ArgumentError(problem) from exc
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        fits = np.isfinite(values) & (values >= info.min) & (values <= info.max)
        if not fits.all():
            raise ArgumentError(problem)
    return values.astype(dtype).tobytes()


def parse_workers(num_workers: Any) -> int:
    """Threads of the native pool for one request: >= 0; 0 and 1 mean the calling thread.

    Example:
        >>> parse_workers(0)
        1
    """
    try:
        workers = _integer(num_workers)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"num_workers must be an integer >= 0, got {num_workers!r}") from exc
    if workers < 0:
        raise ArgumentError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    return max(1, workers)


def parse_device(device: Any) -> str:
    """``"cpu"``, ``"cuda"`` (the current GPU) or ``"cuda:N"`` (GPU number N), normalised.

    Only parses: whether the GPU packages are installed and a GPU is usable is
    checked when a GPU read runs (an ``ImportError`` naming the extra, or
    :class:`~wsiarray.GPUUnavailableError`). ``None`` is ``"cpu"``.

    Example:
        >>> parse_device("cpu"), parse_device("CUDA"), parse_device("cuda:1")
        ('cpu', 'cuda', 'cuda:1')
    """
    if device is None or device == "cpu":
        return "cpu"
    name = device.strip().lower() if isinstance(device, str) else None
    if name in DEVICES:
        return name
    if name is not None and name.startswith("cuda:"):
        number = name[5:]
        if number.isdigit() and len(number) <= 4:
            return f"cuda:{int(number)}"
    raise ArgumentError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def device_index(device: str) -> int | None:
    """The GPU number of a parsed device: None for ``"cpu"`` and ``"cuda"`` (the current GPU).

    Example:
        >>> device_index("cuda:2"), device_index("cuda")
        (2, None)
    """
    return int(device[5:]) if device.startswith("cuda:") else None


def parse_gpu_backend(backend: Any = None) -> str:
    """The nvImageCodec backend a GPU read decodes JPEG with; None: :data:`GPU_BACKEND_ENV` or the default.

    - ``"hw"`` (the default): the GPU's hardware JPEG engines (A100/H100/H200), with
      the CUDA decoder behind them for streams they cannot decode;
    - ``"cuda"``: nvJPEG's CUDA decoder (Huffman decoding on the GPU too);
    - ``"hybrid"``: Huffman decoding on CPU threads, the rest on the GPU;
    - ``"cpu"``: nvImageCodec's CPU decoder (libjpeg-turbo) into **NumPy** arrays, no
      GPU or CuPy needed. It runs the whole GPU decode stage on a machine without a
      GPU (CI); ``device="cuda"`` reads then return NumPy arrays.

    Example:
        >>> parse_gpu_backend("cpu")
        'cpu'
    """
    if backend is None:
        backend = os.environ.get(GPU_BACKEND_ENV) or DEFAULT_GPU_BACKEND
        where = f"{GPU_BACKEND_ENV}={backend!r}"
    else:
        where = f"gpu backend {backend!r}"
    name = backend.strip().lower() if isinstance(backend, str) else None
    if name not in GPU_BACKENDS:
        raise ArgumentError(f"{where}: the GPU backend must be one of {GPU_BACKENDS}")
    return name


def parse_file_access(file_access: Any) -> str:
    """How the native engine reads the file: one of :data:`FILE_ACCESS_MODES`; None is the default.

    - ``"pread"`` (the default): ``pread`` into a buffer, through the page cache.
    - ``"mmap"``: the file is mapped read-only and runs are copied out of the
      mapping; a file that shrinks underneath is a :class:`~wsiarray.TileReadError`,
      as with ``pread``, never a SIGBUS.
    - ``"direct"``: ``O_DIRECT`` reads into aligned buffers, bypassing the page
      cache; a file system that refuses ``O_DIRECT`` is an :class:`~wsiarray.OpenError`
      at open.
    - ``"preload"``: ``"direct"``, and a read whose tiles fill at least half of
      their byte span (a whole level, a band of it) first reads that span
      (1 MiB to 1 GiB) with large parallel ``O_DIRECT`` reads, then decodes from memory.

    Example:
        >>> parse_file_access(None), parse_file_access("mmap")
        ('pread', 'mmap')
        >>> parse_file_access("O_DIRECT")
        Traceback (most recent call last):
        ...
        wsiarray.errors.ArgumentError: file_access must be one of (...), got 'O_DIRECT'
    """
    if file_access is None:
        return DEFAULT_FILE_ACCESS
    if not isinstance(file_access, str) or file_access not in FILE_ACCESS_MODES:
        raise ArgumentError(f"file_access must be one of {FILE_ACCESS_MODES}, got {file_access!r}")
    return file_access


def parse_source(source: Any, storage_options: Any = None) -> str:
    """A local path (absolute) or, for an fsspec URL, a :class:`~wsiarray._remote.RemoteSource`.

    ``scheme://...`` with a scheme other than ``file`` is a URL; ``file://`` URLs
    become local paths. ``storage_options`` (a dict for fsspec) apply to URLs
    only. A :class:`~wsiarray._remote.RemoteSource` passes through (given
    ``storage_options`` replace its own).

    Example:
        >>> parse_source("file:///data/a%20b.svs")
        '/data/a b.svs'
        >>> parse_source("https://example.org/slide.svs").protocol
        'https'
        >>> parse_source("slide.svs", {"anon": True})
        Traceback (most recent call last):
        ...
        wsiarray.errors.ArgumentError: storage_options apply to URLs (s3://, https://, ...), not to ...
    """
    if storage_options is not None and not isinstance(storage_options, dict):
        raise ArgumentError(f"storage_options must be a dict, got {type(storage_options).__name__}")
    if isinstance(source, RemoteSource):
        if storage_options is None:
            return source
        return RemoteSource(source.url, source.protocol, storage_options)
    if not isinstance(source, (str, bytes, os.PathLike)):
        raise ArgumentError(f"a slide is a path or a URL, got {type(source).__name__}")
    text = os.fsdecode(os.fspath(source))
    scheme, sep, rest = text.partition("://")
    if sep and scheme and (scheme[0].isalpha() and all(c.isalnum() or c in "+-." for c in scheme)):
        protocol = scheme.lower()
        if protocol == "file":
            from urllib.parse import unquote, urlsplit

            parts = urlsplit(text)
            if parts.netloc not in ("", "localhost"):
                raise ArgumentError(f"{text}: file:// URLs of other hosts are not supported")
            text = unquote(parts.path)
        else:
            if not rest:
                raise ArgumentError(f"{text!r} names no object")
            return RemoteSource(text, protocol, storage_options)
    if storage_options is not None:
        raise ArgumentError(
            f"storage_options apply to URLs (s3://, https://, ...), not to the local path {text!r}")
    return os.path.abspath(text)


@functools.cache
def _remote_options(values: tuple[str | None, ...]) -> RemoteOptions:
    default = RemoteOptions()
    parsed: dict[str, Any] = {}
    for (field, env), value in zip(REMOTE_ENV.items(), values, strict=True):
        if value is None or value == "":
            continue
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        minimum = 1 if field == "concurrency" else 0
        if not math.isfinite(number) or number < minimum or (field == "max_span" and number <= 0):
            raise ArgumentError(f"{env} must be a number >= {minimum}, got {value!r}")
        if field in ("max_gap", "max_span"):
            parsed[field] = int(number * (1 << 20))
        elif field in ("retries", "concurrency"):
            parsed[field] = int(number)
        else:
            parsed[field] = number
    return dataclasses.replace(default, **parsed)


def parse_remote_options() -> RemoteOptions:
    """How remote (URL) slides are read, from the environment, read when a URL is opened.

    - ``WSIARRAY_REMOTE_MAX_GAP_MIB`` (default 8): byte ranges of one request less
      than this apart are fetched as one range (an object store request costs
      tens of ms of latency, which buys megabytes of bandwidth);
    - ``WSIARRAY_REMOTE_MAX_SPAN_MIB`` (16): a merged range grows to at most this;
    - ``WSIARRAY_REMOTE_RETRIES`` (5): attempts after the first on transient errors;
    - ``WSIARRAY_REMOTE_TIMEOUT`` (60): seconds one range's attempt may take;
    - ``WSIARRAY_REMOTE_CONCURRENCY`` (16): ranges in flight at once per request.

    Example:
        >>> options = parse_remote_options()
        >>> options.max_gap >> 20, options.retries
        (8, 5)
    """
    return _remote_options(tuple(os.environ.get(env) for env in REMOTE_ENV.values()))


def parse_apply_icc(apply_icc: Any, default: bool) -> bool:
    """Whether a read returns sRGB pixels: ``apply_icc``, or ``default`` (the handle's) when None.

    Only bools: ``1`` or ``"yes"`` are refused rather than guessed at.

    Example:
        >>> parse_apply_icc(None, True), parse_apply_icc(np.False_, True)
        (True, False)
        >>> parse_apply_icc(1, False)
        Traceback (most recent call last):
        ...
        wsiarray.errors.ArgumentError: apply_icc must be True, False or None, got 1
    """
    if apply_icc is None:
        return default
    if isinstance(apply_icc, (bool, np.bool_)):
        return bool(apply_icc)
    raise ArgumentError(f"apply_icc must be True, False or None, got {apply_icc!r}")


def icc_mode(channels: int, dtype: np.dtype, where: str) -> str:
    """The pixel mode (``"RGB"``, ``"RGBA"``) in which an ICC profile is applied to these pixels.

    Only 8-bit RGB and RGBA: littleCMS through Pillow transforms those in place;
    other sample types and channel counts are an :class:`~wsiarray.UnsupportedError`.
    Alpha is kept as stored.

    Example:
        >>> icc_mode(4, np.dtype("uint8"), "slide.tif")
        'RGBA'
        >>> icc_mode(3, np.dtype("uint16"), "slide.tif")
        Traceback (most recent call last):
        ...
        wsiarray.errors.UnsupportedError: slide.tif: apply_icc=True needs uint8 RGB or RGBA pixels, ...
    """
    if np.dtype(dtype) == np.uint8 and channels in (3, 4):
        return "RGB" if channels == 3 else "RGBA"
    raise UnsupportedError(
        f"{where}: apply_icc=True needs uint8 RGB or RGBA pixels, the slide has {channels} channel(s) of "
        f"{np.dtype(dtype)}; read it with apply_icc=False"
    )


def parse_progress(progress: Any) -> bool:
    """Whether to show a progress bar: ``progress``, or for ``None`` whether stderr is a terminal.

    Only bools and None: ``1`` or ``"yes"`` are refused rather than guessed at.
    In a notebook the bar is shown when asked for with ``progress=True``.

    Example:
        >>> parse_progress(True), parse_progress(np.False_)
        (True, False)
        >>> parse_progress("yes")
        Traceback (most recent call last):
        ...
        wsiarray.errors.ArgumentError: progress must be True, False or None, got 'yes'
    """
    if progress is None:
        return sys.stderr.isatty()
    if isinstance(progress, (bool, np.bool_)):
        return bool(progress)
    raise ArgumentError(f"progress must be True, False or None, got {progress!r}")


def parse_batch_options(batch_size: Any, prefetch_factor: Any) -> tuple[int, int]:
    """``(batch_size >= 1, prefetch_factor >= 0)``.

    Example:
        >>> parse_batch_options(32, 2)
        (32, 2)
    """
    checked = []
    for name, value, least in (("batch_size", batch_size, 1), ("prefetch_factor", prefetch_factor, 0)):
        try:
            number = _integer(value)
        except (TypeError, ValueError):
            number = least - 1
        if number < least:
            raise ArgumentError(f"{name} must be an integer >= {least}, got {value!r}")
        checked.append(number)
    return checked[0], checked[1]


def to_level(x: int, y: int, downsample: float) -> tuple[int, int]:
    """A level-0 location in a level's pixels: ``floor(x / downsample)``, OpenSlide's rule.

    Example:
        >>> to_level(1001, -3, 4.0)
        (250, -1)
    """
    if downsample == 1.0:
        return x, y
    return math.floor(x / downsample), math.floor(y / downsample)


def to_level_locations(locations: np.ndarray, downsample: float) -> np.ndarray:
    """:func:`to_level` for an ``(N, 2)`` array.

    Example:
        >>> to_level_locations(np.array([[1001, -3]]), 4.0).tolist()
        [[250, -1]]
    """
    if downsample == 1.0:
        return locations.astype(np.int64)
    return np.floor(locations / downsample).astype(np.int64)


@functools.cache
def _memory_bytes() -> int:
    """Physical memory, or the container's (cgroup) memory limit when that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


@functools.cache
def _environment_limit(value: str) -> int:
    try:
        mib = float(value)
    except ValueError:
        mib = -1.0
    if not (math.isfinite(mib) and mib > 0):
        raise ArgumentError(f"{LIMIT_ENV} must be a number of MiB > 0, got {value!r}")
    return int(mib * (1 << 20))


def _limit() -> int:
    if _limit_bytes is not None:
        return _limit_bytes
    value = os.environ.get(LIMIT_ENV)
    return _environment_limit(value) if value else _memory_bytes()


def request_limit(max_mib: float | None = None) -> float:
    """Set (when given) and return the most memory one request may allocate, in MiB.

    A request (one region, a whole level, or one batch of a batch iterator)
    whose output needs more is refused with
    :class:`~wsiarray.RequestTooLargeError` before anything is allocated: it
    could only end in swapping or the OOM killer. The default is the
    machine's physical memory (or the container's cgroup limit when lower):
    a fixed number, so whether a request is accepted does not depend on what
    else runs at the moment. The environment variable
    ``WSIARRAY_MAX_REQUEST_MIB`` overrides it, and ``request_limit(max_mib)``
    overrides both for this process (``max_mib=0`` returns to them).

    Example:
        >>> before = wsiarray.request_limit()
        >>> wsiarray.request_limit(max_mib=64)
        64.0
        >>> slide.read_region((0, 0), (8192, 8192))
        Traceback (most recent call last):
        ...
        wsiarray.errors.RequestTooLargeError: the request needs 201326592 bytes (192.0 MiB: ...
        >>> wsiarray.request_limit(max_mib=0) == before
        True
    """
    global _limit_bytes
    if max_mib is not None:
        if isinstance(max_mib, bool) or not isinstance(max_mib, (int, float)) or not (
                math.isfinite(max_mib) and max_mib >= 0):
            raise ArgumentError(f"max_mib must be a number >= 0, got {max_mib!r}")
        _limit_bytes = int(max_mib * (1 << 20)) if max_mib > 0 else None
    return _limit() / (1 << 20)


def _mib(nbytes: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):.1f} {unit}"
    return f"{nbytes / (1 << 20):.1f} MiB"


def check_request_size(count: int, width: int, height: int, channels: int, dtype: np.dtype) -> None:
    """Refuse an output of ``count`` regions of ``width x height`` pixels above :func:`request_limit`.

    Every entry point that allocates an output calls this first (one region:
    ``count=1``; a batch iterator: one batch).

    Example:
        >>> check_request_size(1, 256, 256, 3, np.dtype("uint8"))
        >>> check_request_size(10**7, 224, 224, 3, np.dtype("uint8"))
        Traceback (most recent call last):
        ...
        wsiarray.errors.RequestTooLargeError: the request needs 1505280000000 bytes (1.4 TiB: ...
    """
    nbytes = count * width * height * channels * dtype.itemsize
    limit = _limit()
    if nbytes <= limit:
        return
    raise RequestTooLargeError(
        f"the request needs {nbytes} bytes ({_mib(nbytes)}: {count} x {width}x{height} pixels x {channels} "
        f"{dtype.name}), more than the limit of {limit} bytes ({_mib(limit)}); ask for a smaller size or "
        f"batch_size, or raise the limit with wsiarray.request_limit(max_mib=...) or {LIMIT_ENV}"
    )


def parse_mpp(mpp: Any) -> tuple[float, float]:
    """A target pixel size: ``(x, y)`` micrometres per output pixel, both finite and > 0.

    Example:
        >>> parse_mpp(0.5), parse_mpp((0.5, 1))
        ((0.5, 0.5), (0.5, 1.0))
        >>> parse_mpp(0)
        Traceback (most recent call last):
        ...
        wsiarray.errors.ArgumentError: mpp must be a number > 0 or a pair of them (micrometres per ...
    """
    problem = f"mpp must be a number > 0 or a pair of them (micrometres per output pixel), got {mpp!r}"
    values: Any = mpp
    if not isinstance(mpp, (str, bytes)) and not isinstance(mpp, (bool, np.bool_)):
        try:
            values = (mpp, mpp) if np.ndim(mpp) == 0 else tuple(mpp)
        except (TypeError, ValueError):
            values = None
    else:
        values = None
    if values is None or len(values) != 2:
        raise ArgumentError(problem)
    out = []
    for value in values:
        if isinstance(value, (bool, np.bool_, str, bytes)) or not isinstance(value, (int, float, np.number)):
            raise ArgumentError(problem)
        number = float(value)
        if not (math.isfinite(number) and number > 0):
            raise ArgumentError(problem)
        out.append(number)
    return out[0], out[1]


#: What ``dct=`` accepts: True, False or ``"snap"``.
DctLike = bool | str


def parse_dct(dct: Any) -> DctLike:
    """``dct=``: True, False or ``"snap"`` (decode JPEG tiles smaller with libjpeg's DCT scaling).

    True scales when the request lies on the DCT block grid or the factor is at least
    4 blocks; ``"snap"`` also moves a request whose factors are whole blocks onto the
    grid, by at most half an output pixel; False decodes at full size.

    Example:
        >>> parse_dct(False), parse_dct("snap")
        (False, 'snap')
    """
    if isinstance(dct, str) and dct == "snap":
        return "snap"
    if not isinstance(dct, (bool, np.bool_)):
        raise ArgumentError(f"dct must be True, False or 'snap', got {dct!r}")
    return bool(dct)


def dct_code(dct: DctLike) -> int:
    """The native resampler's code of a parsed ``dct``: 0 off, 1 on, 2 snap.

    Example:
        >>> dct_code(True), dct_code("snap")
        (1, 2)
    """
    return 2 if dct == "snap" else int(bool(dct))


@dataclasses.dataclass(frozen=True)
class MppTarget:
    """Where a read at a target pixel size comes from (made by :func:`mpp_target`).

    - ``level``: the level read;
    - ``factor``: ``(fx, fy)`` level pixels per output pixel (``(1.0, 1.0)`` when exact);
    - ``per_level0``: ``(sx, sy)`` level pixels per level-0 pixel (``w / w0``, ``h / h0``);
    - ``exact``: the level's own pixel size is the target: read it directly;
    - ``shape``: ``(width, height)`` of the whole slide at the target, in output pixels.

    Example:
        >>> t = mpp_target((1.0, 1.0), (0.25, 0.25), ((1000, 800), (250, 200)))
        >>> t.level, t.factor, t.exact, t.shape
        (1, (1.0, 1.0), True, (250, 200))
    """

    level: int
    factor: tuple[float, float]
    per_level0: tuple[float, float]
    exact: bool
    shape: tuple[int, int]

    def level_xy(self, x: float, y: float) -> tuple[float, float]:
        """A level-0 position in the read level's pixels (fractional).

        Example:
            >>> mpp_target(0.5, (0.25, 0.25), ((1000, 800),)).level_xy(10, 3)
            (10.0, 3.0)
        """
        return x * self.per_level0[0], y * self.per_level0[1]


def _tolerance(size: int) -> float:
    # A level's size is rounded to whole pixels (763 / 2 -> 382), so its
    # per-axis pixel size is off the nominal one by up to 1 / size.
    return max(MPP_TOLERANCE, 1.0 / size)


def mpp_target(mpp: Any, slide_mpp: tuple[float, float] | None,
               dimensions: Sequence[tuple[int, int]], level: Any = None) -> MppTarget:
    """Choose the level for a read at ``mpp`` and the factors left to downsample.

    ``slide_mpp`` is level 0's pixel size (``Slide.mpp``), ``dimensions`` every
    level's ``(width, height)``, largest first. A ``level`` given as well (not
    None) is refused. The level is the coarsest whose per-axis pixel size
    (``mpp0 * w0 / w``) is no larger than the target, within
    :data:`MPP_TOLERANCE` or one pixel over the level (``1 / w``, as level sizes
    are rounded), whichever is larger; when it equals the target within that
    tolerance the read is ``exact``.

    Example:
        >>> mpp_target(2.0, (0.25, 0.25), ((1000, 800), (250, 200))).factor
        (2.0, 2.0)
        >>> mpp_target(2.0, None, ((1000, 800),))
        Traceback (most recent call last):
        ...
        wsiarray.errors.ArgumentError: mpp= needs the slide's pixel size, and this slide does not say it ...
    """
    if level is not None:
        raise ArgumentError(f"give level or mpp, not both (got level={level!r}, mpp={mpp!r})")
    target = parse_mpp(mpp)
    if slide_mpp is None:
        raise ArgumentError("mpp= needs the slide's pixel size, and this slide does not say it "
                            "(slide.mpp is None); read by level instead")
    w0, h0 = dimensions[0]
    # Level-0 pixels per output pixel, per axis.
    want = (target[0] / slide_mpp[0], target[1] / slide_mpp[1])
    if min(want) < 1 - MPP_TOLERANCE:
        raise ArgumentError(
            f"mpp={mpp!r} is finer than level 0's pixel size {tuple(slide_mpp)!r}: reads at a target "
            "resolution only downsample"
        )
    chosen = 0
    for index, (w, h) in enumerate(dimensions):
        if w0 / w <= want[0] * (1 + _tolerance(w)) and h0 / h <= want[1] * (1 + _tolerance(h)):
            chosen = index
    w, h = dimensions[chosen]
    factor = (want[0] * w / w0, want[1] * h / h0)
    exact = abs(factor[0] - 1) <= _tolerance(w) and abs(factor[1] - 1) <= _tolerance(h)
    if exact:
        return MppTarget(chosen, (1.0, 1.0), (w / w0, h / h0), True, (w, h))
    # The whole slide, its last pixel partly outside (fill) rather than cut off.
    shape = (max(1, math.ceil(w0 / want[0] - 1e-6)), max(1, math.ceil(h0 / want[1] - 1e-6)))
    return MppTarget(chosen, factor, (w / w0, h / h0), False, shape)
