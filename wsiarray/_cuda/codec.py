"""nvImageCodec: imported on first use, one decoder per thread, backend and GPU.

The backends (:data:`wsiarray._request.GPU_BACKENDS`, chosen by
``WSIARRAY_GPU_BACKEND``) map to nvImageCodec's:

- ``hw``: ``HW_GPU_ONLY`` (the NVJPG engines), then ``GPU_ONLY`` for what they refuse;
- ``cuda``: ``GPU_ONLY`` with Huffman decoding on the GPU for every size
  (``nvjpeg_cuda_decoder:hybrid_huffman_threshold=0``; by default nvJPEG does it on CPU
  threads for images under 1 MP, i.e. every tile);
- ``hybrid``: ``HYBRID_CPU_GPU``;
- ``cpu``: ``CPU_ONLY`` on ``NVIMGCODEC_DEVICE_CPU_ONLY`` (libjpeg-turbo): no driver needed.

Which is fastest is to be measured on a device (``benchmarks/gpu_check.py``).
Decoders are kept per thread (a decoder is not documented as safe to share between
threads that decode at once) and per ``max_num_cpu_threads``: nvImageCodec's default, 0,
starts one thread per core *per decoder*.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType
from typing import Any

from ..errors import GPUUnavailableError

#: What to install for ``device="cuda"``.
EXTRA_HINT = "pip install 'wsiarray[cuda12]' (CUDA 12) or 'wsiarray[cuda13]' (CUDA 13)"

#: CPU threads each GPU decoder may use (Huffman decoding, parsing); the issue's budget.
GPU_DECODER_THREADS = 4

_local = threading.local()


def nvimgcodec() -> ModuleType:
    """``nvidia.nvimgcodec``, or an ``ImportError`` naming the extra to install.

    Example:
        >>> nvimgcodec().__name__  # doctest: +SKIP
        'nvidia.nvimgcodec'
    """
    try:
        from nvidia import nvimgcodec as module
    except ImportError as exc:
        raise ImportError(
            f"device='cuda' decodes with nvImageCodec, which is not installed: {EXTRA_HINT}") from exc
    return module


def _options(backend: str) -> str:
    return "nvjpeg_cuda_decoder:hybrid_huffman_threshold=0" if backend == "cuda" else ""


def _make(backend: str, device_id: int | None, threads: int) -> Any:
    nv = nvimgcodec()
    kinds = {
        "hw": [nv.BackendKind.HW_GPU_ONLY, nv.BackendKind.GPU_ONLY],
        "cuda": [nv.BackendKind.GPU_ONLY],
        "hybrid": [nv.BackendKind.HYBRID_CPU_GPU],
        "cpu": [nv.BackendKind.CPU_ONLY],
    }[backend]
    device = nv.NVIMGCODEC_DEVICE_CPU_ONLY if backend == "cpu" else device_id
    try:
        return nv.Decoder(device_id=device, max_num_cpu_threads=threads,
                          backends=[nv.Backend(kind) for kind in kinds], options=_options(backend))
    except RuntimeError as exc:
        raise GPUUnavailableError(
            f"nvImageCodec could not start its {backend!r} decoder on device {device_id}: {exc} "
            "(no NVIDIA driver or GPU? WSIARRAY_GPU_BACKEND=cpu decodes on the CPU)") from exc


def decoder(backend: str, device_id: int | None, threads: int) -> Any:
    """The calling thread's nvImageCodec decoder for a backend, GPU and CPU thread count.

    ``threads`` is ``max_num_cpu_threads`` (at least 1: never nvImageCodec's "one per core").

    Example:
        >>> decoder("cpu", None, 1).__class__.__name__  # doctest: +SKIP
        'Decoder'
    """
    key = (backend, device_id, max(1, int(threads)))
    cache = getattr(_local, "decoders", None)
    if cache is None or getattr(_local, "pid", None) != os.getpid():
        cache = _local.decoders = {}
        _local.pid = os.getpid()
    found = cache.get(key)
    if found is None:
        found = cache[key] = _make(backend, device_id, key[2])
    return found
