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
- **device**: ``"cpu"``; ``"cuda"`` is reserved for the GPU path.
- Level-0 locations become level locations with OpenSlide's rule
  ``floor(x / downsample)``.

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

import math
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .errors import ArgumentError, UnsupportedError

__all__ = [
    "DEVICES",
    "FillLike",
    "parse_batch_options",
    "parse_device",
    "parse_fill",
    "parse_level",
    "parse_location",
    "parse_locations",
    "parse_pair",
    "parse_size",
    "parse_workers",
    "to_level",
    "to_level_locations",
]

#: What ``fill=`` accepts: a number, or one number per channel (None: the default).
FillLike = float | Sequence[float] | None

#: Devices a read may target; only ``"cpu"`` is built so far.
DEVICES = ("cpu", "cuda")


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
    """``"cpu"``; ``"cuda"`` raises :class:`~wsiarray.UnsupportedError` until the GPU path lands.

    Example:
        >>> parse_device("cpu")
        'cpu'
    """
    if device not in DEVICES:
        raise ArgumentError(f"device must be one of {DEVICES}, got {device!r}")
    if device != "cpu":
        raise UnsupportedError(
            f"device={device!r} needs the GPU path, which is not built yet; use device='cpu'"
        )
    return str(device)


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
