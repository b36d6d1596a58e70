// Memory for large read outputs. A fresh multi-GiB array costs a page fault
// per 4 KiB the decoder first writes (on the 2-core benchmark VM: 1-4 s for a
// 1.58 GB level, against ~3.5 s to decode it), so freed outputs are kept
// mapped for a short while and handed to the next read of a similar size, as
// jemalloc keeps dirty pages and CuPy keeps device blocks. Retention is bounded
// in bytes and in idle time; a background thread unmaps what outlives it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace wsi {

struct OutputMemoryStats {
  uint64_t retained_bytes = 0;    // mapped, unused, waiting for reuse
  uint64_t retained_buffers = 0;
  uint64_t reused = 0;            // acquisitions served from retained buffers
  uint64_t mapped = 0;            // acquisitions that mapped fresh memory
  uint64_t max_bytes = 0;
  double max_idle_seconds = 0;
};

// Page-aligned writable memory for at least `bytes` bytes (uninitialised);
// `*capacity` receives the length to pass back to release_output.
// Throws std::bad_alloc when the system refuses the mapping.
void* acquire_output(size_t bytes, size_t* capacity);

// Returns memory from acquire_output: kept for reuse within the limits, else unmapped.
void release_output(void* data, size_t capacity) noexcept;

// Keep at most `max_bytes` of freed outputs, each at most `max_idle_seconds`
// (0 bytes: unmap at once). Retained buffers beyond the new limits are unmapped.
void set_output_retention(uint64_t max_bytes, double max_idle_seconds);

OutputMemoryStats output_memory_stats();

}  // namespace wsi
