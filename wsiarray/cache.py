"""The tile cache: ``nocache``, ``per_process`` or ``shared_memory``, with cuCIM's controls.

Decoded tiles are kept by the native engine under a key of (file identity:
device, inode, size, mtime; level; plane; tile index), compared in full, so
tiles of two files are never confused. Every read through wsiarray
(``read_region``, dask chunks, xarray) goes through the process's cache.

- ``per_process``: private to this process, thread-safe, sharded, LRU within a
  byte budget and an item budget; when threads race for a missing tile one
  decodes it and the others wait. A forked child starts with an empty one.
- ``shared_memory``: one named POSIX shared-memory segment that forked and
  spawned processes attach to by name (dask workers, DataLoader workers),
  with robust process-shared locks: a process killed mid-insert leaves the
  others working. The last process to detach unlinks it. Its memory is
  reserved in ``/dev/shm`` when it is created, so a ``/dev/shm`` too small for
  it (Docker's default is 64 MiB) raises :class:`~wsiarray.CacheError` then,
  never SIGBUS later; a segment of another user, or writable by others, is
  refused with :class:`~wsiarray.CacheError` too.

Defaults, in order of precedence: an explicit :func:`cache` call; the
environment variable ``WSIARRAY_CACHE`` (``TYPE[:MEMORY_MIB[:NAME]]``, e.g.
``per_process:2048``); the ``"cache"`` object of the JSON file named by
``WSIARRAY_CONFIG``, else ``./.wsiarray.json``, else ``~/.wsiarray.json``
(keys ``type``, ``memory_capacity``, ``capacity``, ``record_stat``, ``name``);
else ``nocache``. Nothing is read at import: the environment and the files are
consulted when the first slide is opened or :func:`cache` is first called.
Configuring a cache also sets ``WSIARRAY_CACHE`` in ``os.environ`` so that
processes started later (``spawn``) use the same one; in such a process,
``cache("shared_memory", ...)`` without a ``name`` joins the segment it inherited
(cuCIM's users configure the cache in every DataLoader worker) instead of making
a private one.

Example:
    >>> import wsiarray
    >>> c = wsiarray.cache("per_process", memory_capacity=1024)
    >>> first = slide.read_region((0, 0), (256, 256))  # four 128-px tiles decoded
    >>> again = slide.read_region((0, 0), (256, 256))  # the same four from the cache
    >>> c.hit_count, c.miss_count
    (4, 4)
"""

from __future__ import annotations

import atexit
import json
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _native
from .errors import ArgumentError

if TYPE_CHECKING:
    from .slide import Slide

__all__ = ["CACHE_TYPES", "TileCache", "cache", "configure_from_environment", "ensure_configured",
           "preferred_memory_capacity"]

CACHE_TYPES = ("nocache", "per_process", "shared_memory")
DEFAULT_MEMORY_CAPACITY = 1024  # MiB, as cuCIM
_MIB = 1 << 20
_ENV = "WSIARRAY_CACHE"


def _default_capacity(memory_capacity_mib: int) -> int:
    # cuCIM's default: as many 256x256 RGB tiles as fit in the memory budget.
    return max(1, memory_capacity_mib * _MIB // (256 * 256 * 3))


class TileCache:
    """The process's tile cache; get it with :func:`wsiarray.cache`.

    Sizes follow cuCIM: ``memory_capacity`` is set in MiB and reported in bytes.

    Example:
        >>> c = wsiarray.cache()
        >>> c.type, c.hit_count, c.miss_count
        ('nocache', 0, 0)
    """

    def __init__(self, type: str, memory_capacity: int, capacity: int, record_stat: bool, name: str) -> None:
        self._type = type
        self._memory_capacity = memory_capacity
        self._capacity = capacity
        self._record_stat = record_stat
        self._name = name
        self._counted_before = (0, 0)  # (hits, misses) the counters restart from; see reset_counters

    def _stats(self) -> dict[str, Any]:
        stats = _native.cache_stats()
        if stats is None or self._type == "nocache":
            return {"hits": 0, "misses": 0, "items": 0, "memory_size": 0, "memory_capacity": 0,
                    "capacity": 0, "attached": 0, "record": False}
        return stats

    @property
    def type(self) -> str:
        """``"nocache"``, ``"per_process"`` or ``"shared_memory"``."""
        return self._type

    @property
    def name(self) -> str:
        """Name of the shared-memory segment (empty for the other types)."""
        return self._name

    @property
    def memory_size(self) -> int:
        """Bytes of cache memory holding tiles now."""
        return int(self._stats()["memory_size"])

    @property
    def memory_capacity(self) -> int:
        """The byte budget (what was asked for, rounded down to the cache's 16 KiB pages)."""
        return int(self._stats()["memory_capacity"])

    @property
    def free_memory(self) -> int:
        """Bytes of the budget not holding tiles."""
        stats = self._stats()
        return int(stats["memory_capacity"] - stats["memory_size"])

    @property
    def size(self) -> int:
        """Number of tiles held."""
        return int(self._stats()["items"])

    @property
    def capacity(self) -> int:
        """The item budget."""
        return int(self._stats()["capacity"])

    @property
    def hit_count(self) -> int:
        """Tiles served from the cache (while recording)."""
        return max(0, int(self._stats()["hits"]) - self._counted_before[0])

    @property
    def miss_count(self) -> int:
        """Tiles decoded because the cache did not hold them (while recording)."""
        return max(0, int(self._stats()["misses"]) - self._counted_before[1])

    @property
    def attached_processes(self) -> int:
        """Processes attached to a shared-memory cache (1 for ``per_process``)."""
        return int(self._stats()["attached"])

    @property
    def config(self) -> dict[str, Any]:
        """The settings, in the form :func:`cache` and the JSON file take."""
        return {
            "type": self._type,
            "memory_capacity": self._memory_capacity,
            "capacity": self._capacity,
            "record_stat": self._record_stat,
            "name": self._name,
        }

    def record(self, value: bool | None = None) -> bool:
        """With no argument, whether hits and misses are counted; else turn counting on or off."""
        if value is not None:
            self._record_stat = bool(value)
            _native.cache_record(self._record_stat)
        return self._record_stat

    def reserve(self, memory_capacity: int, capacity: int | None = None) -> None:
        """Set new budgets (MiB, items). The cache is rebuilt empty with them."""
        _configure(self._type, memory_capacity, capacity, self._record_stat, self._name or None)

    def reset_counters(self) -> None:
        """Count hits and misses from zero again; the cached tiles stay (cuCIM's ``record`` does this).

        The counters restart for this process; a shared-memory segment's totals,
        seen by the other processes attached to it, are not changed.

        Example:
            >>> c = wsiarray.cache("per_process", memory_capacity=64)
            >>> patch = slide.read_region((0, 0), (256, 256)); c.reset_counters()
            >>> c.hit_count, c.miss_count, c.size
            (0, 0, 4)
        """
        stats = self._stats()
        self._counted_before = (int(stats["hits"]), int(stats["misses"]))

    def clear(self) -> None:
        """Drop every cached tile and reset the counters.

        Tiles other threads are decoding at that moment are still added when they finish.
        """
        _native.cache_clear()
        self._counted_before = (0, 0)

    def unlink(self) -> None:
        """Remove a shared-memory segment's name now; attached processes keep their mapping."""
        _native.cache_unlink()

    def __repr__(self) -> str:
        return (f"<wsiarray.TileCache {self._type} {self.memory_size}/{self.memory_capacity} bytes "
                f"{self.size}/{self.capacity} tiles hits={self.hit_count} misses={self.miss_count}>")


_current = TileCache("nocache", 0, 0, False, "")


_config_lock = threading.RLock()
#: Whether the process's cache has been set up (by a call, the environment or a file).
_configured = False
#: ``WSIARRAY_CACHE`` as this process found it before configuring anything itself.
_inherited_setting: str | None = None
_inherited_seen = False


def _inherited() -> dict[str, Any] | None:
    """The cache setting this process inherited through ``WSIARRAY_CACHE``, if any."""
    global _inherited_seen, _inherited_setting
    if not _inherited_seen:
        _inherited_seen = True
        _inherited_setting = os.environ.get(_ENV, "").strip() or None
    return _parse_setting(_inherited_setting) if _inherited_setting else None


def _configure(type: str, memory_capacity: int | None, capacity: int | None, record_stat: bool | None,
               name: str | None) -> TileCache:
    global _current, _configured
    if type not in CACHE_TYPES:
        raise ArgumentError(f"unknown cache type {type!r}; expected one of {', '.join(CACHE_TYPES)}")
    memory = int(DEFAULT_MEMORY_CAPACITY if memory_capacity is None else memory_capacity)
    if memory <= 0:
        raise ArgumentError(f"memory_capacity must be a positive number of MiB, got {memory_capacity!r}")
    items = int(_default_capacity(memory) if capacity is None else capacity)
    if items <= 0:
        raise ArgumentError(f"capacity must be a positive number of items, got {capacity!r}")
    record = True if record_stat is None else bool(record_stat)
    inherited = _inherited()
    keep_inherited = False
    if type == "shared_memory":
        if not name and inherited and inherited.get("type") == "shared_memory" and inherited.get("name"):
            # A worker configuring "its" shared cache, as cuCIM's users do in every
            # DataLoader worker, joins the segment its parent handed down instead
            # of making a private one; the segment's creator set its budgets.
            name = str(inherited["name"])
            keep_inherited = True
        name = name or f"/wsiarray-{os.getuid()}-{os.getpid()}"
        if not name.startswith("/"):
            name = "/" + name
        if "/" in name[1:] or len(name) > 200:
            raise ArgumentError(f"invalid shared-memory name {name!r}")
    else:
        name = ""
    with _config_lock:
        _configured = True
        if _current.type == "shared_memory":
            same_segment = (type, name) == (_current.type, _current.name)
            same_budgets = (memory, items) == (_current._memory_capacity, _current._capacity)
            if same_segment and (keep_inherited or same_budgets):
                # Already attached to it: only the recording flag can change.
                _current.record(record)
                return _current
            _native.cache_detach()
            if same_segment:
                # New budgets under the same name: a new segment (processes still
                # attached to the old one keep using it until they reconfigure).
                _native.cache_unlink()
        _native.cache_configure(type, memory * _MIB, items, record, name)
        _current = TileCache(type, memory, items, record, name)
        # Processes started later (spawn) inherit this setting.
        if type == "nocache":
            os.environ[_ENV] = "nocache"
        else:
            os.environ[_ENV] = f"{type}:{memory}:{name}" if name else f"{type}:{memory}"
        return _current


def ensure_configured() -> None:
    """Set up the cache that ``WSIARRAY_CACHE`` or a JSON config file asks for, once, at first use.

    Nothing is read at import; the first slide opened (or the first
    :func:`cache` call) applies the configuration. A bad file raises
    :class:`~wsiarray.ArgumentError` then, and again on every use until fixed.

    Example:
        >>> ensure_configured()   # a no-op once the cache is set up
    """
    if _configured:
        return
    with _config_lock:
        if not _configured:
            configure_from_environment()


def cache(
    type: str | None = None,
    *,
    memory_capacity: int | None = None,
    capacity: int | None = None,
    record_stat: bool | None = None,
    name: str | None = None,
) -> TileCache:
    """Configure the process's tile cache, or with no arguments return the current one.

    ``memory_capacity`` is in MiB (default 1024), ``capacity`` in tiles (default:
    as many 256x256 RGB tiles as the memory holds), ``record_stat`` turns hit and miss
    counting on (default on), ``name`` names the shared-memory segment (default
    ``/wsiarray-UID-PID``; processes that use the same name share the segment, and
    the budgets of the process that created it win).

    Example:
        >>> wsiarray.cache("shared_memory", memory_capacity=2048).type
        'shared_memory'
    """
    if type is None and memory_capacity is None and capacity is None and record_stat is None and name is None:
        ensure_configured()
        return _current
    if type is None:
        type = _current.type if _current.type != "nocache" else "per_process"
    return _configure(type, memory_capacity, capacity, record_stat, name)


def preferred_memory_capacity(
    slide: Slide | None = None,
    image_size: tuple[int, int] | None = None,
    tile_size: tuple[int, int] | None = None,
    patch_size: tuple[int, int] | None = None,
    bytes_per_pixel: int = 3,
) -> int:
    """Cache size in MiB that lets a row-by-row patch scan decode every tile once (cuCIM's formula).

    Sizes are ``(width, height)``; ``slide`` supplies level 0's image and tile size.

    Example:
        >>> wsiarray.preferred_memory_capacity(image_size=(1048576, 1048576),
        ...     tile_size=(256, 256), patch_size=(256, 256))
        1536
    """
    if slide is not None:
        image_size = image_size or slide.level_dimensions[0]
        tile_size = tile_size or slide.level_tile_sizes[0]
    if image_size is None or tile_size is None:
        raise ArgumentError("preferred_memory_capacity needs a slide or image_size and tile_size")
    patch_size = patch_size or tile_size
    (width, height), (tw, th), (_, ph) = image_size, tile_size, patch_size
    tiles_across = math.ceil(width / tw)
    patch_down = min(height + th - 1, ph + th - 1) // th + 1
    total = tiles_across * tw * th * patch_down * bytes_per_pixel
    return math.ceil(total / _MIB)


def _parse_setting(text: str) -> dict[str, Any]:
    """``TYPE[:MEMORY_MIB[:NAME]]`` as :func:`cache`'s keywords."""
    parts = text.split(":", 2)
    settings: dict[str, Any] = {"type": parts[0]}
    if len(parts) > 1 and parts[1]:
        settings["memory_capacity"] = int(parts[1])
    if len(parts) > 2 and parts[2]:
        settings["name"] = parts[2]
    return settings


def _settings_from_environment() -> dict[str, Any] | None:
    text = os.environ.get(_ENV, "").strip()
    if text:
        return _parse_setting(text)
    candidates = [os.environ.get("WSIARRAY_CONFIG"), ".wsiarray.json", Path.home() / ".wsiarray.json"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            with open(candidate) as f:
                data = json.load(f)
            section = data.get("cache") if isinstance(data, dict) else None
            return dict(section) if isinstance(section, dict) else None
    return None


def configure_from_environment() -> None:
    """Apply ``WSIARRAY_CACHE`` or the JSON config file now (:func:`ensure_configured` does it once).

    Example:
        >>> import os
        >>> os.environ["WSIARRAY_CACHE"] = "per_process:64"
        >>> configure_from_environment()
        >>> wsiarray.cache().type, wsiarray.cache().memory_capacity
        ('per_process', 67108864)
    """
    global _configured
    try:
        settings = _settings_from_environment()
    except (OSError, ValueError) as exc:
        raise ArgumentError(f"invalid wsiarray cache configuration: {exc}") from exc
    _inherited()  # note what was handed down before configuring changes it
    if settings and settings.get("type", "nocache") != "nocache":
        _configure(
            settings["type"],
            settings.get("memory_capacity"),
            settings.get("capacity"),
            settings.get("record_stat"),
            settings.get("name"),
        )
    _configured = True


def _after_fork() -> None:
    global _config_lock
    _config_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
atexit.register(_native.cache_detach)
