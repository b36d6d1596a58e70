"""The native tile engine (C++17, nanobind); see ``docs/architecture.md``."""

from ._engine import (
    Reader,
    cache_clear,
    cache_configure,
    cache_detach,
    cache_record,
    cache_stats,
    cache_unlink,
    dct_scale,
    empty_output,
    output_memory,
    plan_region,
    pool_size,
    read_batch,
    read_resampled,
    set_pool_size,
    stream_header,
)

__all__ = [
    "Reader",
    "cache_clear",
    "cache_configure",
    "cache_detach",
    "cache_record",
    "cache_stats",
    "cache_unlink",
    "dct_scale",
    "empty_output",
    "output_memory",
    "plan_region",
    "pool_size",
    "read_batch",
    "read_resampled",
    "set_pool_size",
    "stream_header",
]
