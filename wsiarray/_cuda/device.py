"""Where a GPU read's pixels go: the array module, the GPU, its stream, the cap on GPU work.

A :class:`Target` is resolved once per read from the parsed device (``"cuda"``,
``"cuda:N"``) and the backend (``WSIARRAY_GPU_BACKEND``): CuPy on a GPU, or NumPy for
nvImageCodec's CPU backend (no GPU, no CuPy: what CI runs). :meth:`Target.running`
enters the GPU, takes one of :data:`MAX_CONCURRENT` slots (dask's threaded scheduler
runs many tasks at once on one GPU), uses the calling thread's own non-blocking CUDA
stream and synchronises it before the result leaves, so a returned array is complete.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .._request import device_index, parse_gpu_backend
from ..errors import ArgumentError, GPUUnavailableError
from .codec import EXTRA_HINT

#: Environment variable capping how many reads use one process's GPUs at once.
CONCURRENCY_ENV = "WSIARRAY_GPU_CONCURRENCY"

#: How many reads may use the GPU at once unless :data:`CONCURRENCY_ENV` says otherwise.
MAX_CONCURRENT = 4


def _cap() -> int:
    value = os.environ.get(CONCURRENCY_ENV, "")
    if not value:
        return MAX_CONCURRENT
    if not value.isdigit() or int(value) < 1:
        raise ArgumentError(f"{CONCURRENCY_ENV}={value!r}: expected an integer >= 1")
    return int(value)


_slots_lock = threading.Lock()
_slots: tuple[int, threading.BoundedSemaphore] | None = None
_local = threading.local()


def _semaphore() -> threading.BoundedSemaphore:
    global _slots
    count = _cap()
    with _slots_lock:
        if _slots is None or _slots[0] != count:
            _slots = (count, threading.BoundedSemaphore(count))
        return _slots[1]


def _cupy() -> ModuleType:
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            f"device='cuda' returns CuPy arrays, and CuPy is not installed: {EXTRA_HINT}") from exc
    return cupy


@dataclass(frozen=True)
class Target:
    """Where a read decodes to: ``xp`` (``cupy`` or ``numpy``), the backend and the GPU number.

    Example:
        >>> Target(np, "cpu", None).xp is np
        True
    """

    xp: ModuleType
    backend: str
    index: int | None

    @property
    def on_gpu(self) -> bool:
        """Whether pixels land in GPU memory (CuPy), not in host memory (the CPU backend)."""
        return self.index is not None

    @contextlib.contextmanager
    def running(self) -> Iterator[Any]:
        """Enter the GPU with this thread's stream and a slot; synchronise on the way out.

        Yields the CuPy stream (None for the CPU backend, which needs neither).
        """
        if not self.on_gpu:
            yield None
            return
        cupy = self.xp
        with _semaphore(), cupy.cuda.Device(self.index):
            streams = getattr(_local, "streams", None)
            if streams is None or getattr(_local, "pid", None) != os.getpid():
                streams = _local.streams = {}
                _local.pid = os.getpid()
            stream = streams.get(self.index)
            if stream is None:
                stream = streams[self.index] = cupy.cuda.Stream(non_blocking=True)
            with stream:
                try:
                    yield stream
                finally:
                    stream.synchronize()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised output array on the target."""
        if not self.on_gpu:
            return np.empty(shape, dtype)
        with self.xp.cuda.Device(self.index):
            return self.xp.empty(shape, dtype)


def resolve(device: str, backend: str | None = None) -> Target:
    """The target of a parsed GPU ``device`` (``"cuda"``, ``"cuda:N"``) and ``backend`` (parse_gpu_backend).

    Raises an ``ImportError`` naming the extra without nvImageCodec or CuPy, and
    :class:`~wsiarray.GPUUnavailableError` when CuPy cannot reach the GPU (no driver,
    no such device).

    Example:
        >>> resolve("cuda", backend="cpu").xp.__name__  # doctest: +SKIP
        'numpy'
    """
    from .codec import nvimgcodec

    backend = parse_gpu_backend(backend)
    nvimgcodec()  # the extra's first package: its absence is the error to show
    if backend == "cpu":
        return Target(np, backend, None)
    cupy = _cupy()
    wanted = device_index(device)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        index = cupy.cuda.runtime.getDevice() if wanted is None else wanted
    except Exception as exc:  # cupy's CUDARuntimeError (no driver, ...): its class lives in cupy_backends
        raise GPUUnavailableError(f"device={device!r}: CUDA cannot be used: {exc}") from exc
    if count == 0 or index >= count:
        raise GPUUnavailableError(f"device={device!r}: this machine has {count} CUDA device(s)")
    return Target(cupy, backend, int(index))


def upload(host: np.ndarray, target: Target) -> Any:
    """``host`` as an array on the target: one copy up to the GPU (the array itself for the CPU backend).

    Example:
        >>> upload(np.zeros((2, 2, 3), np.uint8), Target(np, "cpu", None)).shape
        (2, 2, 3)
    """
    if not target.on_gpu:
        return host
    with target.running() as stream:
        out = target.xp.empty(host.shape, host.dtype)
        out.set(np.ascontiguousarray(host), stream=stream)
        return out
