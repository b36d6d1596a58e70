#include "streams.hpp"

#include <algorithm>
#include <cstring>

#include "error.hpp"
#include "fetch.hpp"
#include "thread_pool.hpp"

namespace wsi {

std::string jpeg_export_problem(const LevelDesc& level) {
  if (level.codec != Codec::Jpeg) return "not a JPEG level";
  if (level.placed()) return "a placed level";
  if (level.planes != 1) return "samples stored in separate planes";
  if (level.bytes_per_sample != 1) return "more than 8 bits per sample";
  if (level.samples_per_plane != 3) return "not 3 samples per pixel";
  // Decoded to RGB (the default for 3 components) or left as stored when stored RGB.
  if (level.jpeg_out_colorspace >= 0 && level.jpeg_out_colorspace != 2 /* JCS_RGB */) {
    return "decoded to a colour space other than RGB";
  }
  if (level.jpeg_prefix[0].empty()) return "its JPEGTables are not a tables-only JPEG stream";
  return std::string();
}

void export_jpeg_streams(const Reader& reader, size_t index, const Region& region, size_t workers,
                         TileStreams& out) {
  const LevelDesc& level = reader.level(index);
  const TileLabel label = reader.label(index);
  const std::string problem = jpeg_export_problem(level);
  if (!problem.empty()) {
    throw Error(ErrorKind::Unsupported, *label.path + ": level " + std::to_string(index) +
                                            " cannot be handed out as JPEG streams: " + problem);
  }
  if (workers == 0) workers = 1;
  Plan& plan = out.plan;
  reader.plan(index, region, workers, plan);
  const LevelGeometry g = level.geometry();
  const FetchLayout layout = fetch_layout(plan);
  std::vector<uint8_t> raw(layout.bytes);
  std::vector<const ByteSource*> sources;
  for (size_t f = 0; f < reader.file_count(); ++f) sources.push_back(&reader.source(f));
  fetch_plan(sources, plan, layout, raw.data(), workers, g, label);

  const size_t n = plan.tiles.size();
  out.kind.assign(n, uint8_t(StreamKind::Stream));
  out.frames.assign(2 * n, 0);
  std::vector<uint8_t> rgb(n, 0);
  std::vector<uint32_t> skip(n, 2);  // bytes of the tile left out: SOI, and a JFIF APP0 on RGB-coded tiles
  const CodecParams params = level.codec_params();
  const TileLayout full = level.tile_layout();
  // Pass 1: check every tile's header (as the native decoder would) and
  // learn its frame and colour coding; nothing is handed out before all pass.
  parallel_for(n, workers, [&](size_t i) {
    const PlanTile& t = plan.tiles[i];
    if (t.bytecount == 0) {
      out.kind[i] = uint8_t(level.missing_is_fill ? StreamKind::Fill : StreamKind::Zeros);
      return;
    }
    const uint8_t* tile = raw.data() + layout.tile_start[i];
    const uint32_t stored_cols = std::min(level.tile_width, level.width - t.tx * level.tile_width);
    const uint32_t stored_rows = std::min(level.tile_height, level.height - t.ty * level.tile_height);
    try {
      if (t.bytecount < 4 || tile[0] != 0xFF || tile[1] != 0xD8) {
        throw Error(ErrorKind::Decode, "JPEG: tile does not start with SOI");
      }
      const TileStream src{tile, size_t(t.bytecount), t.index, stored_rows, stored_cols};
      const JpegTileInfo info = inspect_jpeg(src, params, full);
      if (info.components != 3) throw Error(ErrorKind::Decode, "JPEG tile is not 3 components");
      out.frames[2 * i] = info.width;
      out.frames[2 * i + 1] = info.height;
      rgb[i] = info.rgb_coded ? 1 : 0;
      if (info.rgb_coded) skip[i] = uint32_t(2 + jpeg_jfif_bytes(tile, size_t(t.bytecount)));
    } catch (const Error& e) {
      throw Error(e.kind(), describe_tile(label, g, t.plane, t.tx, t.ty) + ": " + e.what(), e.cause());
    }
  });
  // Pass 2: lay the standalone streams out (prefix + tile[skip:]) and copy.
  out.spans.assign(2 * n, 0);
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    if (out.kind[i] != uint8_t(StreamKind::Stream)) continue;
    const uint64_t size = level.jpeg_prefix[rgb[i]].size() + (plan.tiles[i].bytecount - skip[i]);
    out.spans[2 * i] = total;
    out.spans[2 * i + 1] = size;
    total += size;
  }
  out.data.resize(total);
  parallel_for(n, workers, [&](size_t i) {
    if (out.kind[i] != uint8_t(StreamKind::Stream)) return;
    const std::vector<uint8_t>& prefix = level.jpeg_prefix[rgb[i]];
    uint8_t* dst = out.data.data() + out.spans[2 * i];
    std::memcpy(dst, prefix.data(), prefix.size());
    std::memcpy(dst + prefix.size(), raw.data() + layout.tile_start[i] + skip[i], plan.tiles[i].bytecount - skip[i]);
  });
}

void export_jpeg_batch(const std::vector<StreamRequest>& requests, size_t workers, TileStreams& out,
                       std::vector<uint32_t>& request) {
  out = TileStreams{};
  request.clear();
  TileStreams one;
  for (size_t r = 0; r < requests.size(); ++r) {
    const StreamRequest& q = requests[r];
    if (q.reader == nullptr) throw Error(ErrorKind::Argument, "jpeg_streams_batch: no reader");
    export_jpeg_streams(*q.reader, q.level, q.region, workers, one);
    const uint64_t base = out.data.size();
    out.data.insert(out.data.end(), one.data.begin(), one.data.end());
    for (size_t i = 0; i < one.plan.tiles.size(); ++i) {
      const bool stream = one.kind[i] == uint8_t(StreamKind::Stream);
      out.spans.push_back(stream ? one.spans[2 * i] + base : 0);
      out.spans.push_back(one.spans[2 * i + 1]);
    }
    out.plan.tiles.insert(out.plan.tiles.end(), one.plan.tiles.begin(), one.plan.tiles.end());
    out.kind.insert(out.kind.end(), one.kind.begin(), one.kind.end());
    out.frames.insert(out.frames.end(), one.frames.begin(), one.frames.end());
    request.insert(request.end(), one.plan.tiles.size(), uint32_t(r));
  }
}

}  // namespace wsi
