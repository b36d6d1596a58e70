#include "reader.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "batch_tiles.hpp"
#include "cache.hpp"
#include "error.hpp"
#include "place.hpp"
#include "thread_pool.hpp"

namespace wsi {
namespace {

struct Scratch {
  std::vector<uint8_t> bytes;   // a run's compressed bytes (or a block's assembled JPEG)
  std::vector<uint64_t> ends;   // a block's interval ends in `bytes`
  std::vector<uint64_t> index;  // and their interval numbers in the file
  std::vector<uint8_t> tile;    // one decoded tile, when it cannot go straight to the output
  std::vector<uint8_t> served;  // per tile of a run: already placed from the cache
};

Scratch& thread_scratch() {
  static thread_local Scratch scratch;
  return scratch;
}

uint8_t* grow(std::vector<uint8_t>& buffer, size_t size) {
  if (buffer.size() < size) buffer.resize(size);
  return buffer.data();
}

void fail(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

// At most this much memory holds the tiles several regions of a batch share
// (BatchTiles); past it, further shared tiles are decoded once per region.
constexpr size_t kSharedBytes = size_t(256) << 20;
// Preload bounds (see Reader::preload).
constexpr uint64_t kMinPreload = uint64_t(1) << 20;
constexpr uint64_t kMaxPreload = uint64_t(1) << 30;
// Compressed bytes of a remote request fetched before its runs are decoded
// (more go in several waves of about this much).
constexpr uint64_t kRemoteWaveBytes = uint64_t(128) << 20;

// One request: its plan, and what its threads share read-only.
class RegionRead {
 public:
  // Reads the part of `region` that layer `layer` of a placed level shows
  // (the level itself when it is not placed).
  RegionRead(const Reader& reader, size_t level_index, size_t layer, const Region& region, uint8_t* out,
             size_t pitch, const RequestCache& cache, size_t workers, uint32_t scale, const uint8_t* fill,
             size_t batch = 1)
      : reader_(reader), level_(source(reader.level(level_index), layer)), level_index_(level_index),
        layer_(uint32_t(layer)), file_(reader.file(level_.file)), source_(&reader.source(level_.file)), fill_(fill),
        g_(scaled_geometry(level_.geometry(), scale)), label_{&file_.path(), level_index, level_.page_index},
        cache_(cache),
        out_{out, pitch, region.width, region.height, level_.pixel_bytes()},
        layout_{g_.tile_width, g_.tile_height, g_.samples_per_plane, g_.bytes_per_sample},
        decode_(codec_decoder(level_.codec)), params_(level_.codec_params()), scale_(scale) {
    const LevelDesc& top = reader.level(level_index);
    if (scale != 1 && !can_scale(top, scale)) fail(ErrorKind::Argument, "level cannot be read scaled");
    params_.jpeg.scale_denom = scale;
    if (!top.placed()) {
      // (Levels in one file need no per-plane files: their tiles' `file` is unused.)
      if (!level_.plane_files.empty()) plane_files_ = reader.plane_files(level_);
      make_plan(g_, level_.tables(), file_.size(), region, workers, label_, plan_,
                plane_files_.empty() ? nullptr : plane_files_.data());
      if (level_.codec == Codec::JpegRestart) {
        params_.jpeg.tables = nullptr;  // the assembled stream has the header
        params_.jpeg.tables_size = 0;
        params_.jpeg.scale_denom = level_.dct_scale;
        // libjpeg upsamples subsampled chroma with its neighbours (fancy
        // upsampling) except at 1/8, where it replicates: below that, decode
        // a neighbouring interval on each subsampled side, where there is one,
        // so that the pixels are the whole JPEG's.
        const bool fancy = level_.dct_scale < 8;
        BlockLimits limits;
        limits.margin_x = fancy && level_.scan.mcu_width > 8 ? 1 : 0;
        limits.margin_y = fancy && level_.scan.mcu_height > 8 ? 1 : 0;
        limits.max_tiles_across = kMaxJpegDimension / (level_.tile_width * level_.dct_scale);
        // 4 blocks per worker, as runs, shared among the requests of a batch:
        // every block costs a header parse, and a batch has work for all.
        limits.blocks = workers > 1 ? std::max<size_t>(1, (workers * 4 + batch - 1) / batch) : 1;
        plan_blocks(g_, level_.tables(), plan_, limits, blocks_);
      }
      return;
    }
    std::vector<LevelGeometry> geometries;
    for (const LevelDesc& l : top.layers) geometries.push_back(l.geometry());
    std::vector<Layer> layers;
    for (size_t k = 0; k < top.layers.size(); ++k) {
      const LevelDesc& l = top.layers[k];
      layers.push_back(Layer{&geometries[k], l.tables(), &l.placement,
                             TileLabel{&file_.path(), level_index, l.page_index}});
    }
    // check_layers keeps a placed level's layers in one file.
    make_layer_plan(layers, layer, top.width, top.height, file_.size(), region, workers, plan_);
  }

  void fill() const { fill_rects(out_, plan_.fills, fill_); }

  // Appends (key, decoded bytes) of every written tile the plan covers that
  // goes through the tile path (a restart level's blocks do not).
  void tile_uses(std::vector<std::pair<TileKey, size_t>>& uses) const {
    if (level_.codec == Codec::JpegRestart) return;
    for (const PlanTile& t : plan_.tiles) {
      if (t.bytecount > 0) uses.emplace_back(key(t), layout_.bytes());
    }
  }
  size_t run_count() const { return level_.codec == Codec::JpegRestart ? blocks_.size() : plan_.runs.size(); }

  // With file_access "preload", a dense request (a whole level, a band of
  // it) reads its byte span into memory first (Reader::preload).
  void preload(size_t workers) {
    // (A restart level's blocks read past its plan's tiles: not preloaded;
    // nor is a level whose planes lie in several files.)
    if (plan_.runs.size() < 2 || level_.codec == Codec::JpegRestart || !level_.plane_files.empty()) return;
    uint64_t first = UINT64_MAX, last = 0, bytes = 0;
    for (const PlanTile& t : plan_.tiles) {
      if (t.bytecount == 0) continue;
      first = std::min(first, t.offset);
      last = std::max(last, t.offset + t.bytecount);
      bytes += t.bytecount;
    }
    try {
      preloaded_ = reader_.preload(level_.file, first, last, bytes, workers);
    } catch (const Error& e) {
      throw Error(e.kind(), "level " + std::to_string(label_.level) + " (IFD " + std::to_string(label_.ifd) +
                                "), preloading its tiles' bytes: " + e.what());
    }
    if (preloaded_) source_ = preloaded_.get();
  }

  static const LevelDesc& source(const LevelDesc& level, size_t layer) {
    return level.placed() ? level.layers[layer] : level;
  }

  // A remote file's request (File::remote): adds the byte ranges run `index`
  // reads to `fetch`, to be fetched with the other runs' before any is
  // decoded; returns their bytes. (A local file's are not added.)
  uint64_t remote_ranges(size_t index, RemoteFetch& fetch) const {
    if (level_.codec == Codec::JpegRestart) {
      const Block& b = blocks_[index];
      const uint64_t across = g_.tiles_across();
      uint64_t bytes = 0;
      for (uint32_t row = b.ty0; row < b.ty1; ++row) {
        const uint64_t i0 = row * across + b.tx0, i1 = row * across + b.tx1 - 1;
        const uint64_t start = level_.offsets[i0], span = level_.offsets[i1] + level_.bytecounts[i1] - start;
        fetch.add(file_, *source_, start, span);
        bytes += span;
      }
      return bytes;
    }
    const Run& run = plan_.runs[index];
    const PlanTile& a = plan_.tiles[run.first];
    fetch.add(tile_file(a), level_.plane_files.empty() ? *source_ : reader_.source(a.file), run.offset, run.size);
    return run.size;
  }

  // Reads run `index`; `remote`: the fetched bytes of a remote file's request.
  void read_run(size_t index, const RemoteFetch* remote = nullptr) const {
    if (level_.codec == Codec::JpegRestart) {
      const Block& b = blocks_[index];
      const ByteSource* fetched = remote ? remote->source(file_) : nullptr;
      try {
        read_block(b, fetched ? *fetched : *source_);
      } catch (const Error& e) {
        throw Error(e.kind(), describe_tile(label_, g_, 0, b.tx0, b.ty0) + ": " + e.what(), e.cause());
      }
      return;
    }
    const Run& run = plan_.runs[index];
    Scratch& scratch = thread_scratch();
    // Tiles the cache already holds need no bytes from the file: read only
    // the span from the first to the last tile it does not hold. A hit
    // copies only the covered part, straight from the cache's pages.
    uint8_t* served = grow(scratch.served, run.count);
    size_t first = run.count, last = 0;
    for (size_t k = 0; k < run.count; ++k) {
      const PlanTile& t = plan_.tiles[run.first + k];
      served[k] = t.bytecount > 0 && cache_.find(key(t), layout_.bytes(), coverage(t), [&](const TileView& v) {
                    place_pieces(out_, plan_, t, g_, v);
                  });
      if (!served[k]) {
        first = std::min(first, k);
        last = k + 1;
      }
    }
    if (first >= last) return;
    const PlanTile& a = plan_.tiles[run.first + first];
    const PlanTile& b = plan_.tiles[run.first + last - 1];
    prefault_rows(out_, std::min(a.out_y, b.out_y),
                  std::max(a.out_y + a.in_tile.height, b.out_y + b.in_tile.height));
    // (A run's tiles are in one file: make_plan never merges across files.)
    const TileLabel label = tile_label(a);
    const ByteSource* fetched = remote ? remote->source(tile_file(a)) : nullptr;
    const ByteSource& source = fetched                        ? *fetched
                               : level_.plane_files.empty() ? *source_
                                                            : reader_.source(a.file);
    const uint8_t* bytes = fetch_span(source, plan_, run.first + first, run.first + last, scratch.bytes, g_, label);
    for (size_t k = first; k < last; ++k) {
      if (served[k]) continue;
      const PlanTile& t = plan_.tiles[run.first + k];
      try {
        read_tile(t, bytes + (t.offset - a.offset), scratch);
      } catch (const Error& e) {
        throw Error(e.kind(), describe_tile(label, g_, t.plane, t.tx, t.ty) + ": " + e.what(), e.cause());
      }
    }
  }

 private:
  // The file holding a tile's bytes.
  const File& tile_file(const PlanTile& t) const {
    return level_.plane_files.empty() ? file_ : reader_.file(t.file);
  }
  TileLabel tile_label(const PlanTile& t) const { return TileLabel{&tile_file(t).path(), label_.level, label_.ifd}; }

  TileKey key(const PlanTile& t) const {
    TileKey k;
    k.file = tile_file(t).identity();
    // A scaled read's tiles are other pixels than the level's: another key.
    // So are a placed level's layers' tiles.
    k.level = uint32_t(level_index_) | (layer_ << 16) | (scale_ << 24);
    k.plane = t.plane;
    k.tile = uint64_t(t.ty) * g_.tiles_across() + t.tx;
    return k;
  }

  // Rows and columns of the tile inside the image.
  uint32_t valid_width(const PlanTile& t) const { return std::min(g_.tile_width, g_.width - t.tx * g_.tile_width); }
  uint32_t valid_height(const PlanTile& t) const {
    return std::min(g_.tile_height, g_.height - t.ty * g_.tile_height);
  }

  // The same in the level's full-size tiles: what the tile's stream may hold.
  uint32_t stored_width(const PlanTile& t) const {
    return std::min(level_.tile_width, level_.width - t.tx * level_.tile_width);
  }
  uint32_t stored_height(const PlanTile& t) const {
    return std::min(level_.tile_height, level_.height - t.ty * level_.tile_height);
  }

  Coverage coverage(const PlanTile& t) const {
    return tile_coverage(g_.tile_width, g_.tile_height, t.in_tile.x, t.in_tile.y, t.in_tile.width, t.in_tile.height,
                         valid_width(t), valid_height(t));
  }

  // Decodes a tile to its place in the output: a whole tile straight into
  // it; with a cache that wants the whole tile, into the cache entry (then
  // placed from there) or a scratch tile; without, only the covered window.
  void read_tile(const PlanTile& t, const uint8_t* data, Scratch& scratch) const {
    const bool single = g_.planes == 1;
    const size_t row_bytes = layout_.row_bytes();
    if (t.bytecount == 0) {
      // Never written (offset and count 0): black, as in tifffile, or the
      // fill where the format says missing tiles are background; not cached.
      if (level_.missing_is_fill) {
        place_missing(t, scratch);
      } else if (single && t.piece_count == 0) {
        uint8_t* origin = tile_origin(out_, t, g_);
        const size_t span = size_t(t.in_tile.width) * out_.pixel_bytes;
        for (uint32_t r = 0; r < t.in_tile.height; ++r) std::memset(origin + size_t(r) * out_.pitch, 0, span);
      } else {
        uint8_t* tile = grow(scratch.tile, layout_.bytes());
        std::memset(tile, 0, layout_.bytes());
        const uint8_t* pages[1] = {tile};
        place_pieces(out_, plan_, t, g_, TileView{pages, layout_.bytes(), layout_.bytes()});
      }
      return;
    }
    const TileStream src{data, size_t(t.bytecount), t.index, stored_height(t), stored_width(t)};
    auto decode = [&](const TileTarget* entry, bool keep) -> TileCache::Rows {
      if (t.whole && single) {
        const TileTarget target = output_target(out_, t, g_);
        decode_(src, params_, layout_, target);
        return TileCache::Rows{target.base, out_.pitch, row_bytes, layout_.height};
      }
      if (entry != nullptr) {
        decode_(src, params_, layout_, *entry);  // the cache places it
        return TileCache::Rows{};
      }
      if (!keep && single && t.piece_count == 0) {
        decode_(src, params_, layout_, output_target(out_, t, g_));
        return TileCache::Rows{};
      }
      uint8_t* tile = grow(scratch.tile, layout_.bytes());
      decode_(src, params_, layout_, TileTarget::tile(layout_, tile, row_bytes));
      const uint8_t* pages[1] = {tile};
      place_pieces(out_, plan_, t, g_, TileView{pages, layout_.bytes(), layout_.bytes()});
      return TileCache::Rows{tile, row_bytes, row_bytes, layout_.height};
    };
    cache_.get(key(t), layout_, coverage(t), [&](const TileView& v) { place_pieces(out_, plan_, t, g_, v); },
               decode);
  }

  // A missing tile as the fill pixel (this tile's plane of it).
  void place_missing(const PlanTile& t, Scratch& scratch) const {
    if (g_.planes == 1 && t.piece_count == 0) {
      fill_rects(out_, {Rect{t.out_x, t.out_y, t.in_tile.width, t.in_tile.height}}, fill_);
      return;
    }
    const size_t plane_bytes = g_.plane_bytes();
    uint8_t* tile = grow(scratch.tile, layout_.bytes());
    const uint8_t* sample = fill_ + size_t(t.plane) * plane_bytes;
    for (size_t i = 0; i + plane_bytes <= layout_.bytes(); i += plane_bytes) std::memcpy(tile + i, sample, plane_bytes);
    const uint8_t* pages[1] = {tile};
    place_pieces(out_, plan_, t, g_, TileView{pages, layout_.bytes(), layout_.bytes()});
  }

  // Decodes a block of restart intervals as one JPEG: reads its rows (one
  // read per run of contiguous rows) after the level's header, patches the
  // header's frame size, renumbers the markers, and decodes the window
  // straight into the output. Not cached: a block is decoded for one request.
  void read_block(const Block& b, const ByteSource& source) const {
    Scratch& scratch = thread_scratch();
    const LevelDesc& l = level_;
    const uint32_t s = l.dct_scale;
    const uint64_t ftw = uint64_t(l.tile_width) * s, fth = uint64_t(l.tile_height) * s;
    const uint64_t fx0 = b.tx0 * ftw, fy0 = b.ty0 * fth;
    const uint32_t fw = uint32_t(std::min<uint64_t>((b.tx1 - b.tx0) * ftw, l.stored_width - fx0));
    const uint32_t fh = uint32_t(std::min<uint64_t>((b.ty1 - b.ty0) * fth, l.stored_height - fy0));
    const uint64_t across = g_.tiles_across();
    const uint64_t stored_across = (l.stored_width + ftw - 1) / ftw;
    const uint64_t last_index = stored_across * ((l.stored_height + fth - 1) / fth) - 1;
    const uint64_t* offsets = l.offsets.data();
    const uint64_t* counts = l.bytecounts.data();
    uint64_t total = l.scan.length;
    for (uint32_t row = b.ty0; row < b.ty1; ++row) {
      const uint64_t i0 = row * across + b.tx0, i1 = row * across + b.tx1 - 1;
      total += offsets[i1] + counts[i1] - offsets[i0];
    }
    if (total > kMaxTileBytes) fail(ErrorKind::Decode, "restart intervals of more than 256 MiB in one block");
    uint8_t* buffer = grow(scratch.bytes, size_t(total));
    write_scan_header(l.jpeg_tables.data(), l.scan, fw, fh, buffer);
    std::vector<uint64_t>& ends = scratch.ends;
    std::vector<uint64_t>& index = scratch.index;
    ends.clear();
    index.clear();
    uint64_t pos = l.scan.length;
    uint64_t read_at = 0, read_size = 0, read_to = pos;  // rows contiguous in the file are one read
    for (uint32_t row = b.ty0; row < b.ty1; ++row) {
      const uint64_t i0 = row * across + b.tx0, i1 = row * across + b.tx1 - 1;
      const uint64_t start = offsets[i0], span = offsets[i1] + counts[i1] - start;
      if (read_size > 0 && start == read_at + read_size) {
        read_size += span;
      } else {
        if (read_size > 0) source.read(read_at, read_size, buffer + read_to);
        read_at = start;
        read_size = span;
        read_to = pos;
      }
      for (uint64_t i = i0; i <= i1; ++i) {
        pos += counts[i];
        ends.push_back(pos);
        index.push_back(row * stored_across + (i - row * across));
      }
    }
    if (read_size > 0) source.read(read_at, read_size, buffer + read_to);
    renumber_restart_markers(buffer, l.scan.length, ends, index, last_index);
    const TileLayout frame{uint32_t((fw + s - 1) / s), uint32_t((fh + s - 1) / s), g_.samples_per_plane, 1};
    uint8_t* origin = out_.base + size_t(b.out_y) * out_.pitch + size_t(b.out_x) * out_.pixel_bytes;
    prefault_rows(out_, b.out_y, b.out_y + b.window.height);
    const TileTarget target{origin, out_.pitch, nullptr, b.window.x, b.window.y, b.window.width, b.window.height};
    decode_jpeg_frame(buffer, size_t(total), params_.jpeg, fw, fh, frame, target);
  }

  const Reader& reader_;
  const LevelDesc& level_;
  size_t level_index_;
  uint32_t layer_;
  const File& file_;
  const ByteSource* source_;  // the file's, or a preloaded span of it
  const uint8_t* fill_;
  LevelGeometry g_;
  TileLabel label_;
  const RequestCache& cache_;
  Output out_;
  TileLayout layout_;
  DecodeFn decode_;
  CodecParams params_;
  uint32_t scale_;
  std::unique_ptr<PreloadedSpan> preloaded_;
  std::vector<PlaneFile> plane_files_;  // points into the reader's files
  Plan plan_;
  std::vector<Block> blocks_;  // JpegRestart levels: what each run decodes
};

}  // namespace

LevelGeometry scaled_geometry(const LevelGeometry& g, uint32_t scale) {
  if (scale <= 1) return g;
  LevelGeometry s = g;
  s.width = (g.width + scale - 1) / scale;
  s.height = (g.height + scale - 1) / scale;
  s.tile_width = g.tile_width / scale;
  s.tile_height = g.tile_height / scale;
  return s;
}

bool can_scale(const LevelDesc& level, uint32_t scale) {
  if (scale == 1) return true;
  if (scale != 2 && scale != 4 && scale != 8) return false;
  // (JpegRestart levels are read at their own dct_scale only.)
  return level.codec == Codec::Jpeg && !level.placed() && level.tile_width % scale == 0 &&
         level.tile_height % scale == 0;
}

CodecParams LevelDesc::codec_params() const {
  CodecParams params;
  params.jpeg.tables = jpeg_tables.empty() ? nullptr : jpeg_tables.data();
  params.jpeg.tables_size = jpeg_tables.size();
  params.jpeg.in_colorspace = jpeg_in_colorspace;
  params.jpeg.out_colorspace = jpeg_out_colorspace;
  params.byteswap = byteswap;
  params.predictor = predictor;
  params.external = external ? &external : nullptr;
  params.compression = compression;
  params.strips = strips;
  params.bilevel = bilevel;
  return params;
}

namespace {

// A JpegRestart level: its header (jpeg_tables) parses, its intervals are
// the level's tiles at its DCT scale, the tables cover the grid, and each
// row's intervals are contiguous (a block reads a row with one read).
void check_restart_level(LevelDesc& level, const std::string& what) {
  const uint32_t s = level.dct_scale;
  if (s != 1 && s != 2 && s != 4 && s != 8) fail(ErrorKind::Format, what + ": DCT scale must be 1, 2, 4 or 8");
  if (level.planes != 1 || level.bytes_per_sample != 1) fail(ErrorKind::Format, what + ": restart JPEG layout");
  ScanHeader& h = level.scan;
  if (const char* problem = parse_scan_header(level.jpeg_tables.data(), level.jpeg_tables.size(), h)) {
    fail(ErrorKind::Format, what + ": " + problem);
  }
  if (h.length != level.jpeg_tables.size()) fail(ErrorKind::Format, what + ": JPEG header length mismatch");
  if (h.components != level.samples_per_plane) fail(ErrorKind::Format, what + ": JPEG components differ from samples");
  const uint64_t sw = level.stored_width, sh = level.stored_height;
  if (sw == 0 || sh == 0 || sw > (1u << 22) || sh > (1u << 22)) fail(ErrorKind::Format, what + ": JPEG size out of range");
  // Levels over 65535 px cannot state their size in the frame header.
  if ((h.width != sw && sw <= 65535) || (h.height != sh && sh <= 65535)) {
    fail(ErrorKind::Format, what + ": JPEG frame is " + std::to_string(h.width) + "x" + std::to_string(h.height) +
                                ", the TIFF says " + std::to_string(sw) + "x" + std::to_string(sh));
  }
  // Without restart markers the whole JPEG is one interval, one tile.
  const uint64_t ri = h.restart_interval;
  const uint64_t ftw = ri > 0 ? ri * h.mcu_width : sw, fth = ri > 0 ? h.mcu_height : sh;
  const uint64_t mcus_per_row = (sw + h.mcu_width - 1) / h.mcu_width;
  if (ri > 0 && mcus_per_row % ri != 0) {
    fail(ErrorKind::Unsupported, what + ": restart intervals run across row ends (" +
                                     std::to_string(h.restart_interval) + " MCUs do not divide " +
                                     std::to_string(mcus_per_row) + " per row)");
  }
  if (uint64_t(level.tile_width) * s != ftw || uint64_t(level.tile_height) * s != fth) {
    fail(ErrorKind::Format, what + ": tile size does not match the restart interval");
  }
  if (ftw > kMaxJpegDimension || (ri == 0 && fth > kMaxJpegDimension)) {
    fail(ErrorKind::Unsupported, what + ": a restart interval wider or taller than libjpeg's 65500 px");
  }
  if (uint64_t(level.width) * s > sw + s - 1 || uint64_t(level.height) * s > sh + s - 1) {
    fail(ErrorKind::Format, what + ": level larger than its JPEG");
  }
  const uint64_t across = level.tiles_across(), down = level.tiles_down();
  for (uint64_t row = 0; row < down; ++row) {
    for (uint64_t col = 0; col < across; ++col) {
      const uint64_t i = row * across + col;
      const uint64_t offset = level.offsets[i], count = level.bytecounts[i];
      if (count < 2 || count > kMaxTileBytes || offset > UINT64_MAX - count) {
        fail(ErrorKind::Format, what + ": restart interval " + std::to_string(i) + " has " + std::to_string(count) +
                                    " bytes");
      }
      if (col + 1 < across && level.offsets[i + 1] != offset + count) {
        fail(ErrorKind::Format, what + ": restart intervals " + std::to_string(i) + " and " + std::to_string(i + 1) +
                                    " are not contiguous");
      }
    }
  }
}

}  // namespace

Reader::Reader(const std::string& path, FileAccess access) : access_(access) { add_file(path); }

Reader::Reader(const std::string& url, const FileIdentity& identity, std::shared_ptr<const RangeFetcher> fetcher,
               const RemoteOptions& options) {
  files_.push_back(std::make_unique<File>(url, identity, std::move(fetcher), options));
  sources_.push_back(std::make_unique<FileSource>(*files_.back()));
}

std::unique_ptr<PreloadedSpan> Reader::preload(size_t file, uint64_t first, uint64_t last, uint64_t bytes,
                                               size_t workers) const {
  if (access_ != FileAccess::Preload || first >= last || last - first < kMinPreload ||
      last - first > kMaxPreload || bytes * 2 < last - first) {
    return nullptr;
  }
  return std::make_unique<PreloadedSpan>(this->file(file), source(file), first, last, workers);
}

void Reader::read_ranges(const uint64_t* offsets, const uint64_t* lengths, size_t count, uint8_t* out,
                         size_t out_size, size_t workers) const {
  const File& f = file(0);
  std::vector<uint64_t> starts(count);
  uint64_t total = 0, first = UINT64_MAX, last = 0;
  for (size_t i = 0; i < count; ++i) {
    if (lengths[i] > out_size - total) fail(ErrorKind::Argument, "the output is smaller than the byte ranges");
    if (offsets[i] > f.size() || lengths[i] > f.size() - offsets[i]) {
      fail(ErrorKind::Read, f.path() + ": byte range " + std::to_string(offsets[i]) + "+" +
                                std::to_string(lengths[i]) + " lies past the end of the file (" +
                                std::to_string(f.size()) + " bytes)");
    }
    starts[i] = total;
    total += lengths[i];
    if (lengths[i] == 0) continue;
    first = std::min(first, offsets[i]);
    last = std::max(last, offsets[i] + lengths[i]);
  }
  // A remote file's ranges are fetched with one call (merged as its options say).
  std::unique_ptr<FetchedSpans> fetched;
  if (f.remote()) {
    std::vector<ByteRange> ranges(count);
    for (size_t i = 0; i < count; ++i) ranges[i] = ByteRange{offsets[i], lengths[i]};
    fetched = std::make_unique<FetchedSpans>(f, source(0), std::move(ranges));
  }
  const std::unique_ptr<PreloadedSpan> preloaded = preload(0, first, last, total, workers);
  const ByteSource& src = fetched     ? static_cast<const ByteSource&>(*fetched)
                          : preloaded ? static_cast<const ByteSource&>(*preloaded)
                                      : source(0);
  parallel_for(count, workers == 0 ? 1 : workers, [&](size_t i) { src.read(offsets[i], lengths[i], out + starts[i]); });
}

size_t Reader::add_file(const std::string& path) {
  if (!files_.empty() && files_[0]->remote()) {
    fail(ErrorKind::Unsupported, files_[0]->path() + ": a remote slide's levels must lie in its own object (" + path +
                                     " is another file)");
  }
  if (files_.size() >= kMaxFiles) fail(ErrorKind::Format, path + ": more than " + std::to_string(kMaxFiles) + " files");
  files_.push_back(std::make_unique<File>(path, access_));
  sources_.push_back(std::make_unique<FileSource>(*files_.back()));
  return files_.size() - 1;
}

const LevelDesc& Reader::level(size_t index) const {
  if (index >= levels_.size()) {
    fail(ErrorKind::Argument, file().path() + ": no level " + std::to_string(index) + " (the slide has " +
                                  std::to_string(levels_.size()) + ")");
  }
  return *levels_[index];
}

TileLabel Reader::label(size_t index) const {
  return TileLabel{&level_file(index).path(), index, level(index).page_index};
}

void Reader::plan(size_t index, const Region& region, size_t workers, Plan& plan) const {
  const LevelDesc& l = level(index);
  if (l.placed()) {
    fail(ErrorKind::Unsupported, file(l.file).path() + ": level " + std::to_string(index) +
                                     " is placed from several images; plan is for stored levels");
  }
  const std::vector<PlaneFile> files = plane_files(l);
  make_plan(l.geometry(), l.tables(), file(l.file).size(), region, workers, label(index), plan, files.data());
}

std::vector<PlaneFile> Reader::plane_files(const LevelDesc& level) const {
  std::vector<PlaneFile> files(level.planes);
  for (uint32_t p = 0; p < level.planes; ++p) {
    const uint32_t index = level.plane_files.empty() ? level.file : level.plane_files[p];
    files[p] = PlaneFile{index, file(index).size(), &file(index).path()};
  }
  return files;
}

namespace {

// Checks a stored image's description; `tables`: also its tile tables.
void check_level(const LevelDesc& level, const std::string& what, bool tables) {
  if (level.width == 0 || level.height == 0 || level.tile_width == 0 || level.tile_height == 0) {
    fail(ErrorKind::Format, what + ": zero image or tile size");
  }
  if (level.samples_per_plane == 0 || level.planes == 0 || level.samples() > kMaxSamples ||
      level.planes > kMaxSamples) {
    fail(ErrorKind::Format, what + ": unsupported sample layout");
  }
  const uint32_t bps = level.bytes_per_sample;
  if (bps != 1 && bps != 2 && bps != 4 && bps != 8) fail(ErrorKind::Unsupported, what + ": sample size");
  const TileLayout layout = level.tile_layout();
  if (uint64_t(level.tile_width) * level.tile_height > kMaxTileBytes || layout.bytes() > kMaxTileBytes) {
    fail(ErrorKind::Format, what + ": tiles larger than 256 MiB");
  }
  const uint64_t count = level.geometry().tile_count();
  if (tables && (level.offsets.size() != count || level.bytecounts.size() != count)) {
    fail(ErrorKind::Format, what + ": " + std::to_string(level.offsets.size()) + " tile offsets for " +
                                std::to_string(count) + " tiles");
  }
  if (level.codec != Codec::JpegRestart && codec_decoder(level.codec) == nullptr) {
    fail(ErrorKind::Unsupported, what + ": unknown codec");  // (JpegRestart: check_restart_level)
  }
  if (level.codec == Codec::Jpeg && bps != 1) {
    fail(ErrorKind::Unsupported, what + ": JPEG with more than 8 bits per sample");
  }
  if (level.codec == Codec::External && !level.external) {
    fail(ErrorKind::Format, what + ": external codec without a decoder");
  }
  if (level.predictor != 1 && level.predictor != 2) fail(ErrorKind::Unsupported, what + ": predictor");
  if (level.strips && level.tile_width != level.width) fail(ErrorKind::Format, what + ": strips narrower than the image");
  if (level.bilevel && (bps != 1 || level.byteswap || level.predictor != 1 ||
                        (level.codec != Codec::Raw && level.codec != Codec::Deflate && level.codec != Codec::Lzw))) {
    fail(ErrorKind::Unsupported, what + ": bilevel samples need one byte each, no predictor, and raw, deflate or LZW");
  }
}

// Checks a placed level's layers against it and their placements.
void check_layers(const LevelDesc& level, const std::string& what) {
  if (level.layers.size() > kMaxLayers) fail(ErrorKind::Format, what + ": too many layers");
  for (size_t k = 0; k < level.layers.size(); ++k) {
    const LevelDesc& layer = level.layers[k];
    const std::string about = what + ": layer " + std::to_string(k) + " (IFD " + std::to_string(layer.page_index) + ")";
    check_level(layer, about, true);
    if (layer.placed()) fail(ErrorKind::Format, about + ": layers of layers");
    // The layers are planned against one file's size.
    if (layer.file != level.file) fail(ErrorKind::Unsupported, about + ": a layer in another file");
    if (layer.codec != level.codec || layer.planes != level.planes ||
        layer.samples_per_plane != level.samples_per_plane || layer.bytes_per_sample != level.bytes_per_sample) {
      fail(ErrorKind::Unsupported, about + ": codec or samples differ from the level's");
    }
    const std::string problem = placement_problem(layer.geometry(), layer.placement);
    if (!problem.empty()) fail(ErrorKind::Format, about + ": " + problem);
    bool gapless = true;
    placed_box(layer.geometry(), layer.placement, &gapless);
    // First wins between layers by their boxes: a box must be all pixels.
    if (!gapless && level.layers.size() > 1) fail(ErrorKind::Format, about + ": gaps between the cells of one of several layers");
  }
}

}  // namespace

size_t Reader::add_level(LevelDesc level) {
  if (level.file >= files_.size()) {
    fail(ErrorKind::Argument, file().path() + ": level in file " + std::to_string(level.file) + " of " +
                                  std::to_string(files_.size()));
  }
  const std::string what = file(level.file).path() + ": IFD " + std::to_string(level.page_index);
  check_level(level, what, !level.placed());
  if (!level.plane_files.empty()) {
    if (level.plane_files.size() != level.planes) fail(ErrorKind::Format, what + ": one file per plane expected");
    for (uint32_t f : level.plane_files) {
      if (f >= files_.size()) fail(ErrorKind::Argument, what + ": plane in file " + std::to_string(f) + " of " +
                                                           std::to_string(files_.size()));
    }
    if (level.placed() || level.codec == Codec::JpegRestart) {
      fail(ErrorKind::Unsupported, what + ": planes in several files of a placed or restart-interval level");
    }
  }
  if (level.placed()) check_layers(level, what);
  if (level.codec == Codec::JpegRestart) {
    if (level.placed()) fail(ErrorKind::Unsupported, what + ": a placed level of restart intervals");
    check_restart_level(level, what);
  }
  if (level.codec == Codec::Jpeg) {
    for (int rgb = 0; rgb < 2; ++rgb) {
      if (jpeg_splice_prefix(level.jpeg_tables.data(), level.jpeg_tables.size(), rgb == 1, level.jpeg_prefix[rgb])) {
        level.jpeg_prefix[rgb].clear();
      }
    }
  }
  levels_.push_back(std::make_unique<LevelDesc>(std::move(level)));
  return levels_.size() - 1;
}

void Reader::read_region(size_t level_index, const Region& region, uint8_t* out, size_t pitch,
                         const uint8_t* fill, size_t workers) const {
  RegionRequest request{this, level_index, region, out, pitch};
  read_regions({request}, fill, this->level(level_index).pixel_bytes(), workers);
}

void read_regions(const std::vector<RegionRequest>& requests, const uint8_t* fill, size_t fill_bytes,
                  size_t workers) {
  if (workers == 0) workers = 1;
  bool remote = false;
  for (const RegionRequest& r : requests) remote = remote || r.reader->level_file(r.level).remote();
  RequestCache cache;
  std::vector<std::unique_ptr<RegionRead>> reads;
  reads.reserve(requests.size());
  // (request, run) pairs: the threads share out every run of every request.
  std::vector<std::pair<uint32_t, uint32_t>> runs;
  for (const RegionRequest& r : requests) {
    const LevelDesc& level = r.reader->level(r.level);
    if (level.pixel_bytes() != fill_bytes) fail(ErrorKind::Argument, "regions of a batch differ in pixel size");
    if (r.pitch < size_t(r.region.width) * fill_bytes) fail(ErrorKind::Argument, "output rows too short");
    // A placed level reads layer by layer; the first plan fills.
    const size_t layers = std::max<size_t>(1, level.layers.size());
    for (size_t layer = 0; layer < layers; ++layer) {
      auto read = std::make_unique<RegionRead>(*r.reader, r.level, layer, r.region, r.out, r.pitch, cache, workers,
                                               r.scale, fill, requests.size());
      if (!remote) read->fill();  // (remote: once its bytes are fetched, so a failed fetch writes nothing)
      read->preload(workers);
      for (size_t k = 0; k < read->run_count(); ++k) runs.emplace_back(uint32_t(reads.size()), uint32_t(k));
      reads.push_back(std::move(read));
    }
  }
  std::unique_ptr<BatchTiles> shared;
  if (reads.size() > 1 && !cache.has_cache()) {
    std::vector<std::pair<TileKey, size_t>> uses;
    for (const auto& read : reads) read->tile_uses(uses);
    shared = std::make_unique<BatchTiles>(std::move(uses), kSharedBytes);
    if (!shared->empty()) cache.share(shared.get());
  }
  if (!remote) {
    parallel_for(runs.size(), workers, [&](size_t i) { reads[runs[i].first]->read_run(runs[i].second); });
    return;
  }
  // Remote files: the byte ranges of the runs are fetched first, with one
  // call per file (merged ranges, concurrently, in Python), then decoded;
  // runs of more than kRemoteWaveBytes in all go in waves of about that much,
  // so memory stays bounded. Nothing is written to the output before the
  // first wave is fetched.
  if (runs.empty()) {
    for (const auto& read : reads) read->fill();
  }
  for (size_t begin = 0; begin < runs.size();) {
    RemoteFetch fetch;
    uint64_t bytes = 0;
    size_t end = begin;
    while (end < runs.size() && (end == begin || bytes < kRemoteWaveBytes)) {
      bytes += reads[runs[end].first]->remote_ranges(runs[end].second, fetch);
      ++end;
    }
    fetch.fetch();
    if (begin == 0) {
      for (const auto& read : reads) read->fill();
    }
    parallel_for(end - begin, workers,
                 [&](size_t i) { reads[runs[begin + i].first]->read_run(runs[begin + i].second, &fetch); });
    begin = end;
  }
}

}  // namespace wsi
