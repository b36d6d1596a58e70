"""The handle manager: one open file per slide, shared; bounded; reopened on demand; identity checked.

And the configuration read at first use, not at import.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import wsiarray
from wsiarray._handles import HandleManager


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def small_manager():  # type: ignore[no-untyped-def]
    """The process's manager with capacity 4, restored (and emptied) afterwards."""
    manager = wsiarray.file_handles()
    before = manager.capacity
    manager.clear()
    manager.capacity = 4
    yield manager
    manager.capacity = before
    manager.clear()


@pytest.fixture(scope="module")
def copies(pyramid_slides: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """12 distinct files (copies of the jpeg pyramid)."""
    folder = tmp_path_factory.mktemp("copies")
    out = []
    for i in range(12):
        target = folder / f"copy-{i}.tif"
        shutil.copy(pyramid_slides["jpeg"], target)
        out.append(str(target))
    return out


def test_handles_share_one_opened_file(small_manager: HandleManager, copies: list[str]) -> None:
    opened = small_manager.opened
    a, b = wsiarray.open(copies[0]), wsiarray.open(copies[0])
    a.read_region((0, 0), (8, 8))
    b.read_region((0, 0), (8, 8))
    assert small_manager.opened == opened + 1 and small_manager.paths() == [copies[0]]
    a.close()  # another open handle still uses the file
    assert small_manager.paths() == [copies[0]]
    b.close()  # the last open handle: the file closes
    assert small_manager.paths() == []


def test_open_files_are_bounded_and_reopened_on_demand(small_manager: HandleManager,
                                                       copies: list[str]) -> None:
    baseline = open_descriptors()
    slides = [wsiarray.open(path) for path in copies]  # 12 handles, 4 files open at most
    want = slides[0].read_region((0, 0), (64, 64))
    for _ in range(2):
        for slide in slides:
            np.testing.assert_array_equal(slide.read_region((0, 0), (64, 64)), want)
            assert len(small_manager) <= 4
            assert open_descriptors() <= baseline + 4
    assert small_manager.paths() == copies[-4:]  # least recently used first
    reopened = small_manager.opened
    assert slides[0].level_count == 3  # evicted: reopened (its identity checked) on use
    assert small_manager.opened == reopened + 1
    for slide in slides:
        slide.close()


def test_read_regions_over_many_files_is_bounded(small_manager: HandleManager, copies: list[str]) -> None:
    baseline = open_descriptors()
    items = [(path, (i * 7, i * 5)) for i, path in enumerate(copies * 2)]
    batches = list(wsiarray.read_regions(items, (32, 32), batch_size=3))
    assert sum(len(b) for b in batches) == len(items)
    assert open_descriptors() <= baseline + 4 + 3  # the manager's files and one batch's
    with wsiarray.open(copies[0]) as slide:
        for i, (_, location) in enumerate(items):
            np.testing.assert_array_equal(batches[i // 3][i % 3], slide.read_region(location, (32, 32)))


def test_clear_and_capacity(small_manager: HandleManager, copies: list[str]) -> None:
    with wsiarray.open(copies[1]) as slide:
        slide.read_region((0, 0), (8, 8))
        assert len(small_manager) == 1
        small_manager.clear()
        assert len(small_manager) == 0
        slide.read_region((0, 0), (8, 8))  # reopened
        assert len(small_manager) == 1
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(wsiarray.ArgumentError, match="capacity"):
            wsiarray.file_handles(capacity=bad)  # type: ignore[arg-type]
    assert wsiarray.file_handles(capacity=2).capacity == 2


def test_a_file_changed_while_evicted_is_refused(small_manager: HandleManager, tmp_path: Path,
                                                 copies: list[str]) -> None:
    path = tmp_path / "changes.tif"
    shutil.copy(copies[0], path)
    slide = wsiarray.open(path)
    slide.read_region((0, 0), (8, 8))
    small_manager.clear()
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(wsiarray.OpenError, match="changed since this slide handle was created"):
        slide.read_region((0, 0), (8, 8))


def test_unpickled_handles_reuse_the_open_file(small_manager: HandleManager, copies: list[str]) -> None:
    with wsiarray.open(copies[2]) as slide:
        slide.read_region((0, 0), (8, 8))
        opened = small_manager.opened
        for _ in range(5):
            pickle.loads(pickle.dumps(slide)).read_region((0, 0), (8, 8))
        assert small_manager.opened == opened


def test_threads_share_and_evict_without_errors(small_manager: HandleManager, copies: list[str]) -> None:
    small_manager.capacity = 2
    want = wsiarray.open(copies[0]).read_region((100, 100), (64, 64))
    slides = [wsiarray.open(path) for path in copies]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for i in rng.integers(0, len(slides), 60):
                np.testing.assert_array_equal(slides[int(i)].read_region((100, 100), (64, 64)), want)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(small_manager) <= 2


# -- configuration at first use ----------------------------------------------------------------


def run_python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    full.pop("WSIARRAY_CACHE", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=full)


def test_import_reads_no_configuration(tmp_path: Path, pyramid_slides: dict[str, str]) -> None:
    (tmp_path / ".wsiarray.json").write_text("{not json")
    env = {"HOME": str(tmp_path), "WSIARRAY_CONFIG": ""}
    code = ("import os, wsiarray\n"
            "assert 'WSIARRAY_CACHE' not in os.environ, 'import must not write the environment'\n"
            "try:\n"
            f"    wsiarray.open({pyramid_slides['jpeg']!r})\n"
            "except wsiarray.ArgumentError as exc:\n"
            "    print('first use:', exc)\n")
    result = run_python(code, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "first use: invalid wsiarray cache configuration" in result.stdout


def test_configuration_applies_at_first_use(tmp_path: Path, pyramid_slides: dict[str, str]) -> None:
    (tmp_path / ".wsiarray.json").write_text(json.dumps({"cache": {"type": "per_process",
                                                                   "memory_capacity": 16}}))
    code = ("import os, wsiarray\n"
            "assert 'WSIARRAY_CACHE' not in os.environ\n"
            f"s = wsiarray.open({pyramid_slides['jpeg']!r}); s.read_region((0, 0), (8, 8))\n"
            "c = wsiarray.cache()\n"
            "print(c.type, c.config['memory_capacity'], c.miss_count, os.environ['WSIARRAY_CACHE'])\n")
    result = run_python(code, {"HOME": str(tmp_path), "WSIARRAY_CONFIG": ""}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["per_process", "16", "1", "per_process:16"]
