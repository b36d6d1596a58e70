"""GPU decode for ``device="cuda"``: nvImageCodec into CuPy arrays (optional, imported on first use).

Nothing here imports CuPy or ``nvidia.*`` at import time; the first GPU read does
(``import wsiarray`` never imports this package at all). One module per job:

- :mod:`.codec`: nvImageCodec itself: the import (an ``ImportError`` naming the extra
  when missing), the decoder per thread and backend (``hw``, ``cuda``, ``hybrid``,
  ``cpu``), its CPU thread count;
- :mod:`.device`: where pixels go: the array module (CuPy, or NumPy for nvImageCodec's
  CPU backend), the GPU, one non-blocking CUDA stream per thread, synchronised before a
  result leaves, and a cap on concurrent GPU work;
- :mod:`.stage`: the decode stage: the native engine's standalone JPEG streams of one or
  many regions (``Reader.jpeg_streams``) decoded in one batched call into their windows
  of a preallocated output; other codecs decoded by the native CPU path and copied up
  once per request.

The same code runs on a GPU (``xp = cupy``) and, with ``WSIARRAY_GPU_BACKEND=cpu``, on
nvImageCodec's CPU backend into NumPy buffers (``xp = numpy``), which is how CI tests it.
"""

from __future__ import annotations

from .device import Target, resolve, upload
from .stage import read_requests

__all__ = ["Target", "read_requests", "resolve", "upload"]
