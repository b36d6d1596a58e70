// Tile cache: decoded tiles keyed by (file identity, level, plane, tile).
//
// One implementation serves both modes. All state lives in one memory
// region addressed by offsets, never pointers: a private anonymous mapping
// for "per_process", a named POSIX shared-memory segment for
// "shared_memory", which any process can attach to by name. The region is
// split into shards, each with a robust mutex, a hash table, two LRU lists and
// a pool of fixed-size pages; a tile occupies a chain of pages, so there is
// no fragmentation and no malloc per tile.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "../codecs/codecs.hpp"
#include "file.hpp"

namespace wsi {

struct TileKey {
  FileIdentity file;
  uint32_t level = 0;
  uint32_t plane = 0;
  uint64_t tile = 0;
};

// Which parts of a tile a request wants, for eviction: the tile is split
// into 8 x 8 cells and bit (row * 8 + column) stands for a cell. `cells`
// are those the request touches, `valid` those inside the image.
// `request` tells the asking request from others (RequestCache's stamp; 0:
// none), so that a request does not evict the tiles it has just used.
struct Coverage {
  uint64_t cells = ~uint64_t(0);
  uint64_t valid = ~uint64_t(0);
  uint64_t request = 0;
};

// A stamp no other request of any process sharing a cache is likely to have
// (never 0).
uint64_t new_request_stamp();

// The coverage of a tile of tile_width x tile_height pixels, of which the
// request touches [x, x + width) x [y, y + height) and the image holds
// [0, valid_width) x [0, valid_height).
Coverage tile_coverage(uint32_t tile_width, uint32_t tile_height, uint32_t x, uint32_t y, uint32_t width,
                       uint32_t height, uint32_t valid_width, uint32_t valid_height);

// A cached tile is stored in equal pages, so a row may straddle two. This
// splits bytes [offset, offset + length) of such a tile into the pieces that
// lie in one page each: piece(page index, offset within it, bytes done
// before it, length).
template <class Piece>
void for_each_page_piece(size_t page_size, size_t offset, size_t length, Piece&& piece) {
  for (size_t done = 0; done < length;) {
    const size_t within = offset % page_size;
    const size_t n = std::min(length - done, page_size - within);
    piece(offset / page_size, within, done, n);
    done += n;
    offset += n;
  }
}

// A decoded tile of `size` bytes stored in equal pages (a cache entry), or
// in one piece (pages = {data}, page_size = size). How a placer reads it.
struct TileView {
  const uint8_t* const* pages;
  size_t page_size;
  size_t size;

  // Copies bytes [offset, offset + length) of the tile to dst.
  void copy(size_t offset, size_t length, uint8_t* dst) const {
    if (offset % page_size + length <= page_size) {  // the common case: one page
      std::memcpy(dst, pages[offset / page_size] + offset % page_size, length);
      return;
    }
    for_each_page_piece(page_size, offset, length, [&](size_t page, size_t within, size_t done, size_t n) {
      std::memcpy(dst + done, pages[page] + within, n);
    });
  }
};

enum class CacheType { None, PerProcess, SharedMemory };

struct CacheConfig {
  CacheType type = CacheType::None;
  uint64_t memory_capacity = 0;  // bytes
  uint64_t capacity = 0;         // items
  bool record_stat = true;
  std::string name;              // shared-memory segment name ("/..."), shared_memory only
};

struct CacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t repairs = 0;  // shards reset after a process died holding their lock
  uint64_t items = 0;
  uint64_t memory_size = 0;  // bytes of pages in use
  uint64_t memory_capacity = 0;
  uint64_t capacity = 0;
  uint32_t attached = 0;  // processes attached (shared_memory)
};

class TileCache {
 public:
  // Where a decoder left a tile: `count` rows of `row_bytes`, `pitch` apart.
  struct Rows {
    const uint8_t* data;
    size_t pitch;
    size_t row_bytes;
    size_t count;
  };
  // Decodes the tile (and places it where the caller wants it); may throw.
  // `entry`, when given, is the new entry's rows for the decoder to write
  // the whole tile into; it then returns Rows{} (count 0), and the cache
  // completes the entry and calls use() with it so the caller places it.
  // `entry` is given only where nothing can take the pages while the
  // decoder writes: in a per_process cache, not in a segment that another
  // process's death may reset. Otherwise, if `keep`, the decoder returns
  // where it left the whole tile, for the cache to copy; if not (no cache,
  // or a tile larger than the cache), it need not decode the whole tile.
  using Decode = std::function<Rows(const TileTarget* entry, bool keep)>;
  // A cached tile as its pages, in order: valid only inside a Use callback,
  // which should copy just what it needs. The callback runs outside the
  // shard lock; if the tile was evicted meanwhile, what it copied may be
  // torn, and find() then returns false (the caller decodes the tile over
  // it) and get() looks again.
  using View = TileView;
  using Use = std::function<void(const View& tile)>;

  // Creates a per-process cache, or creates or attaches to a shared segment.
  static std::shared_ptr<TileCache> create(const CacheConfig& config);
  ~TileCache();
  TileCache(const TileCache&) = delete;
  TileCache& operator=(const TileCache&) = delete;

  const CacheConfig& config() const { return config_; }

  // Calls use() with the cached tile and returns true, or returns false
  // (not cached, or evicted while use() ran).
  bool find(const TileKey& key, size_t size, const Coverage& cover, const Use& use);
  // Calls use() with the cached tile (laid out as `layout` says) or, when
  // it is not cached, decode() and then keeps the tile it decoded. When
  // several threads or processes want the same missing tile, one decodes it
  // and the others wait for it.
  void get(const TileKey& key, const TileLayout& layout, const Coverage& cover, const Use& use,
           const Decode& decode);

  CacheStats stats() const;
  // Drops every cached tile; tiles being decoded are kept when they finish.
  void clear();
  void set_record(bool record);
  // Shared memory: removes the segment's name now (attached processes keep it).
  void unlink();
  // Drops this process's attachment; the last process attached unlinks the segment.
  void detach();
  // A forked child inherits the mapping: count it as attached too.
  void attach_forked_child();

 private:
  struct Impl;
  explicit TileCache(const CacheConfig& config);
  CacheConfig config_;
  std::unique_ptr<Impl> impl_;
};

// The process's current cache (nullptr for "nocache").
std::shared_ptr<TileCache> current_cache();
void set_current_cache(std::shared_ptr<TileCache> cache);

// The cache a request uses, held for the whole request: the current cache,
// or none ("nocache"), which finds nothing and keeps nothing but the tiles
// several regions of one batch share (BatchTiles, when given). The one place
// that tells them apart (defined in batch_tiles.cpp).
class BatchTiles;

class RequestCache {
 public:
  RequestCache() : cache_(current_cache()), request_(new_request_stamp()) {}

  // Without a cache, tiles that several regions of the batch cover are kept
  // in `batch` for the batch (see batch_tiles.hpp); with one, the cache
  // keeps them.
  bool has_cache() const { return cache_ != nullptr; }
  void share(BatchTiles* batch) { batch_ = cache_ ? nullptr : batch; }

  bool find(const TileKey& key, size_t size, const Coverage& cover, const TileCache::Use& use) const;
  void get(const TileKey& key, const TileLayout& layout, const Coverage& cover, const TileCache::Use& use,
           const TileCache::Decode& decode) const;

 private:
  std::shared_ptr<TileCache> cache_;
  uint64_t request_;
  BatchTiles* batch_ = nullptr;
};

}  // namespace wsi
