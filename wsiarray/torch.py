"""A map-style PyTorch dataset of patches; PyTorch itself stays optional.

:class:`PatchDataset` needs nothing from PyTorch: ``torch.utils.data.DataLoader``
only asks for ``__len__`` and ``__getitem__`` (and, since PyTorch 2.1, uses
``__getitems__`` to fetch a whole batch in one call, which here is one native
batch read on wsiarray's thread pool). Slides pickle as recipes (path, file
identity), so the dataset travels to ``spawn`` and ``fork`` DataLoader workers
and each worker reopens the files once. ``torch`` is imported only when
``as_tensor=True`` asks for tensors. With ``device="cuda"`` patches are decoded on the
GPU (CuPy arrays; tensors on the GPU through DLPack, no copy).

Example::

    from torch.utils.data import DataLoader
    from wsiarray.torch import PatchDataset

    items = [("a.svs", (0, 0)), ("a.svs", (224, 0)), ("b.svs", (1000, 2000))]
    loader = DataLoader(PatchDataset(items, (224, 224), as_tensor=True), batch_size=32,
                        num_workers=2, multiprocessing_context="spawn")
    for batch in loader:          # uint8 tensor (32, 3, 224, 224)
        ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ._request import parse_device, parse_location, parse_size, parse_workers
from .slide import Slide, read_regions

__all__ = ["PatchDataset"]

Source = Slide | str | os.PathLike[str]


class PatchDataset:
    """Patches ``items[i] = (slide_or_path, (x, y))`` of ``size`` ``(width, height)`` at ``level``.

    ``dataset[i]`` is an ``(h, w, c)`` array (``(c, h, w)`` tensor with ``as_tensor=True``),
    passed through ``transform`` when given. Locations are level-0 pixels, as in
    :meth:`wsiarray.Slide.read_region`; pixels outside the image are ``fill``.
    ``num_workers`` threads of the native pool decode each ``__getitems__`` batch.
    ``device="cuda"`` (or ``"cuda:N"``) decodes on the GPU: patches are CuPy arrays, and
    tensors (``as_tensor=True``) are on that GPU, shared with CuPy through DLPack. Use it
    in the main process (``DataLoader(num_workers=0)``): CUDA does not survive ``fork``.
    Arguments follow :meth:`wsiarray.Slide.read_region`'s rules; the level and
    fill are checked against each slide when its first patch is read.

    Example:
        >>> ds = PatchDataset([(path, (0, 0)), (path, (224, 0))], (224, 224))
        >>> len(ds), ds[1].shape
        (2, (224, 224, 3))
        >>> [p.shape for p in ds.__getitems__([0, 1])]
        [(224, 224, 3), (224, 224, 3)]
    """

    def __init__(
        self,
        items: Iterable[tuple[Source, Sequence[int]]],
        size: tuple[int, int],
        level: int = 0,
        *,
        fill: float | Sequence[float] | None = None,
        transform: Callable[[Any], Any] | None = None,
        as_tensor: bool = False,
        num_workers: int = 1,
        device: str = "cpu",
    ) -> None:
        sources: list[Source] = []
        index_of: dict[Any, int] = {}
        which: list[int] = []
        points: list[tuple[int, int]] = []
        for source, location in items:
            key: Any = id(source) if isinstance(source, Slide) else os.path.abspath(os.fspath(source))
            if key not in index_of:
                index_of[key] = len(sources)
                sources.append(source if isinstance(source, Slide) else os.fspath(source))
            which.append(index_of[key])
            points.append(parse_location(location))
        width, height = parse_size(size)
        parse_workers(num_workers)
        self.device = parse_device(device)
        self._sources = sources
        self._which = np.asarray(which, np.int64)
        self._locations = np.asarray(points, np.int64).reshape(-1, 2)
        self.size = (width, height)
        self.level = level
        self.fill = fill
        self.transform = transform
        self.as_tensor = bool(as_tensor)
        self.num_workers = num_workers
        self._slides: dict[int, Slide] = {}

    def __len__(self) -> int:
        return len(self._which)

    def _slide(self, index: int) -> Slide:
        slide = self._slides.get(index)
        if slide is None:
            source = self._sources[index]
            slide = source if isinstance(source, Slide) else Slide(source)
            self._slides[index] = slide
        return slide

    def _items(self, indices: Sequence[int]) -> list[tuple[Slide, tuple[int, int]]]:
        count = len(self)
        out = []
        for i in indices:
            i = int(i)
            if not -count <= i < count:
                raise IndexError(f"index {i} out of range for {count} patches")
            x, y = self._locations[i]
            out.append((self._slide(int(self._which[i])), (int(x), int(y))))
        return out

    def _finish(self, patch: Any) -> Any:
        out: Any = patch
        if self.as_tensor:
            import torch

            if isinstance(patch, np.ndarray):
                out = torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1)))
            else:  # a CuPy array: the same GPU memory, through DLPack
                out = torch.from_dlpack(patch.transpose(2, 0, 1)).contiguous()
        return self.transform(out) if self.transform is not None else out

    def __getitem__(self, index: int) -> Any:
        ((slide, location),) = self._items([index])
        patch = slide.read_region(location, self.size, self.level, fill=self.fill,
                                  num_workers=self.num_workers, device=self.device)
        return self._finish(patch)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Many patches in one native batch read (what DataLoader calls for a whole batch)."""
        if len(indices) == 0:
            return []
        batches = read_regions(self._items(indices), self.size, level=self.level, fill=self.fill,
                               num_workers=self.num_workers, batch_size=len(indices), prefetch_factor=0,
                               device=self.device)
        batch = next(batches)
        return [self._finish(patch) for patch in batch]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slides"] = {}  # reopened (once) in the process that unpickles the dataset
        return state

    def __repr__(self) -> str:
        return (f"<wsiarray.torch.PatchDataset {len(self)} patches of {self.size[0]}x{self.size[1]} "
                f"at level {self.level} from {len(self._sources)} slides>")
