"""The handle manager: opens, shares, evicts and reopens the process's slide readers.

Modelled on xarray's ``CachingFileManager``: a :class:`~wsiarray.Slide` holds no
open file, only its recipe (path, file identity, options). Each call asks the
process's :class:`HandleManager` for the :class:`~wsiarray._reader.OpenedSlide`
of that recipe (keyed by path, identity and file access mode: handles
opened with different ``file_access=`` never share a reader), which it
opens on first use and then shares with every other handle, dask task,
xarray array and batch of the same file. An opened slide holds one file
descriptor (the native reader's; tifffile's is closed once the file is
parsed), plus one per other file its levels live in (a DICOM series: one
per level file). At most ``capacity`` files are kept open (like xarray's
``file_cache_maxsize``; by default a quarter of the soft ``RLIMIT_NOFILE``, at
most 128 and at least 8, so the defaults work under ``ulimit -n 256`` with room
for everything else); opening one more closes the least recently used, and a
handle that needs it again reopens it, checking first that the file still has
the identity the handle was made with (``OpenError`` otherwise). A read in
flight keeps its reader (and so its descriptor) alive until it returns, so the
process holds at most ``capacity`` descriptors plus those of reads in flight
whose files the manager has already let go (batches read in groups of at most
``capacity`` files, so one batch adds at most ``capacity``).

Explicitly closing the last open handle of a file closes the file at once;
handles that are merely dropped (such as those unpickled in dask tasks) leave it
in the cache for the next task.

Example:
    >>> import wsiarray
    >>> manager = wsiarray.file_handles()
    >>> manager.capacity
    128
    >>> with wsiarray.open(path) as slide:
    ...     slide.path in manager.paths()
    True
"""

from __future__ import annotations

import atexit
import os
import resource
import threading
from collections import OrderedDict
from collections.abc import Callable

from . import _remote
from ._reader import FileIdentity, OpenedSlide
from ._request import DEFAULT_FILE_ACCESS
from .errors import ArgumentError, OpenError

__all__ = [
    "DEFAULT_CAPACITY", "HandleManager", "default_capacity", "file_handles", "file_identity", "manager",
]

#: Most files kept open per process by default (fewer under a low ``RLIMIT_NOFILE``).
DEFAULT_CAPACITY = 128
#: The default leaves three quarters of the descriptor limit to everything else.
_LIMIT_SHARE = 4
#: Fewest files kept open by default, however low the limit.
_MIN_CAPACITY = 8

#: ``(path, identity, file_access)``.
Key = tuple[str, FileIdentity, str]


def file_identity(path: str) -> FileIdentity:
    """``(st_dev, st_ino, st_size, st_mtime_ns)`` of ``path`` now (:class:`~wsiarray.OpenError` if absent).

    A remote source's (:class:`~wsiarray._remote.RemoteSource`) is made of its
    URL, ETag/version and size, asked of the store now (one request).

    Example:
        >>> len(file_identity(path))
        4
    """
    if isinstance(path, _remote.RemoteSource):
        return _remote.stat(path).identity
    try:
        st = os.stat(path)
    except OSError as exc:
        raise OpenError(f"{path}: {exc.strerror or exc}") from exc
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def default_capacity() -> int:
    """Files kept open by default: a quarter of the soft ``RLIMIT_NOFILE``, within 8..128.

    Read when files are opened, so a limit lowered after import is honoured.

    Example:
        >>> 8 <= default_capacity() <= DEFAULT_CAPACITY
        True
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_CAPACITY
    return max(_MIN_CAPACITY, min(DEFAULT_CAPACITY, soft // _LIMIT_SHARE))


class HandleManager:
    """The process's open slides, least recently used first, at most ``capacity`` of them.

    Example:
        >>> m = HandleManager(capacity=2)
        >>> opened = m.acquire(path)
        >>> len(m), opened.path == path
        (1, True)
        >>> m.clear(); len(m)
        0
    """

    def __init__(self, capacity: int | None = None,
                 opener: Callable[[str, FileIdentity, str], OpenedSlide] = OpenedSlide.open) -> None:
        # None: follow default_capacity(), i.e. the descriptor limit of the moment.
        self._capacity = None if capacity is None else _check_capacity(capacity)
        self._opener = opener
        self._open: OrderedDict[Key, OpenedSlide] = OrderedDict()
        self._users: dict[Key, int] = {}
        self._lock = threading.Lock()
        self.opened = 0  # files opened (and reopened) by this manager so far

    @property
    def capacity(self) -> int:
        """Most files kept open at once (set it to ``None`` for the default, :func:`default_capacity`)."""
        return default_capacity() if self._capacity is None else self._capacity

    @capacity.setter
    def capacity(self, value: int | None) -> None:
        with self._lock:
            self._capacity = None if value is None else _check_capacity(value)
            self._evict()

    def acquire(self, path: str, identity: FileIdentity | None = None,
                file_access: str = DEFAULT_FILE_ACCESS, *, check: bool = False) -> OpenedSlide:
        """The opened slide for ``path`` read with ``file_access``, opened now unless it is open already.

        With ``identity``, the file must have it when it is (re)opened, and with
        ``check`` also now if it is open already (:class:`~wsiarray.OpenError`
        otherwise); without, the file's identity now is used.
        """
        fresh = identity is None or check  # the identity is the file's now: no second look
        if fresh:
            now = file_identity(path)
            if identity is not None and now != identity:
                raise OpenError(f"{path}: the file changed since this slide handle was created")
            identity = now
        key = (path, identity, file_access)
        with self._lock:
            opened = self._open.get(key)
            if opened is not None:
                self._open.move_to_end(key)
                return opened
        if not fresh and file_identity(path) != identity:
            raise OpenError(f"{path}: the file changed since this slide handle was created")
        # Parsed outside the lock: other files open meanwhile. Two threads racing
        # for the same file both parse it, and the first one kept wins.
        opened = self._opener(path, identity, file_access)
        with self._lock:
            opened = self._open.setdefault(key, opened)
            self._open.move_to_end(key)
            self.opened += 1
            self._evict()
        return opened

    def retain(self, path: str, identity: FileIdentity, file_access: str = DEFAULT_FILE_ACCESS) -> None:
        """Count one more open handle on the file (in that access mode)."""
        key = (path, identity, file_access)
        with self._lock:
            self._users[key] = self._users.get(key, 0) + 1

    def release(self, path: str, identity: FileIdentity, file_access: str = DEFAULT_FILE_ACCESS, *,
                close: bool) -> None:
        """Count one handle less; with ``close``, close the file when no open handle is left."""
        key = (path, identity, file_access)
        with self._lock:
            users = self._users.get(key, 0) - 1
            if users > 0:
                self._users[key] = users
                return
            self._users.pop(key, None)
            if close:
                self._open.pop(key, None)

    def clear(self) -> None:
        """Close every file (reads in flight finish first); handles reopen them on demand."""
        with self._lock:
            self._open.clear()

    def paths(self) -> list[str]:
        """Paths of the open files, least recently used first."""
        with self._lock:
            return [key[0] for key in self._open]

    def __len__(self) -> int:
        return len(self._open)

    def __repr__(self) -> str:
        return f"<wsiarray.HandleManager {len(self)}/{self.capacity} files open>"

    def _evict(self) -> None:
        capacity = self.capacity
        while len(self._open) > capacity:
            self._open.popitem(last=False)

    def _after_fork(self) -> None:
        # A lock held by another thread at fork() time would never be released.
        self._lock = threading.Lock()


def _check_capacity(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(f"capacity must be an integer >= 1, got {value!r}")
    return value


#: The process's handle manager.
manager = HandleManager()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=manager._after_fork)
# Close the files before the interpreter tears the native module down.
atexit.register(manager.clear)


def file_handles(capacity: int | None = None) -> HandleManager:
    """The process's handle manager; ``capacity`` sets how many files it keeps open.

    Without ``capacity`` set, the manager keeps :func:`default_capacity` files open:
    a quarter of the soft ``RLIMIT_NOFILE``, at most 128. Each open file is one
    descriptor; files beyond the capacity are closed and reopened on demand.

    Example:
        >>> wsiarray.file_handles(capacity=256).capacity
        256
        >>> wsiarray.file_handles().clear()   # close every file; handles reopen on use
        >>> wsiarray.file_handles().capacity = None   # back to the default
    """
    if capacity is not None:
        manager.capacity = capacity
    return manager
