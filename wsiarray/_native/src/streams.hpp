// JPEG tiles handed out as standalone code streams, for a decoder outside
// the engine (nvImageCodec on a GPU: wsiarray/_cuda). The same plan and
// fetch as a region read (plan.hpp, fetch.hpp), then per tile: its header
// read with the level's tables and checked against the TIFF exactly as the
// native JPEG decoder checks it (inspect_jpeg), and the level's tables
// spliced in front of its own segments, with an Adobe APP14 segment for
// RGB-coded tiles (jpeg_splice_prefix; the prefixes are built once per level
// by Reader::add_level), whose own JFIF APP0 segment, if any, is left out
// (jpeg_jfif_bytes). Nothing is decoded here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "plan.hpp"
#include "reader.hpp"

namespace wsi {

// What a planned tile becomes.
enum class StreamKind : uint8_t {
  Stream = 0,  // decode spans[i] (a standalone JPEG of frames[i] pixels)
  Zeros = 1,   // never written: black, as the CPU path paints it
  Fill = 2,    // never written in a level whose missing tiles are background: the fill pixel
};

struct TileStreams {
  Plan plan;                     // placements: in_tile, out_x/out_y, whole; fills
  std::vector<uint8_t> data;     // every standalone stream, one after another
  std::vector<uint64_t> spans;   // per tile: start and length in data (0, 0 unless Stream)
  std::vector<uint8_t> kind;     // per tile: a StreamKind
  std::vector<uint32_t> frames;  // per tile: the frame's width and height (the decoded size)
};

// Empty when the level's tiles can be handed out as standalone JPEG streams
// that decode to the native path's pixels (single-plane, 8-bit, 3-sample
// JPEG tiles decoded to RGB, stored, not placed or restart intervals), else
// why not. Other levels are decoded by the native engine.
std::string jpeg_export_problem(const LevelDesc& level);

// Plans `region` of `level`, reads its tiles' bytes (up to `workers`
// threads of the pool) and fills `out`. Throws as a region read does: bad
// tile tables (TileReadError), a tile whose header disagrees with the TIFF or
// is not a JPEG (TileDecodeError naming the tile), or Unsupported for a
// level jpeg_export_problem refuses.
void export_jpeg_streams(const Reader& reader, size_t level, const Region& region, size_t workers, TileStreams& out);

// One region of a batch of exports.
struct StreamRequest {
  const Reader* reader = nullptr;
  size_t level = 0;
  Region region;
};

// export_jpeg_streams for every request, one after another, concatenated
// into `out` (its plan holds every request's tiles, in request order; no
// fills: the caller fills the whole output first) with `request[i]` the
// request of tile i. Stream spans index out.data.
void export_jpeg_batch(const std::vector<StreamRequest>& requests, size_t workers, TileStreams& out,
                       std::vector<uint32_t>& request);

}  // namespace wsi
