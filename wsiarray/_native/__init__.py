"""The native tile engine (C++17, nanobind); see ``docs/architecture.md``."""

from ._engine import Reader, pool_size, set_pool_size

__all__ = ["Reader", "pool_size", "set_pool_size"]
