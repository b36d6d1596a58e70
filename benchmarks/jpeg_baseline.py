"""Pure libjpeg-turbo decode time of the tiles of one TIFF level.

Compiles ``jpeg_baseline.c`` (``cc -O2 ... -ljpeg -lpthread``) into the benchmark cache
directory on first use, hands it the level's tile offsets, byte counts and JPEGTables
(taken from tifffile, written to a small binary parameter file) and runs it. The C
program loads the whole file into memory first and times only the decode loop, so the
number is the decode floor a reader of this level cannot beat with this libjpeg.

Example::

    >>> from benchmarks.jpeg_baseline import JpegBaseline
    >>> base = JpegBaseline("slide.tif", level=0)  # doctest: +SKIP
    >>> base.decode_seconds(threads=1)  # doctest: +SKIP
    2.71
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from .synthetic import cache_dir

__all__ = ["JpegBaseline", "baseline_version", "build_baseline"]

_SOURCE = Path(__file__).with_name("jpeg_baseline.c")
_MAGIC = b"WSIJPB01"


def build_baseline(cc: str | None = None) -> Path:
    """Compile ``jpeg_baseline.c`` into the cache directory (once per source version).

    The binary is named after a hash of the source, so edits rebuild it.

    Example::

        >>> build_baseline().name  # doctest: +SKIP
        'jpeg_baseline-3f2a91c0'
    """
    source = _SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:8]
    exe = cache_dir() / f"jpeg_baseline-{digest}"
    if exe.exists():
        return exe
    cc = cc or os.environ.get("CC") or shutil.which("cc") or "gcc"
    tmp = exe.with_name(exe.name + f".tmp{os.getpid()}")
    cmd = [cc, "-O2", "-Wall", "-o", str(tmp), str(_SOURCE), "-ljpeg", "-lpthread"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        msg = f"compiling the libjpeg baseline failed: {' '.join(cmd)}\n{e.stderr}"
        raise RuntimeError(msg) from e
    tmp.replace(exe)
    return exe


def baseline_version() -> str:
    """Return the libjpeg(-turbo) version the baseline was compiled against.

    Example::

        >>> baseline_version()  # doctest: +SKIP
        'libjpeg-turbo 2.1.5 (JPEG_LIB_VERSION 62)'
    """
    proc = subprocess.run([str(build_baseline()), "--version"], capture_output=True,
                          text=True, check=True)
    return proc.stdout.strip()


class JpegBaseline:
    """Runs the libjpeg-turbo decode loop over all tiles of one level of ``path``.

    Example::

        >>> JpegBaseline("slide.tif").decode_seconds(threads=2)  # doctest: +SKIP
        1.39
    """

    def __init__(self, path: str | os.PathLike[str], level: int = 0) -> None:
        """Read the level's tile table with tifffile and write the parameter file."""
        self.path = Path(path)
        self.exe = build_baseline()
        with tifffile.TiffFile(self.path) as tif:
            page = tif.pages[level]
            if page.compression != tifffile.COMPRESSION.JPEG or not page.is_tiled:
                msg = f"{path} level {level} is not a tiled JPEG image"
                raise ValueError(msg)
            photometric = int(page.photometric)
            if photometric not in (2, 6) or page.samplesperpixel != 3:
                msg = f"baseline supports RGB/YCbCr JPEG only, got {page.photometric!r}"
                raise ValueError(msg)
            offsets = np.asarray(page.dataoffsets, dtype="<u8")
            counts = np.asarray(page.databytecounts, dtype="<u8")
            tables = bytes(page.jpegtables or b"")
            self.shape: tuple[int, int] = (page.imagelength, page.imagewidth)
            self.tile: tuple[int, int] = (page.tilelength, page.tilewidth)
            self.photometric = photometric
        self.ntiles = len(offsets)
        self.has_tables = bool(tables)
        across = -(-self.shape[1] // self.tile[1])
        header = _MAGIC + struct.pack(
            "<8Q", self.ntiles, self.tile[1], self.tile[0], self.shape[1],
            self.shape[0], across, photometric, len(tables),
        )
        fd, name = tempfile.mkstemp(prefix="jpeg_baseline_", suffix=".bin",
                                    dir=cache_dir())
        with os.fdopen(fd, "wb") as f:
            f.write(header + offsets.tobytes() + counts.tobytes() + tables)
        self.params = Path(name)

    def close(self) -> None:
        """Remove the parameter file."""
        self.params.unlink(missing_ok=True)

    def __enter__(self) -> JpegBaseline:
        """Context manager entry."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Context manager exit: :meth:`close`."""
        self.close()

    def decode_seconds(self, threads: int = 1, mode: str = "tile") -> float:
        """Run the decode loop once and return its wall seconds (decode loop only).

        ``mode="tile"`` decodes into one reused tile buffer per thread (pure decode);
        ``mode="full"`` decodes straight into a freshly allocated full-level array,
        so the time includes faulting in that output memory; ``mode="fullhuge"``
        also asks for transparent huge pages (``madvise``), as numpy does.
        """
        return self.decode_times(threads, mode)[0]

    def decode_times(self, threads: int = 1, mode: str = "tile") -> tuple[float, float]:
        """Like :meth:`decode_seconds`, returning ``(wall, cpu)`` seconds of the loop.

        ``cpu`` is the CPU time of all decode threads together.
        """
        return self._run(threads, mode)

    def decode_array(self, threads: int = 1) -> np.ndarray:
        """Decode the level in ``full`` mode and return it as (h, w, 3) uint8.

        Used to check the baseline's pixels against tifffile. The image passes
        through a raw file in the cache directory, removed before returning.
        """
        fd, name = tempfile.mkstemp(prefix="jpeg_baseline_", suffix=".raw",
                                    dir=cache_dir())
        os.close(fd)
        raw = Path(name)
        try:
            self._run(threads, "full", raw)
            return np.fromfile(raw, dtype=np.uint8).reshape(*self.shape, 3)
        finally:
            raw.unlink(missing_ok=True)

    def _run(self, threads: int, mode: str, out: Path | None = None) -> tuple[float, float]:
        cmd = [str(self.exe), str(self.path), str(self.params), str(threads), mode]
        if out is not None:
            cmd.append(str(out))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            msg = f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}"
            raise RuntimeError(msg)
        m = re.search(r"seconds=([0-9.eE+-]+) cpu_seconds=([0-9.eE+-]+)", proc.stdout)
        if m is None:
            msg = f"unexpected output from {cmd[0]}: {proc.stdout!r}"
            raise RuntimeError(msg)
        return float(m.group(1)), float(m.group(2))
