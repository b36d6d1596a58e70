// The fetcher: reads the compressed bytes of planned tiles, one read per
// run, from a ByteSource (file.hpp: a local file in its access mode, or a
// preloaded span of it; a fault-injecting or remote source can be slotted in
// behind the same interface).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "file.hpp"
#include "plan.hpp"

namespace wsi {

// Reads the bytes of tiles [first, last) of plan.tiles, which must lie in
// one run, with one read into `buffer` (grown as needed); returns where
// tile `first`'s bytes start (the others follow at their file offsets).
// A failure names tile `first`. A source that holds the bytes in memory
// (ByteSource::view) is returned from without a copy.
const uint8_t* fetch_span(const ByteSource& source, const Plan& plan, size_t first, size_t last,
                          std::vector<uint8_t>& buffer, const LevelGeometry& g, const TileLabel& label);

// Where fetch_plan puts each run and tile in one buffer of `bytes` bytes.
struct FetchLayout {
  uint64_t bytes = 0;
  std::vector<uint64_t> run_start;   // per run
  std::vector<uint64_t> tile_start;  // per tile
};
FetchLayout fetch_layout(const Plan& plan);

// Reads every run of the plan into `data` as `layout` says, on up to
// `workers` threads of the pool; a run's bytes come from
// sources[its tiles' PlanTile::file].
void fetch_plan(const std::vector<const ByteSource*>& sources, const Plan& plan, const FetchLayout& layout, uint8_t* data,
                size_t workers, const LevelGeometry& g, const TileLabel& label);

}  // namespace wsi
