"""Progress bars for long operations: whole-level reads and OME-Zarr exports.

One bar, two places to show it: in a Jupyter notebook (an IPython kernel) it is
one output that is updated in place (an HTML ``<progress>`` element with a text
fallback); elsewhere it is a line on standard error redrawn with ``\\r``. A bar
is advanced per chunk, band or dask task, never per tile, and redrawn at most
ten times a second, so it costs nothing next to the work it reports.

Whether to show one is :func:`wsiarray._request.parse_progress`'s rule: ``True``,
``False``, or ``None`` for "when standard error is a terminal".

Example:
    >>> import io
    >>> from wsiarray._progress import Progress
    >>> out = io.StringIO()
    >>> with Progress(3, "reading level 0", stream=out) as bar:
    ...     for _ in range(3):
    ...         bar.advance()
    >>> print(out.getvalue().split("\\r")[-1].strip())
    reading level 0 [########################################] 100% 3/3 | Completed in ...s
"""

from __future__ import annotations

import contextlib
import html
import itertools
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["Progress", "dask_progress", "in_notebook", "row_bands"]

#: Characters of the text bar.
_WIDTH = 40
#: Least time between two redraws, in seconds.
_INTERVAL = 0.1


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython with a kernel attached).

    IPython is never imported here: a process that has not imported it is not a kernel.

    Example:
        >>> in_notebook()
        False
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class Progress:
    """A progress bar of ``total`` steps labelled ``label``; a context manager.

    ``stream`` (default: standard error) receives the text bar outside notebooks.
    ``advance(n)`` moves it on; leaving the ``with`` block draws the final state.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with Progress(4, "export", stream=out) as bar:
        ...     bar.advance(2)
        ...     bar.advance(2)
        >>> "4/4" in out.getvalue()
        True
    """

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None) -> None:
        self.total = max(0, int(total))
        self.label = label
        self.done = 0
        self._stream = stream
        self._start = time.perf_counter()
        self._drawn = 0.0
        self._handle: Any = None
        if stream is None and in_notebook():
            from IPython.display import display

            self._handle = display(self._bundle(), raw=True, display_id=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._draw(final=True, failed=exc[0] is not None)

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more steps done; redraws at most every 0.1 s."""
        self.done = min(self.total, self.done + steps)
        if time.perf_counter() - self._drawn >= _INTERVAL:
            self._draw()

    def _text(self, final: bool = False, failed: bool = False) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = round(fraction * _WIDTH)
        seconds = time.perf_counter() - self._start
        if failed:
            tail = f"stopped after {seconds:.1f}s"
        elif final:
            tail = f"Completed in {seconds:.1f}s"
        else:
            tail = f"{seconds:.1f}s"
        return (
            f"{self.label} [{'#' * filled}{'-' * (_WIDTH - filled)}] {fraction:4.0%} "
            f"{self.done}/{self.total} | {tail}"
        )

    def _bundle(self, final: bool = False, failed: bool = False) -> dict[str, str]:
        text = self._text(final, failed)
        return {
            "text/plain": text,
            "text/html": (
                f'<div><progress value="{self.done}" max="{max(1, self.total)}" '
                f'style="width: 40ex"></progress> {html.escape(text.split("] ", 1)[-1])} '
                f"{html.escape(self.label)}</div>"
            ),
        }

    def _draw(self, final: bool = False, failed: bool = False) -> None:
        self._drawn = time.perf_counter()
        if self._handle is not None:
            self._handle.update(self._bundle(final, failed), raw=True)
            return
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write("\r" + self._text(final, failed) + ("\n" if final else ""))
        stream.flush()


@contextlib.contextmanager
def dask_progress(label: str, show: bool) -> Iterator[None]:
    """While in the block, a :class:`Progress` over the tasks of dask's local schedulers.

    A task is a chunk (read, or read and written), so the bar moves per chunk.
    Dask is imported only when ``show`` is true. A ``dask.distributed`` client
    runs tasks elsewhere: use its dashboard or ``distributed.progress`` there.

    Example:
        >>> import dask.array as da
        >>> with dask_progress("sum", False):
        ...     int(da.ones(10, chunks=5).sum().compute())
        10
    """
    if not show:
        yield
        return
    from dask.callbacks import Callback

    class _Tasks(Callback):  # type: ignore[misc]
        bar: Progress | None = None

        def _start_state(self, dsk: Any, state: Any) -> None:
            self.bar = Progress(sum(len(state[key]) for key in ("ready", "waiting", "running")), label)
            self.bar.__enter__()

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if self.bar is not None:
                self.bar.advance()

        def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
            if self.bar is not None:
                self.bar.__exit__(RuntimeError if errored else None, None, None)
                self.bar = None

    with _Tasks():
        yield


def row_bands(start: int, stop: int, step: int, most: int = 100) -> list[tuple[int, int]]:
    """Bands ``[(y0, y1), ...]`` of rows ``[start, stop)`` whose inner edges are multiples of ``step``.

    With ``step`` a level's tile height no tile is split between two bands. At
    most about ``most`` bands: a bar advanced per band then moves at least 1% at
    a time, and each band is many tiles of work for the native pool.

    Example:
        >>> row_bands(0, 1000, 128)
        [(0, 128), (128, 256), (256, 384), (384, 512), (512, 640), (640, 768), (768, 896), (896, 1000)]
        >>> row_bands(100, 300, 128)
        [(100, 128), (128, 256), (256, 300)]
        >>> len(row_bands(0, 100_000, 256))
        98
    """
    step = max(1, step)
    if stop <= start:
        return []
    first, last = start // step, -(-stop // step)
    per_band = max(1, -(-(last - first) // most)) * step
    edges = range((start // per_band + 1) * per_band, stop, per_band)
    bounds = [start, *edges, stop]
    return list(itertools.pairwise(bounds))
