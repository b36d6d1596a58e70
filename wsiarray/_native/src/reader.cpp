#include "reader.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "cache.hpp"
#include "error.hpp"
#include "thread_pool.hpp"

namespace wsi {
namespace {

// Adjacent tiles are fetched with one pread up to this many bytes.
constexpr uint64_t kMaxRunBytes = 4u << 20;
constexpr uint64_t kMaxTileBytes = 256u << 20;
constexpr uint32_t kMaxSamples = 64;
// Output spans at least this large are faulted in with one system call per run.
constexpr size_t kPrefaultBytes = 4u << 20;

struct TileJob {
  uint32_t plane;
  uint32_t tx;
  uint32_t ty;
  uint64_t offset;
  uint64_t size;
};

// Consecutive jobs whose bytes are contiguous in the file: one read each.
struct Run {
  size_t first;
  size_t count;
  uint64_t offset;
  uint64_t size;
};

struct Scratch {
  std::vector<uint8_t> bytes;   // a run's compressed bytes
  std::vector<uint8_t> tile;    // one decoded tile, when it cannot go straight to the output
  std::vector<uint8_t> served;  // per job of a run: already placed from the cache
  std::vector<uint8_t*> rows;   // row addresses of a tile decoded into cache pages
};

Scratch& thread_scratch() {
  static thread_local Scratch scratch;
  return scratch;
}

uint8_t* grow(std::vector<uint8_t>& buffer, size_t size) {
  if (buffer.size() < size) buffer.resize(size);
  return buffer.data();
}

void fill_pixels(uint8_t* dst, size_t count, const uint8_t* pixel, size_t pixel_bytes) {
  if (count == 0) return;
  if (std::all_of(pixel, pixel + pixel_bytes, [&](uint8_t b) { return b == pixel[0]; })) {
    std::memset(dst, pixel[0], count * pixel_bytes);
    return;
  }
  for (size_t i = 0; i < count; ++i) std::memcpy(dst + i * pixel_bytes, pixel, pixel_bytes);
}

template <size_t N>
void scatter_fixed(uint8_t* to, size_t to_step, const uint8_t* from, size_t count) {
  for (size_t i = 0; i < count; ++i) std::memcpy(to + i * to_step, from + i * N, N);
}

// Copies `count` pixels of one plane (`bytes` each, packed) into every
// `to_step`-th byte position of an interleaved output row.
void scatter_samples(uint8_t* to, size_t to_step, const uint8_t* from, size_t bytes, size_t count) {
  switch (bytes) {
    case 1: scatter_fixed<1>(to, to_step, from, count); break;
    case 2: scatter_fixed<2>(to, to_step, from, count); break;
    case 4: scatter_fixed<4>(to, to_step, from, count); break;
    case 8: scatter_fixed<8>(to, to_step, from, count); break;
    default:
      for (size_t i = 0; i < count; ++i) std::memcpy(to + i * to_step, from + i * bytes, bytes);
  }
}

void fail(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

// Everything one request needs, shared read-only by the threads working on it.
class RegionRead {
 public:
  RegionRead(const File& file, const LevelDesc& level, size_t level_index, const Region& region,
             uint8_t* out, size_t pitch, std::shared_ptr<TileCache> cache)
      : file_(file), level_(level), level_index_(level_index), cache_(std::move(cache)), region_(region), out_(out),
        pitch_(pitch), layout_{level.tile_width, level.tile_height, level.samples_per_plane,
                               level.bytes_per_sample} {
    x0_ = std::max<int64_t>(region.x, 0);
    y0_ = std::max<int64_t>(region.y, 0);
    x1_ = std::min<int64_t>(region.x + region.width, level.width);
    y1_ = std::min<int64_t>(region.y + region.height, level.height);
  }

  bool empty() const { return x0_ >= x1_ || y0_ >= y1_; }

  void fill_outside(const uint8_t* fill) const {
    const size_t px = level_.pixel_bytes();
    for (uint32_t oy = 0; oy < region_.height; ++oy) {
      uint8_t* row = out_ + size_t(oy) * pitch_;
      const int64_t y = region_.y + oy;
      if (empty() || y < y0_ || y >= y1_) {
        fill_pixels(row, region_.width, fill, px);
        continue;
      }
      const size_t left = size_t(x0_ - region_.x);
      const size_t right = size_t(x1_ - region_.x);
      fill_pixels(row, left, fill, px);
      fill_pixels(row + right * px, region_.width - right, fill, px);
    }
  }

  // Lists the tiles the request touches and groups them into reads.
  void plan(size_t workers) {
    const uint32_t tw = level_.tile_width, th = level_.tile_height;
    const uint32_t tx0 = uint32_t(x0_ / tw), tx1 = uint32_t((x1_ - 1) / tw);
    const uint32_t ty0 = uint32_t(y0_ / th), ty1 = uint32_t((y1_ - 1) / th);
    const uint64_t across = level_.tiles_across(), down = level_.tiles_down();
    jobs_.reserve(size_t(level_.planes) * (tx1 - tx0 + 1) * (ty1 - ty0 + 1));
    for (uint32_t p = 0; p < level_.planes; ++p) {
      for (uint32_t ty = ty0; ty <= ty1; ++ty) {
        for (uint32_t tx = tx0; tx <= tx1; ++tx) {
          const size_t index = size_t((p * down + ty) * across + tx);
          TileJob job{p, tx, ty, level_.offsets[index], level_.bytecounts[index]};
          if (job.size > kMaxTileBytes || job.offset > file_.size() ||
              job.size > file_.size() - job.offset) {
            fail(ErrorKind::Read, where(job) + ": tile bytes " + std::to_string(job.offset) + "+" +
                                      std::to_string(job.size) + " lie outside the file (" +
                                      std::to_string(file_.size()) + " bytes)");
          }
          jobs_.push_back(job);
        }
      }
    }
    // Small runs when several threads share a request, so that they all get work.
    size_t max_tiles = jobs_.size();
    if (workers > 1) max_tiles = std::max<size_t>(1, jobs_.size() / (workers * 4));
    for (size_t i = 0; i < jobs_.size(); ++i) {
      const TileJob& job = jobs_[i];
      if (!runs_.empty()) {
        Run& run = runs_.back();
        const TileJob& prev = jobs_[i - 1];
        if (job.size > 0 && prev.size > 0 && job.offset == prev.offset + prev.size &&
            run.size + job.size <= kMaxRunBytes && run.count < max_tiles) {
          run.count += 1;
          run.size += job.size;
          continue;
        }
      }
      runs_.push_back(Run{i, 1, job.offset, job.size});
    }
  }

  size_t run_count() const { return runs_.size(); }

  void read_run(size_t index) const {
    const Run& run = runs_[index];
    Scratch& scratch = thread_scratch();
    // Tiles the cache already holds need no bytes from the file: read only
    // the span from the first to the last tile it does not hold.
    uint8_t* served = grow(scratch.served, run.count);
    std::fill(served, served + run.count, uint8_t(0));
    size_t first = 0, last = run.count;
    if (cache_) {
      first = run.count;
      last = 0;
      for (size_t k = 0; k < run.count; ++k) {
        const TileJob& job = jobs_[run.first + k];
        // A hit copies only the covered part, straight from the cache's pages.
        if (job.size > 0 &&
            cache_->find(key(job), layout_.bytes(), coverage(job),
                         [&](const TileCache::View& v) { place_from(job, v); })) {
          served[k] = 1;
        } else {
          first = std::min(first, k);
          last = k + 1;
        }
      }
      if (first >= last) return;
    }
    prefault_output(run.first + first, last - first);
    const TileJob& first_job = jobs_[run.first + first];
    const TileJob& last_job = jobs_[run.first + last - 1];
    const uint64_t span = last_job.offset + last_job.size - first_job.offset;
    uint8_t* bytes = grow(scratch.bytes, span);
    if (span > 0) {
      try {
        file_.read_exact(first_job.offset, span, bytes);
      } catch (const Error& e) {
        fail(e.kind(), where(first_job) + ": " + e.what());
      }
    }
    for (size_t k = first; k < last; ++k) {
      if (served[k]) continue;
      const TileJob& job = jobs_[run.first + k];
      try {
        place_tile(job, bytes + (job.offset - first_job.offset), scratch);
      } catch (const Error& e) {
        fail(e.kind(), where(job) + ": " + e.what());
      }
    }
  }

 private:
  // Faults in the output rows `count` jobs from `first` will write, with one
  // madvise instead of a page fault per 4 KiB as the decoder first writes
  // them: about half the cost of faulting fresh memory on the benchmark VM.
  // Best effort: an old kernel or an unusual mapping simply faults as usual.
  void prefault_output(size_t first, size_t count) const {
#ifdef MADV_POPULATE_WRITE
    const Cover a = cover(jobs_[first]), b = cover(jobs_[first + count - 1]);
    const int64_t top = std::min(a.y0, b.y0), bottom = std::max(a.y1, b.y1);
    const uintptr_t begin = reinterpret_cast<uintptr_t>(out_ + size_t(top - region_.y) * pitch_);
    const uintptr_t end = reinterpret_cast<uintptr_t>(out_ + size_t(bottom - 1 - region_.y) * pitch_ +
                                                      size_t(region_.width) * level_.pixel_bytes());
    if (end - begin < kPrefaultBytes) return;
    static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const uintptr_t from = begin & ~(page - 1), to = (end + page - 1) & ~(page - 1);
    madvise(reinterpret_cast<void*>(from), to - from, MADV_POPULATE_WRITE);
#else
    (void)first;
    (void)count;
#endif
  }

  std::string where(const TileJob& job) const {
    std::string s = file_.path() + ": level " + std::to_string(level_index_) + " (IFD " +
                    std::to_string(level_.page_index) + "), tile (" + std::to_string(job.tx) + ", " +
                    std::to_string(job.ty) + ")";
    if (level_.planes > 1) s += " of plane " + std::to_string(job.plane);
    return s;
  }

  JpegParams jpeg_params() const {
    JpegParams params;
    params.tables = level_.jpeg_tables.empty() ? nullptr : level_.jpeg_tables.data();
    params.tables_size = level_.jpeg_tables.size();
    params.in_colorspace = level_.jpeg_in_colorspace;
    params.out_colorspace = level_.jpeg_out_colorspace;
    return params;
  }

  TileKey key(const TileJob& job) const {
    TileKey k;
    k.file = file_.identity();
    k.level = uint32_t(level_index_);
    k.plane = job.plane;
    k.tile = uint64_t(job.ty) * level_.tiles_across() + job.tx;
    return k;
  }

  // The part of a tile the request covers, in level coordinates.
  struct Cover {
    int64_t tile_x, tile_y, x0, y0, x1, y1;
    bool whole;
  };

  Cover cover(const TileJob& job) const {
    Cover c;
    c.tile_x = int64_t(job.tx) * layout_.width;
    c.tile_y = int64_t(job.ty) * layout_.height;
    c.x0 = std::max(c.tile_x, x0_);
    c.x1 = std::min(c.tile_x + layout_.width, x1_);
    c.y0 = std::max(c.tile_y, y0_);
    c.y1 = std::min(c.tile_y + layout_.height, y1_);
    c.whole = level_.planes == 1 && c.x0 == c.tile_x && c.y0 == c.tile_y &&
              c.x1 == c.tile_x + layout_.width && c.y1 == c.tile_y + layout_.height;
    return c;
  }

  // The 8 x 8 cells of the tile this request touches, and those inside the image.
  Coverage coverage(const TileJob& job) const {
    const Cover c = cover(job);
    const int64_t cw = (layout_.width + 7) / 8, ch = (layout_.height + 7) / 8;
    auto cells = [&](int64_t x0, int64_t y0, int64_t x1, int64_t y1) {
      const int64_t cx0 = (x0 - c.tile_x) / cw, cx1 = (x1 - 1 - c.tile_x) / cw;
      const uint64_t row = ((uint64_t(1) << (cx1 - cx0 + 1)) - 1) << cx0;  // at most 8 bits
      uint64_t mask = 0;
      for (int64_t cy = (y0 - c.tile_y) / ch; cy <= (y1 - 1 - c.tile_y) / ch; ++cy) mask |= row << (cy * 8);
      return mask;
    };
    const int64_t right = std::min<int64_t>(c.tile_x + layout_.width, level_.width);
    const int64_t bottom = std::min<int64_t>(c.tile_y + layout_.height, level_.height);
    return Coverage{cells(c.x0, c.y0, c.x1, c.y1), cells(c.tile_x, c.tile_y, right, bottom)};
  }

  uint8_t* out_at(const Cover& c, uint32_t plane) const {
    const size_t plane_bytes = size_t(layout_.samples) * layout_.bytes_per_sample;
    return out_ + size_t(c.y0 - region_.y) * pitch_ + size_t(c.x0 - region_.x) * level_.pixel_bytes() +
           size_t(plane) * plane_bytes;
  }

  // Decodes a tile to its place in the output: whole tiles straight into
  // it, others through a scratch tile or, for JPEG, through the cache entry
  // (without a cache: only the covered window). With a cache, the cache
  // keeps the whole tile.
  void place_tile(const TileJob& job, const uint8_t* src, Scratch& scratch) const {
    const Cover c = cover(job);
    const size_t row_bytes = layout_.row_bytes();
    auto decode = [&](const TileCache::Pages* entry) -> TileCache::Rows {
      if (c.whole) {
        uint8_t* dst = out_at(c, job.plane);
        decode_tile(job, src, dst, pitch_, scratch);
        return TileCache::Rows{dst, pitch_, row_bytes, layout_.height};
      }
      if (entry != nullptr && level_.codec == Codec::Jpeg) {
        decode_jpeg_to_pages(job, src, *entry, scratch);
        place_from(job, TileCache::View{entry->pages, entry->page_size, entry->size});
        return TileCache::Rows{};
      }
      uint8_t* tile = grow(scratch.tile, layout_.bytes());
      decode_tile(job, src, tile, row_bytes, scratch);
      place_decoded(job, tile);
      return TileCache::Rows{tile, row_bytes, row_bytes, layout_.height};
    };
    if (cache_ && job.size > 0) {
      cache_->get(key(job), layout_.bytes(), coverage(job),
                  [&](const TileCache::View& v) { place_from(job, v); }, decode);
    } else if (!c.whole && level_.codec == Codec::Jpeg && level_.planes == 1 && job.size > 0) {
      // No cache wants the whole tile: decode only the covered window, in place.
      decode_jpeg_window(src, size_t(job.size), jpeg_params(), layout_, uint32_t(c.x0 - c.tile_x),
                         uint32_t(c.y0 - c.tile_y), uint32_t(c.x1 - c.x0), uint32_t(c.y1 - c.y0),
                         out_at(c, job.plane), pitch_);
    } else {
      decode(nullptr);
    }
  }

  // Decodes a JPEG tile into a cache entry's pages. A row that straddles two
  // pages is decoded into a spare row and split afterwards.
  void decode_jpeg_to_pages(const TileJob& job, const uint8_t* src, const TileCache::Pages& entry,
                            Scratch& scratch) const {
    const size_t row_bytes = layout_.row_bytes();
    uint8_t* spare = grow(scratch.tile, layout_.bytes());
    scratch.rows.resize(layout_.height);
    auto straddles = [&](size_t offset) { return offset % entry.page_size + row_bytes > entry.page_size; };
    for (uint32_t r = 0; r < layout_.height; ++r) {
      const size_t offset = size_t(r) * row_bytes;
      scratch.rows[r] = straddles(offset) ? spare + offset
                                          : entry.pages[offset / entry.page_size] + offset % entry.page_size;
    }
    decode_jpeg_rows(src, size_t(job.size), jpeg_params(), layout_, scratch.rows.data());
    for (uint32_t r = 0; r < layout_.height; ++r) {
      const size_t offset = size_t(r) * row_bytes;
      if (!straddles(offset)) continue;
      for_each_page_piece(entry.page_size, offset, row_bytes, [&](size_t page, size_t within, size_t done, size_t n) {
        std::memcpy(entry.pages[page] + within, spare + offset + done, n);
      });
    }
  }

  void place_decoded(const TileJob& job, const uint8_t* tile) const {
    const uint8_t* pages[1] = {tile};
    place_from(job, TileCache::View{pages, layout_.bytes(), layout_.bytes()});
  }

  // Copies the covered part of a decoded tile to the output. The tile may be
  // split into equal pages (a cache entry); a row may straddle two pages.
  void place_from(const TileJob& job, const TileCache::View& tile) const {
    const Cover c = cover(job);
    const size_t row_bytes = layout_.row_bytes();
    const size_t px = level_.pixel_bytes();
    const size_t plane_bytes = size_t(layout_.samples) * layout_.bytes_per_sample;
    const size_t span = size_t(c.x1 - c.x0) * plane_bytes;
    uint8_t* origin = out_at(c, job.plane);
    static thread_local std::vector<uint8_t> row;
    if (level_.planes > 1 && row.size() < span) row.resize(span);
    for (int64_t y = c.y0; y < c.y1; ++y) {
      uint8_t* to = origin + size_t(y - c.y0) * pitch_;
      // Planes scatter to every pixel_bytes-th byte: gather the row first.
      uint8_t* target = level_.planes == 1 ? to : row.data();
      const size_t offset = size_t(y - c.tile_y) * row_bytes + size_t(c.x0 - c.tile_x) * plane_bytes;
      for_each_page_piece(tile.page_size, offset, span, [&](size_t page, size_t within, size_t done, size_t n) {
        std::memcpy(target + done, tile.pages[page] + within, n);
      });
      if (level_.planes > 1) scatter_samples(to, px, row.data(), plane_bytes, size_t(c.x1 - c.x0));
    }
  }

  void decode_tile(const TileJob& job, const uint8_t* src, uint8_t* dst, size_t pitch,
                   Scratch& scratch) const {
    const size_t row_bytes = layout_.row_bytes();
    const size_t bytes = layout_.bytes();
    if (job.size == 0) {
      // A tile the file never wrote (offset and count 0): black, as tifffile does.
      for (uint32_t r = 0; r < layout_.height; ++r) std::memset(dst + r * pitch, 0, row_bytes);
      return;
    }
    if (level_.codec == Codec::Jpeg) {
      decode_jpeg(src, size_t(job.size), jpeg_params(), layout_, dst, pitch);
      return;
    }
    // Byte-stream codecs produce a contiguous tile: in place when dst is one.
    uint8_t* tile = pitch == row_bytes ? dst : grow(scratch.tile, bytes);
    switch (level_.codec) {
      case Codec::Raw: {
        // Only rows inside the image must be stored (a short last strip is fine).
        const uint64_t rows = std::min<uint64_t>(layout_.height, level_.height - uint64_t(job.ty) * layout_.height);
        if (job.size < rows * row_bytes) {
          fail(ErrorKind::Decode, "uncompressed tile has " + std::to_string(job.size) + " bytes, needs " +
                                      std::to_string(rows * row_bytes));
        }
        const size_t n = std::min<size_t>(size_t(job.size), bytes);
        std::memcpy(tile, src, n);
        std::memset(tile + n, 0, bytes - n);
        break;
      }
      case Codec::Deflate: decode_deflate(src, size_t(job.size), tile, bytes); break;
      case Codec::Lzw: decode_lzw(src, size_t(job.size), tile, bytes); break;
      case Codec::External: {
        const uint64_t index = (uint64_t(job.plane) * level_.tiles_down() + job.ty) *
                                   level_.tiles_across() + job.tx;
        level_.external(src, size_t(job.size), index, tile, bytes);
        break;
      }
      default: fail(ErrorKind::Unsupported, "unknown codec");
    }
    if (level_.codec != Codec::External) {
      if (level_.byteswap) byteswap_samples(tile, bytes, layout_.bytes_per_sample);
      if (level_.predictor == 2) undo_horizontal_predictor(tile, layout_);
    }
    if (tile != dst) {
      for (uint32_t r = 0; r < layout_.height; ++r) std::memcpy(dst + r * pitch, tile + r * row_bytes, row_bytes);
    }
  }

  const File& file_;
  const LevelDesc& level_;
  size_t level_index_;
  std::shared_ptr<TileCache> cache_;  // held for the whole request
  Region region_;
  uint8_t* out_;
  size_t pitch_;
  TileLayout layout_;
  int64_t x0_, y0_, x1_, y1_;  // the request clipped to the image
  std::vector<TileJob> jobs_;
  std::vector<Run> runs_;
};

}  // namespace

Reader::Reader(const std::string& path) : file_(path) {}

const LevelDesc& Reader::level(size_t index) const {
  if (index >= levels_.size()) {
    fail(ErrorKind::Format, file_.path() + ": no level " + std::to_string(index) + " (the slide has " +
                                std::to_string(levels_.size()) + ")");
  }
  return *levels_[index];
}

size_t Reader::add_level(LevelDesc level) {
  const std::string what = file_.path() + ": IFD " + std::to_string(level.page_index);
  if (level.width == 0 || level.height == 0 || level.tile_width == 0 || level.tile_height == 0) {
    fail(ErrorKind::Format, what + ": zero image or tile size");
  }
  if (level.samples_per_plane == 0 || level.planes == 0 || level.samples() > kMaxSamples ||
      level.planes > kMaxSamples) {
    fail(ErrorKind::Format, what + ": unsupported sample layout");
  }
  const uint32_t bps = level.bytes_per_sample;
  if (bps != 1 && bps != 2 && bps != 4 && bps != 8) fail(ErrorKind::Unsupported, what + ": sample size");
  TileLayout layout{level.tile_width, level.tile_height, level.samples_per_plane, bps};
  if (uint64_t(level.tile_width) * level.tile_height > kMaxTileBytes ||
      layout.bytes() > kMaxTileBytes) {
    fail(ErrorKind::Format, what + ": tiles larger than 256 MiB");
  }
  const uint64_t count = uint64_t(level.planes) * level.tiles_across() * level.tiles_down();
  if (level.offsets.size() != count || level.bytecounts.size() != count) {
    fail(ErrorKind::Format, what + ": " + std::to_string(level.offsets.size()) + " tile offsets for " +
                                std::to_string(count) + " tiles");
  }
  switch (level.codec) {
    case Codec::Jpeg:
      if (bps != 1) fail(ErrorKind::Unsupported, what + ": JPEG with more than 8 bits per sample");
      break;
    case Codec::External:
      if (!level.external) fail(ErrorKind::Format, what + ": external codec without a decoder");
      break;
    case Codec::Raw:
    case Codec::Deflate:
    case Codec::Lzw:
      break;
    default:
      fail(ErrorKind::Unsupported, what + ": unknown codec");
  }
  if (level.predictor != 1 && level.predictor != 2) fail(ErrorKind::Unsupported, what + ": predictor");
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
  auto cache = current_cache();
  std::vector<std::unique_ptr<RegionRead>> reads;
  reads.reserve(requests.size());
  // (request, run) pairs: the threads share out every run of every request.
  std::vector<std::pair<uint32_t, uint32_t>> runs;
  for (const RegionRequest& r : requests) {
    const LevelDesc& level = r.reader->level(r.level);
    if (level.pixel_bytes() != fill_bytes) fail(ErrorKind::Format, "regions of a batch differ in pixel size");
    if (r.pitch < size_t(r.region.width) * fill_bytes) fail(ErrorKind::Format, "output rows too short");
    auto read = std::make_unique<RegionRead>(r.reader->file(), level, r.level, r.region, r.out, r.pitch, cache);
    read->fill_outside(fill);
    if (!read->empty()) {
      read->plan(workers);
      for (size_t k = 0; k < read->run_count(); ++k) runs.emplace_back(uint32_t(reads.size()), uint32_t(k));
    }
    reads.push_back(std::move(read));
  }
  parallel_for(runs.size(), workers, [&](size_t i) { reads[runs[i].first]->read_run(runs[i].second); });
}

}  // namespace wsi
