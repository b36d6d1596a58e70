"""dask.distributed: slide recipes in tasks, and the worker plugin that sets the tile cache."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import wsiarray
from wsiarray.dask import to_dask

distributed = pytest.importorskip("distributed")
import wsiarray.distributed as wdist  # noqa: E402  (needs distributed)


class FakeCache:
    def __init__(self, kind: str, **kwargs: Any) -> None:
        self.kind, self.kwargs = kind, kwargs
        self.hit_count, self.miss_count, self.memory_size = 5, 2, 1024


def test_plugin_sets_the_cache_with_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FakeCache] = []

    def factory(kind: str, **kwargs: Any) -> FakeCache:
        made.append(FakeCache(kind, **kwargs))
        return made[-1]

    monkeypatch.setattr(wdist, "configure_cache", factory)
    plugin = wdist.CachePlugin("shared_memory", memory_capacity=256, record_stat=True)
    plugin.setup(SimpleNamespace())
    assert made[0].kind == "shared_memory"
    assert made[0].kwargs == {"memory_capacity": 256, "record_stat": True}
    assert plugin.stats() == {"type": "shared_memory", "hit_count": 5, "miss_count": 2, "memory_size": 1024}
    worker = SimpleNamespace(plugins={wdist.PLUGIN_NAME: plugin})
    assert wdist._worker_stats(worker)["hit_count"] == 5  # type: ignore[index]
    plugin.teardown(worker)
    assert plugin.stats() == {"type": "shared_memory"}
    import pickle

    clone = pickle.loads(pickle.dumps(plugin))
    assert (clone.cache_type, clone.memory_capacity, clone.cache) == ("shared_memory", 256, None)


def test_local_cluster_channel_means(pyramid_slides: dict[str, str]) -> None:
    """Two worker processes compute level-0 channel means; with the cache, both record hits."""
    path = pyramid_slides["jpeg"]
    with wsiarray.open(path) as slide:
        level0 = slide.read_region((0, 0), slide.level_dimensions[0])
        array = to_dask(slide, 0, chunks=128)  # one 128-px tile per block: 6 x 8 blocks
    tiles = array.numblocks[0] * array.numblocks[1]
    expected = level0.reshape(-1, 3).mean(axis=0)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                 worker_dashboard_address=":0", silence_logs=40) as cluster,
        distributed.Client(cluster) as client,
    ):
        wdist.setup(client, cache="shared_memory", memory_capacity=64)
        workers_per_pass = []
        for _ in range(2):  # the second pass finds every tile in the shared segment
            with distributed.get_task_stream(client) as stream:
                means = array.mean(axis=(0, 1)).compute()
            np.testing.assert_allclose(means, expected, rtol=1e-12)
            # the block reads are fused into the mean's chunk tasks
            workers_per_pass.append({t["worker"] for t in stream.data if "mean_chunk" in str(t["key"])})
            stats = wdist.cache_stats(client)
            assert len(stats) == 2 and all(s is not None for s in stats.values()), stats
            names = {s["name"] for s in stats.values()}  # type: ignore[index]
            assert names == {wdist.segment_name(client)}, "one segment for both workers"
            counters = next(iter(stats.values()))
            assert counters["attached_processes"] == 2  # type: ignore[index]
            # segment-wide counters: each tile decoded once, by whichever worker got it
            assert counters["miss_count"] == tiles  # type: ignore[index]
            assert counters["hit_count"] == tiles * len(workers_per_pass) - tiles  # type: ignore[index]
        assert all(len(workers) == 2 for workers in workers_per_pass), "both workers should read blocks"
        # so in the second pass, which only hit the cache, both workers recorded hits
        # the workers opened the slide from the recipe, in their own processes
        opened = client.run(lambda: wsiarray.file_handles().paths())
        assert all(path in paths for paths in opened.values())
