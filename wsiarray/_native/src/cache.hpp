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
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

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
struct Coverage {
  uint64_t cells = ~uint64_t(0);
  uint64_t valid = ~uint64_t(0);
};

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
  // A new entry's pages, in order, for a decoder to write the tile into.
  struct Pages {
    uint8_t* const* pages;
    size_t page_size;
    size_t size;
  };
  // Decodes the tile (and places it where the caller wants it); may throw.
  // Returns where it left the rows, for the cache to copy; or, if it wrote
  // the tile into `entry` itself, Rows{} (count 0). `entry` is given only
  // where nothing can take the pages while the decoder writes: in a
  // per_process cache, not in a segment that another process's death may
  // reset.
  using Decode = std::function<Rows(const Pages* entry)>;
  // A cached tile as its pages, in order: valid only inside a Use callback,
  // which should copy just what it needs. The callback runs outside the
  // shard lock; if the tile was evicted meanwhile, what it copied may be
  // torn, and find() then returns false (the caller decodes the tile over
  // it) and get() looks again.
  struct View {
    const uint8_t* const* pages;
    size_t page_size;
    size_t size;
  };
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
  // Calls use() with the cached tile or, when it is not cached, decode() and
  // then keeps the tile it decoded. When several threads or
  // processes want the same missing tile, one decodes it and the others wait
  // for it.
  void get(const TileKey& key, size_t size, const Coverage& cover, const Use& use, const Decode& decode);

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

}  // namespace wsi
