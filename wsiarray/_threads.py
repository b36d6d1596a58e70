"""Python thread pools started on first use and forgotten in a forked child.

A pool's threads do not exist in a child made by ``fork()``; a child that used
the parent's pool object would wait forever. Each :class:`LazyPool` makes its
executor when first asked and drops it after a fork.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import weakref

__all__ = ["LazyPool"]

_pools: weakref.WeakSet[LazyPool] = weakref.WeakSet()


class LazyPool:
    """A ``ThreadPoolExecutor`` of ``workers`` threads, made on first :meth:`get`.

    Example:
        >>> pool = LazyPool("example", 2)
        >>> pool.get().submit(sum, [1, 2]).result()
        3
    """

    def __init__(self, name: str, workers: int) -> None:
        self._name = name
        self._workers = workers
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        _pools.add(self)

    def get(self) -> concurrent.futures.ThreadPoolExecutor:
        """The executor, started if this process has none yet."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._workers, thread_name_prefix=self._name
                )
            return self._executor

    def _forget(self) -> None:
        # The parent's threads, and whoever held the lock, are not in this child.
        self._executor = None
        self._lock = threading.Lock()


def _after_fork() -> None:
    for pool in list(_pools):
        pool._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
