#include "cache.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "error.hpp"

namespace wsi {
namespace {

constexpr char kMagic[16] = "wsiarray-cache2";
constexpr uint64_t kPageSize = 16 << 10;
constexpr uint32_t kMaxShards = 16;
constexpr uint32_t kMaxPids = 256;
constexpr int32_t kNil = -1;
constexpr int32_t kFree = 0, kPending = 1, kReady = 2;
constexpr uint32_t kOpen = 0, kDone = 1;

struct Entry {
  TileKey key;
  uint64_t hash;
  uint64_t size;
  uint64_t generation;
  int64_t checked_ns;  // pending: when its owner was last seen alive
  int32_t state;
  int32_t owner_pid;
  int32_t bucket_next;
  int32_t lru_prev;
  int32_t lru_next;
  int32_t first_page;
  uint32_t pages;
  uint32_t unused;
  uint64_t covered;  // cells of the tile that requests have asked for (see Coverage)
  uint64_t valid;    // cells inside the image
};

struct Shard {
  pthread_mutex_t mutex;
  uint64_t hits;
  uint64_t misses;
  uint64_t repairs;  // times a dead lock owner left the shard to be reset
  uint64_t pages_used;
  uint64_t items_used;
  uint64_t generation;
  // Ready tiles in two LRU lists, most recently used at the head: kOpen
  // holds tiles some of whose pixels no request has asked for yet, kDone
  // tiles delivered whole. Eviction takes kDone's tail first: a scan never
  // comes back to a tile it has read all of, while it is about to read the
  // rest of a half-read one.
  int32_t lru_head[2];
  int32_t lru_tail[2];
  int32_t pending_head;  // tiles being decoded, linked through lru_prev/lru_next
  int32_t free_entry;
  int32_t free_page;
  uint32_t entries;
  uint32_t buckets;
  uint32_t pages;
  uint64_t entries_off;
  uint64_t buckets_off;
  uint64_t page_next_off;
  uint64_t data_off;
};

struct Header {
  char magic[16];  // written last by the creator: attachers wait for it
  uint64_t region_bytes;
  uint64_t memory_capacity;
  uint64_t capacity;
  uint32_t shards;
  std::atomic<int32_t> record;
  pthread_mutex_t attach_mutex;
  int32_t pids[kMaxPids];
  uint64_t shard_off[kMaxShards];
};

int64_t monotonic_ns() {
  struct timespec ts {};
  clock_gettime(CLOCK_MONOTONIC, &ts);  // system-wide: comparable across processes
  return int64_t(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

uint64_t align64(uint64_t v) { return (v + 63) & ~uint64_t(63); }

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ULL;
  return h ^ (h >> 29);
}

uint64_t hash_key(const TileKey& k) {
  uint64_t h = 0x84222325cbf29ce4ULL;
  for (uint64_t v : {k.file.device, k.file.inode, k.file.size, uint64_t(k.file.mtime_ns),
                     uint64_t(k.level) << 32 | k.plane, k.tile}) {
    h = mix(h, v);
  }
  return h;
}

bool same_key(const TileKey& a, const TileKey& b) {
  return a.file.device == b.file.device && a.file.inode == b.file.inode && a.file.size == b.file.size &&
         a.file.mtime_ns == b.file.mtime_ns && a.level == b.level && a.plane == b.plane && a.tile == b.tile;
}

// A zombie (killed but not yet reaped) counts as dead: it will never finish.
bool process_alive(int32_t pid) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return errno != ENOENT;
  char buffer[512];
  const size_t n = std::fread(buffer, 1, sizeof buffer - 1, f);
  std::fclose(f);
  buffer[n] = '\0';
  // The state follows the command name, which is in parentheses and may contain spaces.
  const char* close = std::strrchr(buffer, ')');
  if (close == nullptr || close[1] != ' ') return true;
  return close[2] != 'Z' && close[2] != 'X';
}

void init_mutex(pthread_mutex_t* m, bool shared) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  // Robust: a process killed while holding the lock hands it over with EOWNERDEAD.
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  if (shared) pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutex_init(m, &attr);
  pthread_mutexattr_destroy(&attr);
}

void backoff(unsigned& round) {
  if (round < 16) {
    sched_yield();
  } else {
    const long ns = std::min<long>(1000000, 20000L << std::min(round - 16, 6u));
    struct timespec ts {0, ns};
    nanosleep(&ts, nullptr);
  }
  ++round;
}

struct Layout {
  uint32_t shards;
  uint32_t entries;
  uint32_t buckets;
  uint32_t pages;
  uint64_t shard_bytes;
  uint64_t total;
};

Layout plan_layout(uint64_t memory_capacity, uint64_t capacity) {
  Layout l{};
  const uint64_t pages_total = std::max<uint64_t>(1, memory_capacity / kPageSize);
  capacity = std::max<uint64_t>(1, std::min<uint64_t>(capacity, 1u << 26));
  // Shards only when each one still holds a useful share: with small budgets
  // one shard keeps eviction exactly least-recently-used.
  // LRU order is kept per shard, so sharding makes eviction approximate: a
  // patch scan sized with preferred_memory_capacity would decode some tiles
  // twice. Only caches far larger than such working sets are sharded.
  uint64_t shards = std::min<uint64_t>({kMaxShards, std::max<uint64_t>(1, capacity / 16384),
                                        std::max<uint64_t>(1, pages_total / 65536)});
  l.shards = static_cast<uint32_t>(shards);
  l.entries = static_cast<uint32_t>(std::max<uint64_t>(1, capacity / shards));
  l.pages = static_cast<uint32_t>(std::min<uint64_t>(pages_total / shards, INT32_MAX));
  l.buckets = 1;
  while (l.buckets < 2 * l.entries) l.buckets <<= 1;
  l.shard_bytes = align64(sizeof(Shard)) + align64(uint64_t(l.entries) * sizeof(Entry)) +
                  align64(uint64_t(l.buckets) * 4) + align64(uint64_t(l.pages) * 4) +
                  uint64_t(l.pages) * kPageSize;
  l.total = align64(sizeof(Header)) + shards * align64(l.shard_bytes);
  return l;
}

// The cache's memory is faulted in when it is created, not tile by tile
// while requests wait (on the benchmark VM, faults cost several µs per 4 KiB
// and serialise across CPUs) -- unless it is larger than half the free
// memory: then pages come on demand, so an oversized budget costs nothing.
int populate_flag(uint64_t bytes) {
  const long pages = sysconf(_SC_AVPHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return 0;
  return bytes <= uint64_t(pages) * uint64_t(page) / 2 ? MAP_POPULATE : 0;
}

}  // namespace

struct TileCache::Impl {
  uint8_t* base = nullptr;
  uint64_t bytes = 0;
  bool shared = false;
  std::string name;
  bool attached = false;
  uint64_t inode = 0;  // of the segment, to never unlink a newer one of the same name

  // Unlinks the name only if it still names this segment.
  void unlink_own() const {
    int fd = ::shm_open(name.c_str(), O_RDONLY, 0);
    if (fd < 0) return;
    struct stat st {};
    const bool same = ::fstat(fd, &st) == 0 && uint64_t(st.st_ino) == inode;
    ::close(fd);
    if (same) ::shm_unlink(name.c_str());
  }

  Header& header() const { return *reinterpret_cast<Header*>(base); }
  Shard& shard(uint32_t i) const { return *reinterpret_cast<Shard*>(base + header().shard_off[i]); }
  Entry* entries(const Shard& s) const { return reinterpret_cast<Entry*>(base + s.entries_off); }
  int32_t* buckets(const Shard& s) const { return reinterpret_cast<int32_t*>(base + s.buckets_off); }
  int32_t* page_next(const Shard& s) const { return reinterpret_cast<int32_t*>(base + s.page_next_off); }
  uint8_t* page(const Shard& s, int32_t p) const { return base + s.data_off + uint64_t(p) * kPageSize; }

  // Empties a shard; also how a shard is repaired after its lock's owner died.
  void reset_shard(Shard& s) const {
    Entry* e = entries(s);
    for (uint32_t i = 0; i < s.entries; ++i) {
      e[i] = Entry{};
      e[i].state = kFree;
      e[i].bucket_next = i + 1 < s.entries ? int32_t(i + 1) : kNil;
    }
    std::fill(buckets(s), buckets(s) + s.buckets, kNil);
    int32_t* next = page_next(s);
    for (uint32_t i = 0; i < s.pages; ++i) next[i] = i + 1 < s.pages ? int32_t(i + 1) : kNil;
    s.free_entry = s.entries ? 0 : kNil;
    s.free_page = s.pages ? 0 : kNil;
    s.lru_head[kOpen] = s.lru_tail[kOpen] = s.lru_head[kDone] = s.lru_tail[kDone] = kNil;
    s.pending_head = kNil;
    s.pages_used = s.items_used = 0;
    ++s.generation;
  }

  void initialise(const Layout& l, const CacheConfig& c) {
    Header& h = header();
    h.region_bytes = l.total;
    h.memory_capacity = uint64_t(l.pages) * l.shards * kPageSize;
    h.capacity = uint64_t(l.entries) * l.shards;
    h.shards = l.shards;
    h.record.store(c.record_stat ? 1 : 0);
    init_mutex(&h.attach_mutex, shared);
    std::fill(std::begin(h.pids), std::end(h.pids), 0);
    uint64_t off = align64(sizeof(Header));
    for (uint32_t i = 0; i < l.shards; ++i) {
      h.shard_off[i] = off;
      Shard& s = *new (base + off) Shard{};
      init_mutex(&s.mutex, shared);
      s.entries = l.entries;
      s.buckets = l.buckets;
      s.pages = l.pages;
      s.entries_off = off + align64(sizeof(Shard));
      s.buckets_off = s.entries_off + align64(uint64_t(l.entries) * sizeof(Entry));
      s.page_next_off = s.buckets_off + align64(uint64_t(l.buckets) * 4);
      s.data_off = s.page_next_off + align64(uint64_t(l.pages) * 4);
      reset_shard(s);
      off += align64(l.shard_bytes);
    }
  }

  class Lock {
   public:
    Lock(const Impl& impl, Shard& s) : s_(s) {
      int rc = pthread_mutex_lock(&s.mutex);
      if (rc == EOWNERDEAD) {
        // Its owner died mid-update: the shard's lists cannot be trusted.
        impl.reset_shard(s);
        ++s.repairs;
        pthread_mutex_consistent(&s.mutex);
      } else if (rc != 0) {
        throw Error(ErrorKind::Read, std::string("tile cache lock failed: ") + std::strerror(rc));
      }
    }
    ~Lock() { pthread_mutex_unlock(&s_.mutex); }
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;

   private:
    Shard& s_;
  };

  int32_t lookup(const Shard& s, const TileKey& key, uint64_t hash) const {
    const Entry* e = entries(s);
    for (int32_t i = buckets(s)[hash & (s.buckets - 1)]; i != kNil; i = e[i].bucket_next) {
      if (e[i].hash == hash && same_key(e[i].key, key)) return i;
    }
    return kNil;
  }

  // Which LRU list a ready tile is on; `covered` changes only while the tile is off its list.
  static uint32_t list_of(const Entry& e) { return (e.covered & e.valid) == e.valid ? kDone : kOpen; }

  void lru_unlink(Shard& s, int32_t i) const {
    Entry* e = entries(s);
    const uint32_t l = list_of(e[i]);
    if (e[i].lru_prev != kNil) e[e[i].lru_prev].lru_next = e[i].lru_next; else s.lru_head[l] = e[i].lru_next;
    if (e[i].lru_next != kNil) e[e[i].lru_next].lru_prev = e[i].lru_prev; else s.lru_tail[l] = e[i].lru_prev;
    e[i].lru_prev = e[i].lru_next = kNil;
  }

  void pending_push(Shard& s, int32_t i) const {
    Entry* e = entries(s);
    e[i].lru_prev = kNil;
    e[i].lru_next = s.pending_head;
    if (s.pending_head != kNil) e[s.pending_head].lru_prev = i;
    s.pending_head = i;
  }

  void pending_unlink(Shard& s, int32_t i) const {
    Entry* e = entries(s);
    if (e[i].lru_prev != kNil) e[e[i].lru_prev].lru_next = e[i].lru_next; else s.pending_head = e[i].lru_next;
    if (e[i].lru_next != kNil) e[e[i].lru_next].lru_prev = e[i].lru_prev;
    e[i].lru_prev = e[i].lru_next = kNil;
  }

  // A pending tile becomes ready: from the pending list to an LRU front.
  void mark_ready(Shard& s, int32_t i, const Coverage& cover) const {
    pending_unlink(s, i);
    Entry& e = entries(s)[i];
    e.state = kReady;
    e.covered = cover.cells;
    e.valid = cover.valid;
    lru_push_front(s, i);
  }

  // A ready tile was used: note what was asked for, move it to its list's front.
  void touch(Shard& s, int32_t i, const Coverage& cover) const {
    lru_unlink(s, i);
    entries(s)[i].covered |= cover.cells;
    lru_push_front(s, i);
  }

  void lru_push_front(Shard& s, int32_t i) const {
    Entry* e = entries(s);
    const uint32_t l = list_of(e[i]);
    e[i].lru_prev = kNil;
    e[i].lru_next = s.lru_head[l];
    if (s.lru_head[l] != kNil) e[s.lru_head[l]].lru_prev = i;
    s.lru_head[l] = i;
    if (s.lru_tail[l] == kNil) s.lru_tail[l] = i;
  }

  void remove(Shard& s, int32_t i) const {
    Entry* e = entries(s);
    int32_t* link = &buckets(s)[e[i].hash & (s.buckets - 1)];
    while (*link != kNil && *link != i) link = &e[*link].bucket_next;
    if (*link == i) *link = e[i].bucket_next;
    if (e[i].state == kReady) lru_unlink(s, i);
    if (e[i].state == kPending) pending_unlink(s, i);
    int32_t* next = page_next(s);
    int32_t p = e[i].first_page;
    for (uint32_t k = 0; k < e[i].pages && p != kNil; ++k) {
      int32_t following = next[p];
      next[p] = s.free_page;
      s.free_page = p;
      p = following;
    }
    s.pages_used -= e[i].pages;
    s.items_used -= 1;
    e[i].state = kFree;
    e[i].bucket_next = s.free_entry;
    s.free_entry = i;
  }

  // Removes pending tiles whose decoding process died; true if any were.
  // An owner seen alive is checked again only after 50 ms: it costs system calls.
  bool reclaim_orphans(Shard& s) const {
    Entry* e = entries(s);
    const int32_t self = int32_t(::getpid());
    const int64_t now = monotonic_ns();
    bool any = false;
    for (int32_t i = s.pending_head; i != kNil;) {
      const int32_t next = e[i].lru_next;
      if (e[i].owner_pid != self && now - e[i].checked_ns > 50000000) {
        if (process_alive(e[i].owner_pid)) {
          e[i].checked_ns = now;
        } else {
          remove(s, i);
          any = true;
        }
      }
      i = next;
    }
    return any;
  }

  // Makes room by evicting least-recently-used ready tiles; kNil if impossible.
  int32_t allocate(Shard& s, const TileKey& key, uint64_t hash, uint64_t size) const {
    const uint32_t pages = uint32_t((size + kPageSize - 1) / kPageSize);
    if (pages > s.pages || s.entries == 0) return kNil;
    // Tiles orphaned by a killed decoder go first, then the least recently used.
    if (s.items_used >= s.entries || s.pages - s.pages_used < pages) reclaim_orphans(s);
    while (s.items_used >= s.entries || s.pages - s.pages_used < pages) {
      const int32_t victim = s.lru_tail[kDone] != kNil ? s.lru_tail[kDone] : s.lru_tail[kOpen];
      if (victim == kNil) return kNil;  // everything left is being decoded
      remove(s, victim);
    }
    Entry* e = entries(s);
    const int32_t i = s.free_entry;
    s.free_entry = e[i].bucket_next;
    int32_t* next = page_next(s);
    e[i].first_page = s.free_page;
    int32_t last = kNil;
    for (uint32_t k = 0; k < pages; ++k) {
      last = s.free_page;
      s.free_page = next[last];
    }
    next[last] = kNil;
    e[i].key = key;
    e[i].hash = hash;
    e[i].size = size;
    e[i].pages = pages;
    e[i].state = kPending;
    e[i].owner_pid = int32_t(::getpid());
    e[i].generation = ++s.generation;
    e[i].checked_ns = 0;  // never checked: the first look at its owner is immediate
    pending_push(s, i);
    int32_t& bucket = buckets(s)[hash & (s.buckets - 1)];
    e[i].bucket_next = bucket;
    bucket = i;
    s.pages_used += pages;
    s.items_used += 1;
    return i;
  }

  // A hit copies outside the lock: copying is most of a hit's time, and the
  // other threads and processes wait for the lock. begin_hit (under the
  // lock) counts the hit and lists the tile's pages; after the copy, end_hit
  // (under the lock again) checks that the entry still holds the same tile.
  // Pages are rewritten only after an eviction, which gives the entry a new
  // generation, so an unchanged generation means the copy was of that tile.
  uint64_t begin_hit(Shard& s, int32_t i, const Coverage& cover, std::vector<uint8_t*>& pages,
                     bool record) const {
    list_pages(s, i, pages);
    touch(s, i, cover);
    if (record) ++s.hits;
    return entries(s)[i].generation;
  }

  void list_pages(const Shard& s, int32_t i, std::vector<uint8_t*>& pages) const {
    const Entry& e = entries(s)[i];
    pages.clear();
    const int32_t* next = page_next(s);
    for (int32_t p = e.first_page; p != kNil && pages.size() < e.pages; p = next[p]) pages.push_back(page(s, p));
  }

  // Removes every ready tile; pending ones stay with their decoders.
  void drop_ready(Shard& s) const {
    for (uint32_t l : {kDone, kOpen}) {
      while (s.lru_tail[l] != kNil) remove(s, s.lru_tail[l]);
    }
  }

  // False (and the hit taken back) if the tile was evicted during the copy.
  bool end_hit(Shard& s, int32_t i, uint64_t generation, bool record) const {
    const Entry& e = entries(s)[i];
    if (e.state == kReady && e.generation == generation) return true;
    if (record && s.hits > 0) --s.hits;
    return false;
  }

  // Copies decoded rows into the entry's pages (as listed by list_pages).
  static void copy_in(const Entry& e, const std::vector<uint8_t*>& pages, const TileCache::Rows& rows) {
    if (uint64_t(rows.count) * rows.row_bytes != e.size) {
      throw Error(ErrorKind::Decode, "tile cache: decoded tile has the wrong size");
    }
    for (size_t r = 0; r < rows.count; ++r) {
      const uint8_t* src = rows.data + r * rows.pitch;
      for_each_page_piece(kPageSize, r * rows.row_bytes, rows.row_bytes,
                          [&](size_t page, size_t within, size_t done, size_t n) {
                            std::memcpy(pages[page] + within, src + done, n);
                          });
    }
  }
};

namespace {

// Locks the segment's attach table (robust: a dead holder is simply skipped).
class AttachLock {
 public:
  explicit AttachLock(pthread_mutex_t* m) : m_(m) {
    int rc = pthread_mutex_lock(m);
    if (rc == EOWNERDEAD) pthread_mutex_consistent(m);
  }
  ~AttachLock() { pthread_mutex_unlock(m_); }
  AttachLock(const AttachLock&) = delete;
  AttachLock& operator=(const AttachLock&) = delete;

 private:
  pthread_mutex_t* m_;
};

uint32_t prune_and_count(Header& h) {
  uint32_t alive = 0;
  for (auto& pid : h.pids) {
    if (pid != 0 && !process_alive(pid)) pid = 0;
    if (pid != 0) ++alive;
  }
  return alive;
}

void add_pid(Header& h, int32_t pid) {
  AttachLock lock(&h.attach_mutex);
  prune_and_count(h);
  for (auto& p : h.pids) {
    if (p == pid) return;
  }
  for (auto& p : h.pids) {
    if (p == 0) {
      p = pid;
      return;
    }
  }
}

}  // namespace

TileCache::TileCache(const CacheConfig& config) : config_(config), impl_(std::make_unique<Impl>()) {}

std::shared_ptr<TileCache> TileCache::create(const CacheConfig& config) {
  if (config.type == CacheType::None) return nullptr;
  std::shared_ptr<TileCache> cache(new TileCache(config));
  Impl& impl = *cache->impl_;
  const Layout layout = plan_layout(config.memory_capacity, config.capacity);
  if (config.type == CacheType::PerProcess) {
    void* p = ::mmap(nullptr, layout.total, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | populate_flag(layout.total), -1, 0);
    if (p == MAP_FAILED) throw Error(ErrorKind::Open, std::string("tile cache: ") + std::strerror(errno));
    impl.base = static_cast<uint8_t*>(p);
    impl.bytes = layout.total;
    impl.initialise(layout, config);
    std::memcpy(impl.header().magic, kMagic, sizeof kMagic);
    return cache;
  }
  impl.shared = true;
  impl.name = config.name;
  const std::string& name = config.name;
  bool creator = true;
  int fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0 && errno == EEXIST) {
    creator = false;
    fd = ::shm_open(name.c_str(), O_RDWR, 0600);
  }
  if (fd < 0) throw Error(ErrorKind::Open, "tile cache: shm_open(" + name + "): " + std::strerror(errno));
  uint64_t size = layout.total;
  if (creator) {
    if (::ftruncate(fd, off_t(size)) != 0) {
      int err = errno;
      ::close(fd);
      ::shm_unlink(name.c_str());
      throw Error(ErrorKind::Open, "tile cache: cannot size " + name + ": " + std::strerror(err));
    }
  } else {
    // The creator sizes the segment right after creating it; wait for that.
    struct stat st {};
    for (int i = 0; i < 5000; ++i) {
      if (::fstat(fd, &st) == 0 && st.st_size >= off_t(sizeof(Header))) break;
      usleep(1000);
    }
    if (st.st_size < off_t(sizeof(Header))) {
      ::close(fd);
      throw Error(ErrorKind::Open, "tile cache: segment " + name + " was never initialised");
    }
    size = uint64_t(st.st_size);
  }
  {
    struct stat st {};
    if (::fstat(fd, &st) == 0) impl.inode = uint64_t(st.st_ino);
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | populate_flag(size), fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw Error(ErrorKind::Open, "tile cache: mmap " + name + ": " + std::strerror(errno));
  impl.base = static_cast<uint8_t*>(p);
  impl.bytes = size;
  Header& h = impl.header();
  if (creator) {
    impl.initialise(layout, config);
    std::atomic_thread_fence(std::memory_order_release);
    std::memcpy(h.magic, kMagic, sizeof kMagic);
  } else {
    for (int i = 0; i < 5000 && std::memcmp(h.magic, kMagic, sizeof kMagic) != 0; ++i) usleep(1000);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.region_bytes != size || h.shards == 0 ||
        h.shards > kMaxShards) {
      ::munmap(p, size);
      impl.base = nullptr;
      throw Error(ErrorKind::Open, "tile cache: " + name + " is not a wsiarray cache segment");
    }
    // The segment's own budgets win: they were fixed by its creator.
    cache->config_.memory_capacity = h.memory_capacity;
    cache->config_.capacity = h.capacity;
    cache->config_.record_stat = h.record.load() != 0;
  }
  add_pid(h, int32_t(::getpid()));
  impl.attached = true;
  return cache;
}

// Unmaps only: detaching (and unlinking) is explicit, because this process
// may hold another handle to the same segment (pids are per process).
TileCache::~TileCache() {
  if (impl_ && impl_->base) ::munmap(impl_->base, impl_->bytes);
}

namespace {

std::vector<uint8_t*>& thread_pages() {
  static thread_local std::vector<uint8_t*> pages;
  return pages;
}

// A new entry's pages as rows for a decoder to write into. A row that
// straddles two pages goes to a spare row and is split into them after
// (finish()).
class EntryRows {
 public:
  EntryRows(const std::vector<uint8_t*>& pages, size_t row_bytes, uint32_t count)
      : pages_(pages), row_bytes_(row_bytes), count_(count) {
    static thread_local std::vector<uint8_t*> rows;
    static thread_local std::vector<uint8_t> spare;
    size_t straddling = 0;
    for (uint32_t r = 0; r < count; ++r) straddling += straddles(size_t(r) * row_bytes);
    if (spare.size() < straddling * row_bytes) spare.resize(straddling * row_bytes);
    rows.resize(count);
    size_t next = 0;
    for (uint32_t r = 0; r < count; ++r) {
      const size_t offset = size_t(r) * row_bytes;
      rows[r] = straddles(offset) ? spare.data() + row_bytes * next++ : pages[offset / kPageSize] + offset % kPageSize;
    }
    rows_ = rows.data();
    spare_ = spare.data();
  }

  uint8_t* const* rows() const { return rows_; }

  // Splits the spare rows into the pages they straddle.
  void finish() const {
    const uint8_t* from = spare_;
    for (uint32_t r = 0; r < count_; ++r) {
      const size_t offset = size_t(r) * row_bytes_;
      if (!straddles(offset)) continue;
      for_each_page_piece(kPageSize, offset, row_bytes_, [&](size_t page, size_t within, size_t done, size_t n) {
        std::memcpy(pages_[page] + within, from + done, n);
      });
      from += row_bytes_;
    }
  }

 private:
  bool straddles(size_t offset) const { return offset % kPageSize + row_bytes_ > kPageSize; }

  const std::vector<uint8_t*>& pages_;
  size_t row_bytes_;
  uint32_t count_;
  uint8_t* const* rows_ = nullptr;
  const uint8_t* spare_ = nullptr;
};

}  // namespace

Coverage tile_coverage(uint32_t tile_width, uint32_t tile_height, uint32_t x, uint32_t y, uint32_t width,
                       uint32_t height, uint32_t valid_width, uint32_t valid_height) {
  const uint32_t cw = (tile_width + 7) / 8, ch = (tile_height + 7) / 8;
  auto cells = [&](uint32_t x0, uint32_t y0, uint32_t x1, uint32_t y1) {
    const uint32_t cx0 = x0 / cw, cx1 = (x1 - 1) / cw;
    const uint64_t row = ((uint64_t(1) << (cx1 - cx0 + 1)) - 1) << cx0;  // at most 8 bits
    uint64_t mask = 0;
    for (uint32_t cy = y0 / ch; cy <= (y1 - 1) / ch; ++cy) mask |= row << (cy * 8);
    return mask;
  };
  return Coverage{cells(x, y, x + width, y + height), cells(0, 0, valid_width, valid_height)};
}

bool TileCache::find(const TileKey& key, size_t size, const Coverage& cover, const Use& use) {
  Impl& m = *impl_;
  Header& h = m.header();
  const uint64_t hash = hash_key(key);
  Shard& s = m.shard(uint32_t((hash >> 40) % h.shards));
  const bool record = h.record.load(std::memory_order_relaxed);
  std::vector<uint8_t*>& pages = thread_pages();
  int32_t i = kNil;
  uint64_t generation = 0;
  {
    Impl::Lock lock(m, s);
    i = m.lookup(s, key, hash);
    if (i == kNil) return false;
    const Entry& e = m.entries(s)[i];
    if (e.state != kReady || e.size != size) return false;
    generation = m.begin_hit(s, i, cover, pages, record);
  }
  use(View{pages.data(), kPageSize, size});
  Impl::Lock lock(m, s);
  return m.end_hit(s, i, generation, record);  // if not, the caller decodes the tile again
}

void TileCache::get(const TileKey& key, const TileLayout& layout, const Coverage& cover, const Use& use,
                    const Decode& decode) {
  const size_t size = layout.bytes();
  Impl& m = *impl_;
  Header& h = m.header();
  const uint64_t hash = hash_key(key);
  Shard& s = m.shard(uint32_t((hash >> 40) % h.shards));
  const int32_t self = int32_t(::getpid());
  const bool record = h.record.load(std::memory_order_relaxed);
  std::vector<uint8_t*>& pages = thread_pages();
  int32_t slot = kNil;
  uint64_t generation = 0;
  for (unsigned round = 0;; backoff(round)) {
    int32_t hit = kNil;
    {
      Impl::Lock lock(m, s);
      const int32_t i = m.lookup(s, key, hash);
      if (i != kNil) {
        Entry& e = m.entries(s)[i];
        if (e.state == kReady && e.size == size) {
          generation = m.begin_hit(s, i, cover, pages, record);
          hit = i;
        } else {
          // Someone is decoding it: wait, looking at a decoder in another
          // process at most every 50 ms (it costs system calls, under the lock).
          if (e.state == kPending) {
            if (e.owner_pid == self) continue;
            const int64_t now = monotonic_ns();
            if (now - e.checked_ns < 50000000) continue;
            e.checked_ns = now;
            if (process_alive(e.owner_pid)) continue;
          }
          m.remove(s, i);  // its decoder died, or a stale entry of another size
        }
      }
      if (hit == kNil) {
        if (record) ++s.misses;
        slot = m.allocate(s, key, hash, size);
        if (slot != kNil) {
          generation = m.entries(s)[slot].generation;
          m.list_pages(s, slot, pages);
        }
        break;
      }
    }
    use(View{pages.data(), kPageSize, size});
    Impl::Lock lock(m, s);
    if (m.end_hit(s, hit, generation, record)) return;
    // Evicted while we copied: look again.
  }
  if (slot == kNil) {
    // Larger than the cache, or all of it is being decoded: decode uncached.
    decode(nullptr, false);
    return;
  }
  // In a private cache only this thread touches a pending entry's pages
  // (eviction and clear() leave pending entries alone), so the decoder may
  // write them without the lock, saving a copy of the tile.
  TileCache::Rows rows{};
  try {
    if (m.shared) {
      rows = decode(nullptr, true);
    } else {
      const EntryRows direct(pages, layout.row_bytes(), layout.height);
      const TileTarget target = TileTarget::row_pointers(layout, direct.rows());
      rows = decode(&target, true);
      if (rows.count == 0) {
        direct.finish();
        use(View{pages.data(), kPageSize, size});
      }
    }
  } catch (...) {
    Impl::Lock lock(m, s);
    Entry& e = m.entries(s)[slot];
    if (e.state == kPending && e.generation == generation) m.remove(s, slot);
    throw;
  }
  Impl::Lock lock(m, s);
  Entry& e = m.entries(s)[slot];
  // The shard may have been reset (a dead lock owner) while we decoded.
  if (e.state == kPending && e.generation == generation) {
    try {
      // An unchanged generation means the entry still owns the pages listed at allocation.
      if (rows.count > 0 || m.shared) Impl::copy_in(e, pages, rows);
    } catch (...) {
      m.remove(s, slot);
      throw;
    }
    m.mark_ready(s, slot, cover);
  }
}

CacheStats TileCache::stats() const {
  const Impl& m = *impl_;
  const Header& h = m.header();
  CacheStats st;
  st.memory_capacity = h.memory_capacity;
  st.capacity = h.capacity;
  for (uint32_t i = 0; i < h.shards; ++i) {
    Shard& s = m.shard(i);
    Impl::Lock lock(m, s);
    st.hits += s.hits;
    st.misses += s.misses;
    st.repairs += s.repairs;
    st.items += s.items_used;
    st.memory_size += s.pages_used * kPageSize;
  }
  if (m.shared) {
    Header& hh = const_cast<Header&>(h);
    AttachLock lock(&hh.attach_mutex);
    st.attached = prune_and_count(hh);
  } else {
    st.attached = 1;
  }
  return st;
}

void TileCache::clear() {
  Impl& m = *impl_;
  for (uint32_t i = 0; i < m.header().shards; ++i) {
    Shard& s = m.shard(i);
    Impl::Lock lock(m, s);
    m.drop_ready(s);
    m.reclaim_orphans(s);
    s.hits = s.misses = 0;
  }
}

void TileCache::attach_forked_child() {
  if (impl_->shared && impl_->attached) add_pid(impl_->header(), int32_t(::getpid()));
}

void TileCache::set_record(bool record) { impl_->header().record.store(record ? 1 : 0); }

void TileCache::unlink() {
  if (impl_->shared) impl_->unlink_own();
}

void TileCache::detach() {
  Impl& m = *impl_;
  if (!m.shared || !m.attached || m.base == nullptr) return;
  Header& h = m.header();
  bool last = false;
  {
    AttachLock lock(&h.attach_mutex);
    const int32_t self = int32_t(::getpid());
    for (auto& p : h.pids) {
      if (p == self) p = 0;
    }
    last = prune_and_count(h) == 0;
    if (last) m.unlink_own();
  }
  m.attached = false;
}

namespace {

std::mutex g_cache_mutex;
std::shared_ptr<TileCache> g_cache;
std::atomic<bool> g_forked{false};

void cache_after_fork_in_child() {
  // Another thread may have held the mutex at fork(): never touch it again.
  new (&g_cache_mutex) std::mutex();
  g_forked = true;
}

}  // namespace

std::shared_ptr<TileCache> current_cache() {
  static std::once_flag registered;
  std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, cache_after_fork_in_child); });
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  if (g_forked.exchange(false) && g_cache) {
    const CacheConfig config = g_cache->config();
    if (config.type == CacheType::PerProcess) {
      // A forked child starts with an empty cache of the same shape; the
      // parent's copy (and whatever its threads were doing to it) is dropped.
      new (&g_cache) std::shared_ptr<TileCache>();  // leak the parent's reference
      g_cache = TileCache::create(config);
    } else {
      g_cache->attach_forked_child();
    }
  }
  return g_cache;
}

void set_current_cache(std::shared_ptr<TileCache> cache) {
  current_cache();
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  g_cache = std::move(cache);
}

}  // namespace wsi
