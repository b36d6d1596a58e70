"""dask.distributed support: a worker plugin that sets each worker's tile cache.

wsiarray's dask arrays need nothing special on a cluster: their tasks carry slide
*recipes* (a :class:`~wsiarray.Slide` pickles as path, file identity and options
and reopens lazily in the worker), never open handles. What a cluster does want is
a tile cache on every worker, and with ``cache="shared_memory"`` one cache segment
shared by all the workers of a host, so a tile decoded by one worker is a hit for
the others. :func:`setup` installs :class:`CachePlugin` with
``Client.register_plugin``; it runs on every current and future worker and calls
:func:`wsiarray.cache` there. For ``shared_memory`` it names the segment after the
scheduler (``/wsiarray-dask-UID-HASH``), so every worker process of one host attaches
to the same segment (each host has its own ``/dev/shm``), and two clusters on one
host do not share.

Example (``client`` is a :class:`distributed.Client`, e.g. of
``LocalCluster(n_workers=2)``; here, of a one-worker cluster):

    >>> import wsiarray, wsiarray.distributed
    >>> wsiarray.distributed.setup(client, cache="shared_memory", memory_capacity=256)
    <wsiarray.distributed.CachePlugin object at ...>
    >>> level0 = wsiarray.open(path).to_dask(level=0, chunks=256)
    >>> level0.mean(axis=(0, 1)).compute().round(1)
    array([131.7, 136.8, 134.1])
    >>> wsiarray.distributed.cache_stats(client)
    {'...': {'type': 'shared_memory', 'name': '/wsiarray-dask-...', 'hit_count': 0, 'miss_count': 48, ...}}

Counters of a shared-memory cache are the segment's (all its processes together).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from distributed import Client, WorkerPlugin

from .cache import cache as configure_cache

__all__ = ["PLUGIN_NAME", "CachePlugin", "cache_stats", "segment_name", "setup"]

#: Name under which :func:`setup` registers the plugin (re-registering replaces it).
PLUGIN_NAME = "wsiarray-cache"

_STAT_NAMES = ("name", "hit_count", "miss_count", "size", "memory_size", "capacity", "memory_capacity",
               "attached_processes")


def segment_name(client: Client) -> str:
    """The shared-memory segment name :func:`setup` gives the workers of ``client``'s cluster.

    One name per scheduler (and user), so the workers of a host share one segment.

    Example:
        >>> segment_name(client)
        '/wsiarray-dask-...-...'
        >>> segment_name(client) == segment_name(client)
        True
    """
    scheduler_id = str(client.scheduler_info().get("id") or client.scheduler.address)
    digest = hashlib.sha1(scheduler_id.encode(), usedforsecurity=False).hexdigest()[:12]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return f"/wsiarray-dask-{uid}-{digest}"


class CachePlugin(WorkerPlugin):
    """Worker plugin calling ``wsiarray.cache(cache, memory_capacity=, capacity=, record_stat=, **options)``.

    With ``cache="shared_memory"`` the workers that use the same ``name=`` option
    attach to one segment (:func:`setup` passes one per cluster); ``"per_process"``
    gives each worker its own; ``"nocache"`` turns caching off. ``memory_capacity`` is
    in MiB, as in cuCIM; the first process to create a segment sets its budgets.
    Extra ``options`` go to ``wsiarray.cache`` unchanged.

    Example:
        >>> client.register_plugin(CachePlugin("per_process", memory_capacity=1024))
        {'...': {'status': 'OK'}}
    """

    name = PLUGIN_NAME
    idempotent = False

    def __init__(
        self,
        cache: str = "shared_memory",
        memory_capacity: int | None = None,
        capacity: int | None = None,
        record_stat: bool | None = True,
        **options: Any,
    ) -> None:
        self.cache_type = cache
        self.memory_capacity = memory_capacity
        self.capacity = capacity
        self.record_stat = record_stat
        self.options = options
        self.cache: Any = None

    def setup(self, worker: Any) -> None:
        """Create (or attach to) this worker's cache; distributed calls it on each worker.

        Example:
            >>> plugin = CachePlugin("per_process", memory_capacity=512)
            >>> plugin.setup(worker)
            >>> plugin.cache.type
            'per_process'
        """
        kwargs: dict[str, Any] = dict(self.options)
        if self.memory_capacity is not None:
            kwargs["memory_capacity"] = self.memory_capacity
        if self.capacity is not None:
            kwargs["capacity"] = self.capacity
        if self.record_stat is not None:
            kwargs["record_stat"] = self.record_stat
        self.cache = configure_cache(self.cache_type, **kwargs)

    def teardown(self, worker: Any) -> None:
        """Forget the cache object (the process's cache setting itself stays).

        Example:
            >>> plugin = CachePlugin("per_process"); plugin.setup(worker)
            >>> plugin.teardown(worker); plugin.stats()
            {'type': 'per_process'}
        """
        self.cache = None

    def stats(self) -> dict[str, Any]:
        """This worker's cache counters (``hit_count``, ``miss_count``, sizes) and type.

        Example:
            >>> plugin = CachePlugin("per_process", memory_capacity=64); plugin.setup(worker)
            >>> plugin.stats()
            {'type': 'per_process', 'name': '', 'hit_count': 0, 'miss_count': 0, 'size': 0, ...}
        """
        out: dict[str, Any] = {"type": self.cache_type}
        if self.cache is None:
            return out
        for name in _STAT_NAMES:
            value = getattr(self.cache, name, None)
            if callable(value):
                value = value()
            if value is not None:
                out[name] = value
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        # ship the settings, never a cache object
        return (_rebuild_plugin, (self.cache_type, self.memory_capacity, self.capacity,
                                  self.record_stat, self.options))


def _rebuild_plugin(cache: str, memory_capacity: int | None, capacity: int | None,
                    record_stat: bool | None, options: dict[str, Any]) -> CachePlugin:
    return CachePlugin(cache, memory_capacity, capacity, record_stat, **options)


def setup(
    client: Client,
    cache: str = "shared_memory",
    memory_capacity: int | None = None,
    capacity: int | None = None,
    record_stat: bool | None = True,
    name: str | None = None,
    **options: Any,
) -> CachePlugin:
    """Set the tile cache of every worker of ``client`` (now and those that join later).

    Registers a :class:`CachePlugin` with ``client.register_plugin`` under
    :data:`PLUGIN_NAME`; calling it again replaces the settings. With
    ``cache="shared_memory"`` the segment is ``name``, default
    :func:`segment_name` (one per cluster, so the workers of a host share it).

    Example:
        >>> wsiarray.distributed.setup(client, cache="shared_memory", memory_capacity=4096)
        <wsiarray.distributed.CachePlugin object at ...>
    """
    if cache == "shared_memory":
        options["name"] = name or segment_name(client)
    elif name is not None:
        options["name"] = name
    plugin = CachePlugin(cache, memory_capacity, capacity, record_stat, **options)
    client.register_plugin(plugin, name=PLUGIN_NAME)
    return plugin


def _worker_stats(dask_worker: Any, name: str = PLUGIN_NAME) -> dict[str, Any] | None:
    plugin = dask_worker.plugins.get(name)
    return plugin.stats() if isinstance(plugin, CachePlugin) else None


def cache_stats(client: Client) -> dict[str, dict[str, Any] | None]:
    """Each worker's cache counters, by worker address (None where no plugin is set).

    Example:
        >>> cache_stats(client)  # no plugin yet
        {'...': None}
        >>> _ = setup(client, "per_process", memory_capacity=64)
        >>> [stats["type"] for stats in cache_stats(client).values()]
        ['per_process']
    """
    return client.run(_worker_stats)
