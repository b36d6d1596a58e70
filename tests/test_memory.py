"""The output-memory pool: large outputs are recycled, never while still in use."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import numpy as np
import pytest
from wsitest import SyntheticSpec, assert_pixels_equal

import wsiarray
from wsiarray._memory import POOLED_OUTPUT_BYTES, channels_first, empty_output

#: 1600 x 1800 RGB = 8.6 MB: big enough to come from the pool.
SPEC = SyntheticSpec("pooled-jpeg", width=1600, height=1800, compression="jpeg")


@pytest.fixture(autouse=True)
def empty_pool() -> Iterator[None]:
    """Each test starts with nothing retained (earlier tests' outputs) and the default limits."""
    before = wsiarray.output_memory()
    wsiarray.output_memory(max_mib=0)
    wsiarray.output_memory(max_mib=before.max_mib)
    yield
    wsiarray.output_memory(max_mib=0)
    wsiarray.output_memory(max_mib=before.max_mib, idle_seconds=before.idle_seconds)


@pytest.fixture(scope="module")
def big_slide(synthetic) -> str:
    return synthetic(SPEC)


def test_large_outputs_are_reused_and_read_the_same(big_slide: str) -> None:
    wsiarray.output_memory(max_mib=1024, idle_seconds=60)
    with wsiarray.open(big_slide) as slide:
        first = slide.read_region()
        assert first.nbytes >= POOLED_OUTPUT_BYTES
        want = first.copy()
        address = first.ctypes.data
        del first
        gc.collect()
        held = wsiarray.output_memory()
        assert held.retained_buffers == 1 and held.retained_mib >= want.nbytes / (1 << 20)
        again = slide.read_region(num_workers=2)
        after = wsiarray.output_memory()
    assert again.ctypes.data == address, "the freed output's memory should have been reused"
    assert after.reused == held.reused + 1 and after.retained_buffers == 0
    assert_pixels_equal(again, want, "a read into recycled memory")


def test_views_keep_the_memory_leased() -> None:
    wsiarray.output_memory(max_mib=1024, idle_seconds=60)
    base = empty_output((2048, 2048, 3), np.dtype(np.uint8))
    base[:] = 7
    view = base[100:200, 5]
    del base
    gc.collect()
    assert wsiarray.output_memory().retained_buffers == 0, "a live view must keep its memory out of the pool"
    other = empty_output((2048, 2048, 3), np.dtype(np.uint8))
    other[:] = 9
    assert not np.shares_memory(view, other)
    assert (view == 7).all()
    del view
    gc.collect()
    assert wsiarray.output_memory().retained_buffers == 1


def test_small_outputs_and_dtypes() -> None:
    small = empty_output((16, 16, 3), np.dtype(np.uint8))
    assert small.flags.owndata, "small arrays are plain numpy allocations"
    big = empty_output((1024, 1024, 3), np.dtype(np.float32))
    assert big.dtype == np.float32 and big.shape == (1024, 1024, 3)
    assert big.flags.c_contiguous and big.flags.writeable
    big[:] = 1.5
    assert float(big.sum()) == 1.5 * big.size


def test_limits_bound_what_is_kept() -> None:
    wsiarray.output_memory(max_mib=20, idle_seconds=60)
    arrays = [empty_output((2048, 2048, 3), np.dtype(np.uint8)) for _ in range(3)]  # 12 MiB each
    del arrays
    gc.collect()
    held = wsiarray.output_memory()
    assert held.retained_buffers == 1 and held.retained_mib <= 20, held
    assert wsiarray.output_memory(max_mib=0).retained_mib == 0


def test_idle_buffers_are_unmapped() -> None:
    # Retained first with a long idle limit: on a loaded machine more than a short
    # limit can pass between the free and the check.
    wsiarray.output_memory(max_mib=1024, idle_seconds=60)
    array = empty_output((2048, 2048, 3), np.dtype(np.uint8))
    del array
    gc.collect()
    assert wsiarray.output_memory().retained_buffers == 1
    wsiarray.output_memory(idle_seconds=0.2)
    deadline = time.monotonic() + 5
    while wsiarray.output_memory().retained_buffers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wsiarray.output_memory().retained_buffers == 0, "the trimmer thread should unmap idle buffers"


def test_bad_limits_are_errors() -> None:
    with pytest.raises(wsiarray.ArgumentError):
        wsiarray.output_memory(max_mib=-1)
    with pytest.raises(wsiarray.ArgumentError):
        wsiarray.output_memory(idle_seconds=float("nan"))


FORK_SCRIPT = textwrap.dedent(
    """
    import gc, os, sys
    import numpy as np
    import wsiarray
    from wsiarray._memory import empty_output

    wsiarray.output_memory(max_mib=1024, idle_seconds=60)
    slide = wsiarray.open(sys.argv[1])
    want = slide.read_region()
    kept = slide.read_region()
    del kept
    gc.collect()
    assert wsiarray.output_memory().retained_buffers == 1
    pid = os.fork()
    if pid == 0:
        ok = wsiarray.output_memory().retained_buffers == 0
        got = slide.read_region(num_workers=2)
        del got
        gc.collect()
        ok = ok and np.array_equal(slide.read_region(), want)
        ok = ok and wsiarray.output_memory().reused == 1
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "child failed"
    assert np.array_equal(slide.read_region(), want)   # the parent's pool still works
    print("FORK-OK")
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_forked_child_starts_with_an_empty_pool(big_slide: str) -> None:
    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT, big_slide],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "FORK-OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize(("dtype", "samples", "channels"), [
    (np.uint8, 3, 3), (np.uint8, 4, 3), (np.uint8, 4, 4), (np.uint8, 1, 1), (np.uint8, 2, 1),
    (np.uint16, 3, 3), (np.float32, 4, 3), (np.float64, 3, 2),
])
@pytest.mark.parametrize(("height", "width"), [(224, 224), (1, 1), (3, 17), (5, 33), (0, 7)])
def test_channels_first_equals_numpy(dtype: type, samples: int, channels: int, height: int,
                                     width: int) -> None:
    # Widths around the 16-pixel vectors of the SSSE3 path and its scalar tail.
    rng = np.random.default_rng(height * 100 + width)
    image = rng.integers(0, 250, (height, width, samples)).astype(dtype)
    got = channels_first(image, channels)
    assert got.shape == (channels, height, width) and got.dtype == image.dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, np.moveaxis(image, -1, 0)[:channels])


def test_channels_first_of_a_pooled_image_with_threads() -> None:
    image = np.random.default_rng(1).integers(0, 255, (1800, 1600, 4), dtype=np.uint8)  # 11.5 MB
    got = channels_first(image, 3, workers=2)
    np.testing.assert_array_equal(got, np.moveaxis(image, -1, 0)[:3])
    assert channels_first(image).shape == (4, 1800, 1600)


def test_channels_first_refuses_what_it_cannot_copy() -> None:
    image = np.zeros((4, 5, 3), np.uint8)
    for bad, channels in [(image[:, ::2], 3), (image, 4), (image, 0)]:
        with pytest.raises(wsiarray.ArgumentError, match="channels_first"):
            channels_first(bad, channels)
