// The tile engine: one open file, its levels' tile tables, and region reads,
// orchestrated on the process thread pool:
//   plan (plan.hpp) -> cache probe (cache.hpp) -> fetch (fetch.hpp)
//   -> decode (codec table, codecs.hpp) -> place (place.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../codecs/codecs.hpp"
#include "../codecs/restart.hpp"
#include "fetch.hpp"
#include "file.hpp"
#include "plan.hpp"

namespace wsi {

struct LevelDesc {
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t tile_width = 0;
  uint32_t tile_height = 0;
  uint32_t samples_per_plane = 0;
  uint32_t planes = 0;
  uint32_t bytes_per_sample = 0;
  bool byteswap = false;
  int predictor = 1;
  Codec codec = Codec::Raw;
  std::vector<uint8_t> jpeg_tables;
  // Codec::Jpeg: what makes a tile a standalone JPEG (jpeg_splice_prefix),
  // for YCbCr-coded [0] and RGB-coded [1] tiles; built by add_level, empty
  // when jpeg_tables is not a tables-only stream (streams.hpp).
  std::vector<uint8_t> jpeg_prefix[2];
  int jpeg_in_colorspace = -1;
  int jpeg_out_colorspace = -1;
  // planes * tiles_down * tiles_across entries, plane-major then row-major.
  std::vector<uint64_t> offsets;
  std::vector<uint64_t> bytecounts;
  ExternalDecoder external;
  uint32_t compression = 0;  // the TIFF Compression value (stream header checks)
  bool strips = false;       // strips, not tiles: the last may be shorter
  bool bilevel = false;      // packed 1-bit samples, unpacked to 0/1 bytes (CodecParams::bilevel)
  uint32_t page_index = 0;  // for messages
  // Codec::JpegRestart only: the JPEG's size (the level is stored_width x
  // stored_height decoded at 1/dct_scale, cut to width x height), and its
  // scan header, parsed from jpeg_tables by add_level.
  uint32_t dct_scale = 1;
  uint32_t stored_width = 0;
  uint32_t stored_height = 0;
  ScanHeader scan;
  // A placed level (see Placement) is width x height pixels composed of
  // these stored images (which share its codec and sample layout), each
  // with its placement; its own tile tables are empty.
  std::vector<LevelDesc> layers;
  Placement placement;  // where a layer's cells go
  bool placed() const { return !layers.empty(); }
  // Which of the reader's files holds the tiles (0: the one it was opened
  // with; see Reader::add_file), so one slide's levels may live in several files.
  uint32_t file = 0;
  // When the planes live in different files (a multi-file OME-TIFF's
  // channels): the file of each plane (`planes` entries; `file` is plane
  // 0's). Empty: every plane is in `file`.
  std::vector<uint32_t> plane_files;
  // Tiles never written (offset and byte count 0) get the request's fill
  // pixel (a sparse layout's missing tiles), not black.
  bool missing_is_fill = false;

  LevelGeometry geometry() const {
    return LevelGeometry{width, height, tile_width, tile_height, planes, samples_per_plane, bytes_per_sample};
  }
  TileTables tables() const { return TileTables{offsets.data(), bytecounts.data()}; }
  // One plane of a tile.
  TileLayout tile_layout() const { return TileLayout{tile_width, tile_height, samples_per_plane, bytes_per_sample}; }
  // Points into this description: valid while it lives.
  CodecParams codec_params() const;
  uint32_t tiles_across() const { return (width + tile_width - 1) / tile_width; }
  uint32_t tiles_down() const { return (height + tile_height - 1) / tile_height; }
  uint32_t samples() const { return planes * samples_per_plane; }
  size_t pixel_bytes() const { return size_t(samples()) * bytes_per_sample; }
};

class Reader;

// Most files one reader opens (a DICOM series: one per level and associated image).
constexpr size_t kMaxFiles = 256;

// One region of a batch: which reader and level, where, and where it goes.
struct RegionRequest {
  const Reader* reader = nullptr;
  size_t level = 0;
  Region region;
  uint8_t* out = nullptr;
  size_t pitch = 0;
  // 1, or 2/4/8 for a JPEG level whose tiles divide by it: read the level
  // as if it were `scale` times smaller (scaled_geometry), each tile decoded
  // by libjpeg's DCT scaling; `region` is then in the scaled level's pixels.
  uint32_t scale = 1;
};

// The geometry of a level read at 1/scale (see RegionRequest::scale):
// ceil(width / scale) x ceil(height / scale) pixels in tiles of
// tile_width / scale x tile_height / scale, so its tile grid and tables are
// the level's own.
LevelGeometry scaled_geometry(const LevelGeometry& g, uint32_t scale);

// Whether `level` can be read at 1/scale: a native JPEG level whose tile
// sizes divide by it (then every full tile decodes to exactly a tile of the
// scaled geometry).
bool can_scale(const LevelDesc& level, uint32_t scale);

// Reads every request, sharing up to `workers` threads among all their
// tiles. `fill` is one pixel of the (common) output pixel size.
void read_regions(const std::vector<RegionRequest>& requests, const uint8_t* fill, size_t fill_bytes,
                  size_t workers);

class Reader {
 public:
  explicit Reader(const std::string& path, FileAccess access = FileAccess::Pread);
  // A remote object (see File's remote constructor): its levels' tiles are
  // fetched through `fetcher`, one call per request; it cannot add files.
  Reader(const std::string& url, const FileIdentity& identity, std::shared_ptr<const RangeFetcher> fetcher,
         const RemoteOptions& options);
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // File 0 is the path the reader was opened with; add_file opens more.
  const File& file(size_t index = 0) const { return *files_[index]; }
  const ByteSource& source(size_t index = 0) const { return *sources_[index]; }
  size_t file_count() const { return files_.size(); }
  // How every file of the reader is read (wsiarray.open(file_access=...)).
  FileAccess access() const { return access_; }
  // Opens another file the levels' tiles may live in; returns its index.
  size_t add_file(const std::string& path);
  // The file and byte source holding a level's tiles.
  const File& level_file(size_t level) const { return file(this->level(level).file); }
  const ByteSource& level_source(size_t level) const { return source(this->level(level).file); }
  // Validates the description (sizes, counts, overflow, file index) and adds a level.
  size_t add_level(LevelDesc level);
  size_t level_count() const { return levels_.size(); }
  // Throws Error(Argument) for an index out of range.
  const LevelDesc& level(size_t index) const;
  // Names the level's tiles in messages.
  TileLabel label(size_t level) const;

  // Each plane's file of `level` (see PlaneFile), `planes` entries.
  std::vector<PlaneFile> plane_files(const LevelDesc& level) const;

  // Plans `region` of `level` (see make_plan).
  void plan(size_t level, const Region& region, size_t workers, Plan& plan) const;

  // Reads `region` of `level` into `out` (region.height rows of `pitch`
  // bytes, region.width pixels each). Pixels outside the image get the
  // pixel value in `fill` (level.pixel_bytes() bytes). Uses up to `workers`
  // threads of the process pool, the caller's included.
  void read_region(size_t level, const Region& region, uint8_t* out, size_t pitch,
                   const uint8_t* fill, size_t workers) const;

  // Reads byte range i of file 0, [offsets[i], offsets[i] + lengths[i]), to
  // out + lengths[0] + ... + lengths[i - 1], one read per range, in order on
  // one worker (shared out among up to `workers`). `out_size` must hold them
  // all. With file_access "preload", dense ranges are read through preload().
  void read_ranges(const uint64_t* offsets, const uint64_t* lengths, size_t count, uint8_t* out,
                   size_t out_size, size_t workers) const;

  // With file_access "preload": the span [first, last) of file `file` read
  // into memory when the `bytes` wanted from it fill at least half of it and
  // it is 1 MiB to 1 GiB (the preload runs before the request's threads
  // start decoding: spans of a few tiles, such as a batch's patches, would
  // serialise their reads; larger ones would double a request's memory);
  // else nullptr, and the caller reads through source(file).
  std::unique_ptr<PreloadedSpan> preload(size_t file, uint64_t first, uint64_t last, uint64_t bytes,
                                         size_t workers) const;

  void close() {
    for (auto& f : files_) f->close();
  }

 private:
  FileAccess access_ = FileAccess::Pread;
  std::vector<std::unique_ptr<File>> files_;
  std::vector<std::unique_ptr<FileSource>> sources_;
  std::vector<std::unique_ptr<LevelDesc>> levels_;
};

}  // namespace wsi
