#include "fetch.hpp"

#include <string>

#include "error.hpp"
#include "thread_pool.hpp"

namespace wsi {
namespace {

void read_named(const ByteSource& source, uint64_t offset, uint64_t length, uint8_t* dst, const PlanTile& tile,
                const LevelGeometry& g, const TileLabel& label) {
  if (length == 0) return;
  try {
    source.read(offset, length, dst);
  } catch (const Error& e) {
    throw Error(e.kind(), describe_tile(label, g, tile.plane, tile.tx, tile.ty) + ": " + e.what());
  }
}

}  // namespace

const uint8_t* fetch_span(const ByteSource& source, const Plan& plan, size_t first, size_t last,
                          std::vector<uint8_t>& buffer, const LevelGeometry& g, const TileLabel& label) {
  const PlanTile& a = plan.tiles[first];
  const PlanTile& b = plan.tiles[last - 1];
  const uint64_t span = b.offset + b.bytecount - a.offset;
  if (const uint8_t* bytes = source.view(a.offset, span)) return bytes;
  if (buffer.size() < span) buffer.resize(span);
  read_named(source, a.offset, span, buffer.data(), a, g, label);
  return buffer.data();
}

FetchLayout fetch_layout(const Plan& plan) {
  FetchLayout layout;
  layout.run_start.reserve(plan.runs.size());
  layout.tile_start.resize(plan.tiles.size());
  for (const Run& run : plan.runs) {
    layout.run_start.push_back(layout.bytes);
    for (size_t k = 0; k < run.count; ++k) {
      layout.tile_start[run.first + k] = layout.bytes + (plan.tiles[run.first + k].offset - run.offset);
    }
    layout.bytes += run.size;
  }
  return layout;
}

void fetch_plan(const std::vector<const ByteSource*>& sources, const Plan& plan, const FetchLayout& layout,
                uint8_t* data, size_t workers, const LevelGeometry& g, const TileLabel& label) {
  for (const PlanTile& t : plan.tiles) {
    if (t.file >= sources.size()) throw Error(ErrorKind::Argument, "tile in file " + std::to_string(t.file) + " of " + std::to_string(sources.size()));
  }
  parallel_for(plan.runs.size(), workers, [&](size_t i) {
    const Run& run = plan.runs[i];
    const ByteSource& source = *sources[plan.tiles[run.first].file];
    read_named(source, run.offset, run.size, data + layout.run_start[i], plan.tiles[run.first], g, label);
  });
}

}  // namespace wsi
