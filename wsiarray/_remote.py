"""Remote byte sources: slides in object storage and over HTTP, read through fsspec.

A URL (``s3://``, ``gs://``, ``az://``, ``https://``, ...) is parsed once, by
:func:`wsiarray._request.parse_source`, into a :class:`RemoteSource`: the URL
itself (a ``str``, so messages, handle keys and recipes treat it as a path) with
its protocol and fsspec storage options. Everything else here works on one:

- :func:`stat` asks the store for the object's size and ETag/version (one
  request) and makes its identity, ``(REMOTE_DEVICE, hash of URL + ETag/version,
  size, 0)``: the handle manager and the tile cache key by it, and a handle whose
  object now has another identity is refused, as a changed local file is.
- :class:`RangeFetcher` fetches byte ranges: all the ranges of one call
  concurrently (the filesystem's async API, or ``cat_file`` per range), each
  attempt bounded by a timeout and retried with exponential backoff on transient
  errors (connection errors, timeouts, HTTP 5xx/429); reads are pinned to the
  ETag or version seen at open where the store allows it (HTTP ``If-Match``,
  S3 ``IfMatch``/``VersionId``). When retries run out it raises
  :class:`~wsiarray.TileReadError` naming the URL and the byte range. The native
  engine calls it once per request with the request's merged ranges.
- :func:`open_file` is the file object the format layer parses (tifffile sees a
  seekable binary file): reads are served from 256 KiB blocks fetched through the
  same fetcher, so opening costs a handful of requests.

fsspec (and s3fs, aiohttp, ...) is imported here, on the first URL opened,
never by ``import wsiarray``. Tunables are environment variables read when a
URL is opened (:func:`wsiarray._request.parse_remote_options`).

Example:
    >>> from wsiarray._request import parse_source
    >>> source = parse_source("s3://bucket/slide.svs", {"anon": True})
    >>> source, source.protocol, isinstance(source, RemoteSource)
    ('s3://bucket/slide.svs', 's3', True)
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ArgumentError, OpenError, TileReadError

__all__ = [
    "BLOCK_SIZE", "REMOTE_DEVICE", "BlockFile", "RangeFetcher", "RemoteObject", "RemoteOptions",
    "RemoteSource", "open_file", "stat",
]

#: The ``st_dev`` of every remote identity: no local device has it.
REMOTE_DEVICE = 0xFFFF_FFFF_FFFF_FF01
#: Block size of the format layer's file object (:func:`open_file`).
BLOCK_SIZE = 256 << 10
#: Blocks it keeps (LRU): 16 MiB.
MAX_BLOCKS = 64


class RemoteSource(str):
    """A remote slide: its URL (the ``str`` value), protocol and fsspec storage options.

    Two sources are equal when URL and options are (a plain ``str`` when the URL
    is); it pickles with its options
    (recipes carry them to dask workers), but its ``repr`` and :meth:`token`
    never show them.

    Example:
        >>> a = RemoteSource("s3://b/k.svs", "s3", {"anon": True})
        >>> a == RemoteSource("s3://b/k.svs", "s3", {"anon": True})
        True
        >>> a == RemoteSource("s3://b/k.svs", "s3", {})
        False
        >>> a == "s3://b/k.svs"
        True
    """

    protocol: str
    storage_options: dict[str, Any]

    def __new__(cls, url: str, protocol: str,
                storage_options: Mapping[str, Any] | None = None) -> RemoteSource:
        self = super().__new__(cls, url)
        self.protocol = protocol
        self.storage_options = dict(storage_options or {})
        return self

    @property
    def url(self) -> str:
        """The URL as a plain ``str``."""
        return str.__str__(self)

    def _options_key(self) -> str:
        return repr(sorted((str(k), repr(v)) for k, v in self.storage_options.items()))

    def __eq__(self, other: object) -> bool:
        # Two sources: URL and options; a plain string: the URL (``slide.path == url``).
        if isinstance(other, RemoteSource):
            return self.url == other.url and self._options_key() == other._options_key()
        return isinstance(other, str) and self.url == other

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.url)

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteSource, (self.url, self.protocol, self.storage_options))

    def token(self) -> str:
        """A digest of the URL alone (no storage options, no secrets): for names and keys.

        Example:
            >>> len(RemoteSource("s3://b/k", "s3", {"secret": "x"}).token())
            16
        """
        return hashlib.blake2b(self.url.encode(), digest_size=8).hexdigest()

    def filesystem(self) -> Any:
        """The fsspec filesystem of this source (fsspec caches instances per options)."""
        import fsspec

        try:
            return fsspec.filesystem(self.protocol, **self.storage_options)
        except ImportError as exc:
            raise OpenError(f"{self.url}: reading {self.protocol}:// URLs needs {exc.name or exc} "
                            "(pip install 'wsiarray[remote]', or gcsfs / adlfs for gs:// and az://)") from exc
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f"{self.url}: storage_options refused by fsspec: {exc}") from exc

    def fs_path(self) -> str:
        """The path as the filesystem wants it (``bucket/key`` for object stores, the URL for HTTP)."""
        if self.protocol in ("http", "https"):
            return self.url
        return self.url.split("://", 1)[1]


@dataclass(frozen=True)
class RemoteOptions:
    """How remote requests are made (from the environment: :func:`wsiarray._request.parse_remote_options`).

    Example:
        >>> RemoteOptions().max_gap >> 20
        8
    """

    #: Ranges of one request less than this apart are fetched as one (bytes).
    max_gap: int = 8 << 20
    #: A merged range grows to at most this (bytes).
    max_span: int = 16 << 20
    #: Attempts after the first, on transient errors.
    retries: int = 5
    #: Seconds one attempt (one range) may take.
    timeout: float = 60.0
    #: Ranges in flight at once per call.
    concurrency: int = 16
    #: First backoff in seconds, doubled each retry (with jitter), at most 8 s.
    backoff: float = 0.1


@dataclass(frozen=True)
class RemoteObject:
    """An object as :func:`stat` saw it: size, ETag, version, and the identity made of them."""

    source: RemoteSource
    size: int
    etag: str | None
    version: str | None

    @property
    def identity(self) -> tuple[int, int, int, int]:
        """``(REMOTE_DEVICE, hash of URL + ETag + version, size, 0)``: the cache's and recipes' key."""
        text = "\0".join((self.source.url, self.etag or "", self.version or ""))
        digest = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        return (REMOTE_DEVICE, digest, self.size, 0)


# The last stat of each source, so the open that follows a stat needs no second request.
_seen: OrderedDict[RemoteSource, RemoteObject] = OrderedDict()
_seen_lock = threading.Lock()


def _info_value(info: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        for key, value in info.items():
            if key.lower() == name.lower() and value not in (None, ""):
                return str(value)
    return None


def stat(source: RemoteSource, options: RemoteOptions | None = None) -> RemoteObject:
    """The object's size and ETag/version now (one request); :class:`~wsiarray.OpenError` if absent.

    Retried like a range on transient errors.
    """
    options = options or _options()
    fs = source.filesystem()

    def info() -> Mapping[str, Any]:
        return fs.info(source.fs_path())

    try:
        found = _retrying(source, "stat", options, info)
    except FileNotFoundError as exc:
        raise OpenError(f"{source.url}: no such object") from exc
    except PermissionError as exc:
        raise OpenError(f"{source.url}: access denied: {exc}") from exc
    except TileReadError as exc:
        raise OpenError(str(exc)) from exc
    except OSError as exc:
        raise OpenError(f"{source.url}: cannot open: {exc}") from exc
    if found.get("type") == "directory":
        raise OpenError(f"{source.url}: is a directory (prefix), not an object")
    size = found.get("size")
    if not isinstance(size, int) or size < 0:
        raise OpenError(f"{source.url}: the server does not say the object's size")
    obj = RemoteObject(source, size, _info_value(found, "ETag", "etag", "md5Hash"),
                       _info_value(found, "VersionId", "version_id", "generation"))
    with _seen_lock:
        _seen[source] = obj
        _seen.move_to_end(source)
        while len(_seen) > 256:
            _seen.popitem(last=False)
    return obj


def seen(source: RemoteSource, identity: Sequence[int] | None = None) -> RemoteObject:
    """The object :func:`stat` saw last (with ``identity``, if given), else a new :func:`stat`."""
    with _seen_lock:
        obj = _seen.get(source)
    if obj is None or (identity is not None and obj.identity != tuple(identity)):
        obj = stat(source)
    if identity is not None and obj.identity != tuple(identity):
        raise OpenError(f"{source.url}: the object changed since this slide handle was created "
                        f"(now {obj.size} bytes, ETag {obj.etag})")
    return obj


def _options() -> RemoteOptions:
    from ._request import parse_remote_options

    return parse_remote_options()


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: connection errors, timeouts, HTTP 5xx and 429."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return True
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    response = getattr(exc, "response", None)
    if status is None and isinstance(response, Mapping):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if isinstance(status, int):
        return status >= 500 or status == 429
    # aiohttp's and botocore's connection errors, by class name (their packages load lazily)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ClientPayloadError", "ClientConnectionError", "ServerTimeoutError", "IncompleteRead",
                "ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError",
                "ResponseStreamingError", "ConnectionClosedError"}:
        return True
    text = str(exc)
    return any(word in text for word in ("500", "502", "503", "504", "Service Unavailable", "InternalError",
                                          "SlowDown", "timed out", "Connection reset", "Server disconnected"))


def _changed(exc: BaseException) -> bool:
    """The store refused a pinned read: the object's ETag changed (HTTP 412, S3 PreconditionFailed)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # s3fs wraps botocore's error in an OSError
        seen.add(id(cause))
        if getattr(cause, "status", None) == 412:
            return True
        response = getattr(cause, "response", None)
        if isinstance(response, Mapping) and response.get("Error", {}).get("Code") == "PreconditionFailed":
            return True
        text = str(cause)
        if "PreconditionFailed" in text or "Precondition Failed" in text or "pre-conditions" in text:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _delay(options: RemoteOptions, attempt: int) -> float:
    return min(8.0, options.backoff * 2**attempt) * (0.5 + random.random() / 2)


def _failure(source: RemoteSource, what: str, attempts: int, exc: BaseException) -> TileReadError:
    if _changed(exc):
        return TileReadError(f"{source.url}: {what}: the object changed since the slide was opened "
                             "(its ETag no longer matches); open it again")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    reason = str(exc) or type(exc).__name__
    return TileReadError(f"{source.url}: {what}: {type(exc).__name__}: {reason}{tries}")


def _retrying(source: RemoteSource, what: str, options: RemoteOptions, call: Any) -> Any:
    """``call()`` with retries on transient errors (blocking; for stat and synchronous filesystems)."""
    for attempt in range(options.retries + 1):
        try:
            return call()
        except (FileNotFoundError, PermissionError):
            raise
        except Exception as exc:
            if attempt == options.retries or not _transient(exc):
                raise _failure(source, what, attempt + 1, exc) from exc
            time.sleep(_delay(options, attempt))
    raise AssertionError("unreachable")


class RangeFetcher:
    """Fetches byte ranges of one object: ``fetcher([(offset, length), ...])`` returns their bytes.

    The native engine calls it once per request, with the request's merged
    ranges. Counts what it fetched (``calls``, ``requests``, ``bytes``).

    Example:
        >>> import fsspec
        >>> fsspec.filesystem("memory").pipe("/doc/fetcher.bin", bytes(range(200)))
        >>> fetch = RangeFetcher(stat(RemoteSource("memory://doc/fetcher.bin", "memory")))
        >>> [len(b) for b in fetch([(0, 4), (100, 10)])], fetch.requests
        ([4, 10], 2)
    """

    def __init__(self, obj: RemoteObject, options: RemoteOptions | None = None) -> None:
        self.object = obj
        self.options = options or _options()
        self.calls = 0
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._fs: Any = None
        self._fs_pid = 0

    def __repr__(self) -> str:
        return f"<RangeFetcher {self.object.source.url!r}: {self.calls} calls, {self.requests} requests>"

    def __call__(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        ranges = [(int(o), int(n)) for o, n in ranges]
        size = self.object.size
        for offset, length in ranges:
            if offset < 0 or length < 0 or offset + length > size:
                raise TileReadError(f"{self.object.source.url}: byte range {offset}+{length} lies past "
                                    f"the end of the object ({size} bytes)")
        with self._lock:
            self.calls += 1
            self.requests += sum(1 for _, n in ranges if n > 0)
            self.bytes += sum(n for _, n in ranges)
        fs = self._filesystem()
        if getattr(fs, "async_impl", False):
            from fsspec.asyn import sync

            return sync(fs.loop, self._fetch_all, fs, ranges)
        return [self._fetch_sync(fs, offset, length) for offset, length in ranges]

    def _filesystem(self) -> Any:
        # One per fetcher and process (fsspec's own instances are per process too).
        pid = os.getpid()
        if self._fs is None or self._fs_pid != pid:
            self._fs, self._fs_pid = self.object.source.filesystem(), pid
        return self._fs

    def _what(self, offset: int, length: int) -> str:
        return f"bytes {offset}-{offset + length - 1} ({length} bytes)"

    def _check(self, data: Any, offset: int, length: int) -> bytes:
        if len(data) != length:
            raise TileReadError(
                f"{self.object.source.url}: {self._what(offset, length)}: the server returned "
                f"{len(data)} bytes (does it support HTTP Range requests?)")
        return bytes(data) if not isinstance(data, bytes) else data

    def _fetch_sync(self, fs: Any, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        path = self.object.source.fs_path()
        data = _retrying(self.object.source, self._what(offset, length), self.options,
                         lambda: fs.cat_file(path, start=offset, end=offset + length))
        return self._check(data, offset, length)

    async def _fetch_all(self, fs: Any, ranges: list[tuple[int, int]]) -> list[bytes]:
        gate = asyncio.Semaphore(max(1, self.options.concurrency))

        async def one(offset: int, length: int) -> bytes:
            if length == 0:
                return b""
            async with gate:
                return await self._fetch_one(fs, offset, length)

        return list(await asyncio.gather(*(one(o, n) for o, n in ranges)))

    async def _fetch_one(self, fs: Any, offset: int, length: int) -> bytes:
        options = self.options
        source = self.object.source
        for attempt in range(options.retries + 1):
            try:
                data = await asyncio.wait_for(self._get(fs, offset, offset + length), options.timeout)
                if len(data) != length and attempt < options.retries:
                    raise ConnectionError(f"short read: {len(data)} of {length} bytes")
                return self._check(data, offset, length)
            except TileReadError:
                raise
            except Exception as exc:
                if attempt == options.retries or not _transient(exc) or _changed(exc):
                    raise _failure(source, self._what(offset, length), attempt + 1, exc) from exc
                await asyncio.sleep(_delay(options, attempt))
        raise AssertionError("unreachable")

    async def _get(self, fs: Any, start: int, end: int) -> bytes:
        """One ranged GET, pinned to the ETag/version seen at open where the protocol allows."""
        obj = self.object
        source = obj.source
        if source.protocol in ("http", "https"):
            headers = {"If-Match": obj.etag} if obj.etag else {}
            return await fs._cat_file(source.url, start=start, end=end, headers=headers)
        if source.protocol in ("s3", "s3a") and hasattr(fs, "_call_s3"):
            bucket, key, version = fs.split_path(source.fs_path())
            pin: dict[str, str] = {}
            if obj.version or version:
                pin["VersionId"] = obj.version or version
            elif obj.etag:
                pin["IfMatch"] = obj.etag
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key,
                                         Range=f"bytes={start}-{end - 1}", **pin)
            body = response["Body"]
            try:
                return await body.read()
            finally:
                body.close()
        return await fs._cat_file(source.fs_path(), start=start, end=end)


class BlockFile(io.RawIOBase):
    """A read-only, seekable file over a :class:`RangeFetcher`, read in cached blocks.

    What the format layer (tifffile) parses: a read fetches the blocks it
    lacks (:data:`BLOCK_SIZE` each, contiguous ones as one range) with one
    fetcher call, and the last :data:`MAX_BLOCKS` blocks are kept.

    Example:
        >>> import fsspec
        >>> fsspec.filesystem("memory").pipe("/doc/block.bin", bytes(range(256)) * 4096)
        >>> fh = BlockFile(RangeFetcher(stat(RemoteSource("memory://doc/block.bin", "memory"))))
        >>> _ = fh.seek(300_000); list(fh.read(3)), fh.fetcher.requests
        ([224, 225, 226], 1)
    """

    def __init__(self, fetcher: RangeFetcher, block_size: int = BLOCK_SIZE,
                 max_blocks: int = MAX_BLOCKS) -> None:
        super().__init__()
        self.fetcher = fetcher
        self.size = fetcher.object.size
        self.name = fetcher.object.source.url
        self._block_size = block_size
        self._max_blocks = max_blocks
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        position = base + int(offset)
        if position < 0:
            raise OSError(f"{self.name}: seek to {position}")
        self._pos = position
        return position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self.size, self._pos + len(view))
        if end <= self._pos:
            return 0
        bs = self._block_size
        first, last = self._pos // bs, (end - 1) // bs
        missing = [b for b in range(first, last + 1) if b not in self._blocks]
        if missing:
            runs: list[list[int]] = []
            for b in missing:
                if runs and runs[-1][-1] == b - 1:
                    runs[-1].append(b)
                else:
                    runs.append([b])
            spans = [(r[0] * bs, min(self.size, (r[-1] + 1) * bs) - r[0] * bs) for r in runs]
            for run, data in zip(runs, self.fetcher(spans), strict=True):
                for i, b in enumerate(run):
                    self._blocks[b] = data[i * bs:(i + 1) * bs]
        written = 0
        for b in range(first, last + 1):
            block = self._blocks[b]
            self._blocks.move_to_end(b)
            start = max(self._pos, b * bs) - b * bs
            stop = min(end, (b + 1) * bs) - b * bs
            view[written:written + stop - start] = block[start:stop]
            written += stop - start
        while len(self._blocks) > max(self._max_blocks, last - first + 1):
            self._blocks.popitem(last=False)
        self._pos = end
        return written


def fetcher(source: RemoteSource, identity: Sequence[int] | None = None) -> RangeFetcher:
    """A fetcher of the object ``source`` names, as :func:`stat` saw it (with ``identity``, if given)."""
    return RangeFetcher(seen(source, identity))


def open_file(source: RemoteSource) -> BlockFile:
    """The object as a seekable binary file (see :class:`BlockFile`), pinned to its last :func:`stat`.

    Example:
        >>> import fsspec
        >>> fsspec.filesystem("memory").pipe("/doc/open_file.bin", b"II*" + bytes(100))
        >>> open_file(RemoteSource("memory://doc/open_file.bin", "memory")).read(3)
        b'II*'
    """
    return BlockFile(fetcher(source))
