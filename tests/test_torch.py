"""``wsiarray.torch.PatchDataset``, a map-style dataset; the DataLoader test needs torch installed."""

from __future__ import annotations

import importlib.util
import multiprocessing
import pickle

import numpy as np
import pytest
from wsitest import SyntheticFactory, SyntheticSpec, assert_pixels_equal

import wsiarray
from wsiarray.torch import PatchDataset

A = SyntheticSpec("torch-a", width=600, height=400, compression="jpeg", photometric="ycbcr",
                  subsampling=(2, 2), pyramid="chain", steps=(2,))
B = SyntheticSpec("torch-b", width=500, height=300, compression="zlib", tile=(128, 128), pyramid="chain",
                  steps=(2,))
HAVE_TORCH = importlib.util.find_spec("torch") is not None
SIZE = (64, 48)


@pytest.fixture(scope="module")
def items(synthetic: SyntheticFactory) -> list[tuple[object, tuple[int, int]]]:
    a, b = synthetic(A), synthetic(B)
    slide_b = wsiarray.open(b)
    rng = np.random.default_rng(0)
    out: list[tuple[object, tuple[int, int]]] = []
    for i in range(20):
        source = a if i % 2 else slide_b
        out.append((source, (int(rng.integers(-20, 560)), int(rng.integers(-20, 380)))))
    return out


def expected(items: list[tuple[object, tuple[int, int]]], level: int = 0) -> list[np.ndarray]:
    out = []
    for source, location in items:
        slide = source if isinstance(source, wsiarray.Slide) else wsiarray.open(source)
        out.append(slide.read_region(location, SIZE, level))
    return out


@pytest.mark.parametrize("level", [0, 1])
def test_items_and_batches(items: list, level: int) -> None:
    ds = PatchDataset(items, SIZE, level, num_workers=2)
    want = expected(items, level)
    assert len(ds) == 20
    for i in (0, 5, 19, -1):
        assert_pixels_equal(ds[i], want[i], f"dataset[{i}]")
    got = ds.__getitems__([3, 0, 17, 3])
    for patch, i in zip(got, [3, 0, 17, 3], strict=True):
        assert_pixels_equal(patch, want[i], f"__getitems__ {i}")
    assert ds.__getitems__([]) == []
    with pytest.raises(IndexError):
        ds[20]


def test_pickles_as_a_recipe(items: list) -> None:
    ds = PatchDataset(items, SIZE, transform=lambda a: a[..., 0].sum(dtype=np.int64))
    ds[0]  # opens the slides in this process
    state = pickle.dumps(PatchDataset(items, SIZE))
    again = pickle.loads(state)
    want = expected(items)
    assert_pixels_equal(np.stack(again.__getitems__(list(range(20)))), np.stack(want), "unpickled")
    assert ds[4] == want[4][..., 0].sum(dtype=np.int64)
    assert "20 patches" in repr(ds)


def _fetch(ds: PatchDataset, indices: list[int]) -> np.ndarray:
    return np.stack(ds.__getitems__(indices))


def test_spawned_worker_reads_the_same(items: list) -> None:
    """What a spawn-based DataLoader worker does: unpickle the dataset, reopen the slides, read."""
    ds = PatchDataset(items, SIZE)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply_async(_fetch, (ds, [1, 2, 3, 19])).get(timeout=120)
    assert_pixels_equal(got, np.stack([expected(items)[i] for i in (1, 2, 3, 19)]), "spawned worker")


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed (optional)")
@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_dataloader_with_workers(items: list, context: str) -> None:  # pragma: no cover - needs torch
    from torch.utils.data import DataLoader

    ds = PatchDataset(items, SIZE, as_tensor=True)
    if context == "fork":
        ds[0]  # the parent has the slides open (and the thread pool started) when the workers fork
    loader = DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context=context)
    got = np.concatenate([batch.numpy() for batch in loader])
    want = np.stack([p.transpose(2, 0, 1) for p in expected(items)])
    assert_pixels_equal(got, want, "DataLoader batches")
