#include "cache.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <random>
#include <vector>

#include "error.hpp"

namespace wsi {
namespace {

constexpr char kMagic[16] = "wsiarray-cache3";
constexpr uint64_t kPageSize = 16 << 10;
constexpr uint32_t kMaxShards = 16;
constexpr uint32_t kMaxPids = 256;
constexpr uint64_t kMaxEntries = 1u << 26;  // per cache, as plan_layout caps it
constexpr int32_t kNil = -1;
constexpr int32_t kFree = 0, kPending = 1, kReady = 2;
constexpr uint32_t kOpen = 0, kDone = 1;
// A lock held this long, or a tile pending this long in another process,
// is taken for a corrupt segment (a real holder keeps it for microseconds,
// a real decoder a tile for milliseconds).
constexpr int64_t kLockTimeoutNs = 20'000'000'000LL;
constexpr int64_t kPendingTimeoutNs = 30'000'000'000LL;

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
  uint32_t owner_tag;  // pending: which process of that pid (pids are reused)
  uint64_t covered;  // cells of the tile that requests have asked for (see Coverage)
  uint64_t valid;    // cells inside the image
  uint64_t request;  // the request that last used it (Coverage::request)
};

struct Shard {
  pthread_mutex_t mutex;
  uint64_t hits;
  uint64_t misses;
  uint64_t repairs;  // times the shard was reset: a dead lock owner, or found corrupt
  uint64_t pages_used;
  uint64_t items_used;
  uint64_t generation;
  // Ready tiles in two LRU lists, most recently used at the head: kOpen
  // holds tiles some of whose pixels no request has asked for yet, kDone
  // tiles delivered whole. Eviction takes kDone's tail first: a scan never
  // comes back to a tile it has read all of, while it is about to read the
  // rest of a half-read one. But not a tile of the request that is making
  // room: its tiles are the newest of kDone, so if the tail is one, all of
  // kDone is, and taking them would leave nothing of a region that fits the
  // cache for the next read of it (kOpen's tail goes first then).
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

// A value read from the region that is out of range: the region is corrupt.
// Thrown and caught inside the cache only (the shard is reset, the tile missed).
struct Corrupt {};

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

// Tells this process from an earlier one that had the same pid, in pending entries.
uint32_t process_tag();

}  // namespace

uint64_t new_request_stamp() {
  static std::atomic<uint64_t> count{0};
  // pid and process tag in the high half, so processes sharing a cache differ
  const uint64_t process = (uint64_t(uint32_t(::getpid())) << 32) ^ (uint64_t(process_tag()) << 20);
  const uint64_t stamp = process ^ ++count;
  return stamp != 0 ? stamp : 1;
}

namespace {

uint32_t process_tag() {
  static std::atomic<uint32_t> tag{0};
  static std::atomic<int32_t> tag_pid{0};
  const int32_t pid = int32_t(::getpid());
  if (tag_pid.load() != pid) {  // first use, or a forked child
    uint32_t t = std::random_device{}() | 1u;  // never 0, which no process has
    tag.store(t);
    tag_pid.store(pid);
  }
  return tag.load();
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

// Locks a robust mutex: 0, EOWNERDEAD (the caller repairs what it guards),
// ETIMEDOUT (held for kLockTimeoutNs: a corrupt lock word) or another error.
// The uncontended path is one trylock: no clock read.
int lock_mutex(pthread_mutex_t* m) {
  int rc = pthread_mutex_trylock(m);
  if (rc != EBUSY) return rc;
  struct timespec deadline {};
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += kLockTimeoutNs / 1000000000LL;
  do rc = pthread_mutex_timedlock(m, &deadline); while (rc == EINTR);
  return rc;
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

// Where everything lies in a region. A function of (shards, entries, pages)
// alone, so an attaching process recomputes it and compares, rather than
// trusting offsets read from the segment.
struct Layout {
  uint32_t shards;
  uint32_t entries;  // per shard
  uint32_t buckets;
  uint32_t pages;
  uint64_t shard_bytes;
  uint64_t total;

  uint64_t shard_off(uint32_t i) const { return align64(sizeof(Header)) + uint64_t(i) * align64(shard_bytes); }
  uint64_t entries_off(uint32_t i) const { return shard_off(i) + align64(sizeof(Shard)); }
  uint64_t buckets_off(uint32_t i) const { return entries_off(i) + align64(uint64_t(entries) * sizeof(Entry)); }
  uint64_t page_next_off(uint32_t i) const { return buckets_off(i) + align64(uint64_t(buckets) * 4); }
  uint64_t data_off(uint32_t i) const { return page_next_off(i) + align64(uint64_t(pages) * 4); }
};

Layout layout_of(uint32_t shards, uint32_t entries, uint32_t pages) {
  Layout l{};
  l.shards = shards;
  l.entries = entries;
  l.pages = pages;
  l.buckets = 1;
  while (l.buckets < 2 * l.entries) l.buckets <<= 1;
  l.shard_bytes = align64(sizeof(Shard)) + align64(uint64_t(l.entries) * sizeof(Entry)) +
                  align64(uint64_t(l.buckets) * 4) + align64(uint64_t(l.pages) * 4) +
                  uint64_t(l.pages) * kPageSize;
  l.total = align64(sizeof(Header)) + uint64_t(shards) * align64(l.shard_bytes);
  return l;
}

Layout plan_layout(uint64_t memory_capacity, uint64_t capacity) {
  const uint64_t pages_total = std::max<uint64_t>(1, memory_capacity / kPageSize);
  capacity = std::max<uint64_t>(1, std::min<uint64_t>(capacity, kMaxEntries));
  // Shards only when each one still holds a useful share: with small budgets
  // one shard keeps eviction exactly least-recently-used.
  // LRU order is kept per shard, so sharding makes eviction approximate: a
  // patch scan sized with preferred_memory_capacity would decode some tiles
  // twice. Only caches far larger than such working sets are sharded.
  uint64_t shards = std::min<uint64_t>({kMaxShards, std::max<uint64_t>(1, capacity / 16384),
                                        std::max<uint64_t>(1, pages_total / 65536)});
  return layout_of(uint32_t(shards), uint32_t(std::max<uint64_t>(1, capacity / shards)),
                   uint32_t(std::min<uint64_t>(pages_total / shards, INT32_MAX)));
}

// The cache's memory is faulted in when it is created, not tile by tile
// while requests wait (on the benchmark VM, faults cost several µs per 4 KiB
// and serialise across CPUs) -- unless it is larger than half the free
// memory: then pages come on demand, so an oversized per_process budget
// costs nothing. (A shared segment's memory is reserved whole anyway, by
// reserve(): populating then only maps pages that already exist.)
int populate_flag(uint64_t bytes) {
  const long pages = sysconf(_SC_AVPHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return 0;
  return bytes <= uint64_t(pages) * uint64_t(page) / 2 ? MAP_POPULATE : 0;
}

std::string mib(uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", double(bytes) / double(1 << 20));
  return text;
}

[[noreturn]] void cache_error(const std::string& message) { throw Error(ErrorKind::Cache, "tile cache: " + message); }

// The error for a /dev/shm too small for the segment, with the remedies.
[[noreturn]] void too_small(const std::string& name, uint64_t bytes, uint64_t free_bytes, bool known) {
  cache_error("shared_memory cache " + name + " needs " + mib(bytes) + " of /dev/shm but " +
              (known ? "only " + mib(free_bytes) + " is free" : "there is not enough space") +
              ". Give the container a larger /dev/shm (Docker: --shm-size, e.g. --shm-size=" +
              std::to_string((bytes >> 30) + 1) +
              "g; its default is 64 MiB), ask for a smaller memory_capacity, or use "
              "wsiarray.cache(\"per_process\", ...), which needs no /dev/shm");
}

// Reserves bytes [0, bytes) of a segment of that size, so that no process
// touching it later can get SIGBUS: tmpfs allocates a page at its first
// touch, and a full /dev/shm answers that touch with SIGBUS (ftruncate
// reserves nothing). In chunks: tmpfs gives up a whole fallocate call when a
// signal arrives (EINTR) and undoes it, so a periodic signal could starve a
// single 1 GiB call; a chunk's progress is kept.
void reserve(int fd, uint64_t bytes, const std::string& name) {
  constexpr uint64_t kChunk = 64 << 20;
  for (uint64_t off = 0; off < bytes;) {
    const uint64_t n = std::min(kChunk, bytes - off);
    int rc;
    do rc = ::posix_fallocate(fd, off_t(off), off_t(n)); while (rc == EINTR);  // returns the error, not errno
    if (rc == 0) {
      off += n;
      continue;
    }
    // The space this segment could have: what is free plus what it holds already.
    struct statvfs vfs {};
    struct stat st {};
    const bool known = ::fstatvfs(fd, &vfs) == 0;
    const uint64_t held = ::fstat(fd, &st) == 0 ? std::min<uint64_t>(uint64_t(st.st_blocks) * 512, bytes) : 0;
    const uint64_t free_bytes = known ? uint64_t(vfs.f_bavail) * vfs.f_frsize + held : 0;
    if (rc == EOPNOTSUPP || rc == EINVAL || rc == ENOSYS) {
      // A filesystem that cannot allocate ahead (glibc already emulates
      // fallocate by writing where the kernel lacks it): nothing can be
      // reserved, so check that the space is free now. Another process may
      // still take it before this one touches it; tmpfs, /dev/shm's
      // filesystem on Linux, never comes here.
      if (known && free_bytes >= bytes) return;
      too_small(name, bytes, free_bytes, known);
    }
    if (rc == ENOSPC || rc == ENOMEM) too_small(name, bytes, free_bytes, known);
    cache_error("cannot reserve " + mib(bytes) + " for " + name + ": " + std::strerror(rc));
  }
}

// A shared segment found under the cache's name is used only if this user
// made it and nobody else can write it: names are predictable, and another
// user who made the segment first could feed this process pixels and offsets.
void check_owner(int fd, const std::string& name) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) cache_error("cannot stat segment " + name + ": " + std::strerror(errno));
  const uid_t self = ::geteuid();
  const bool foreign = st.st_uid != self;
  const bool writable = (st.st_mode & (S_IWGRP | S_IWOTH)) != 0;
  if (S_ISREG(st.st_mode) && !foreign && !writable) return;
  char mode[16];
  std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
  std::string why = !S_ISREG(st.st_mode) ? "is not a regular file"
                    : foreign             ? "belongs to uid " + std::to_string(st.st_uid) + ", not to this user (uid " +
                                                std::to_string(self) + ")"
                                          : "can be written by other users";
  cache_error("refusing shared-memory segment " + name + " (/dev/shm" + name + ", owner uid " +
              std::to_string(st.st_uid) + ", mode " + mode + "): it " + why +
              ", so whoever made it could feed this process wrong pixels. Remove it if it is stale (rm /dev/shm" +
              name + "), or give wsiarray.cache(\"shared_memory\", name=...) a name of your own");
}

// A shard as this process laid it out, or validated it at attach: its
// counts and addresses are never read from the segment again. Every index
// read from the segment goes through entry() / link() / page_index().
struct Part {
  Shard* s;
  Entry* e;
  int32_t* bucket;
  int32_t* next;
  uint8_t* data;
  uint32_t entries;
  uint32_t buckets;
  uint32_t pages;

  int32_t entry(int32_t i) const {
    if (uint32_t(i) >= entries) throw Corrupt{};  // kNil too
    return i;
  }
  int32_t link(int32_t i) const { return i == kNil ? i : entry(i); }
  int32_t page_index(int32_t p) const {
    if (uint32_t(p) >= pages) throw Corrupt{};
    return p;
  }
  uint8_t* page(int32_t p) const { return data + uint64_t(page_index(p)) * kPageSize; }
  int32_t& head(int32_t* slot) const {
    link(*slot);
    return *slot;
  }
};

}  // namespace

struct TileCache::Impl {
  uint8_t* base = nullptr;
  uint64_t bytes = 0;
  bool shared = false;
  std::string name;
  bool attached = false;
  uint64_t inode = 0;  // of the segment, to never unlink a newer one of the same name
  std::vector<Part> parts;

  // Unlinks the name only if it still names this segment.
  void unlink_own() const {
    int fd = ::shm_open(name.c_str(), O_RDONLY | O_NOFOLLOW, 0);
    if (fd < 0) return;
    struct stat st {};
    const bool same = ::fstat(fd, &st) == 0 && uint64_t(st.st_ino) == inode;
    ::close(fd);
    if (same) ::shm_unlink(name.c_str());
  }

  Header& header() const { return *reinterpret_cast<Header*>(base); }
  const Part& part(uint64_t hash) const { return parts[(hash >> 40) % parts.size()]; }

  void set_parts(const Layout& l) {
    parts.clear();
    for (uint32_t i = 0; i < l.shards; ++i) {
      parts.push_back(Part{reinterpret_cast<Shard*>(base + l.shard_off(i)),
                           reinterpret_cast<Entry*>(base + l.entries_off(i)),
                           reinterpret_cast<int32_t*>(base + l.buckets_off(i)),
                           reinterpret_cast<int32_t*>(base + l.page_next_off(i)), base + l.data_off(i), l.entries,
                           l.buckets, l.pages});
    }
  }

  // Empties a shard; also how a shard is repaired after its lock's owner
  // died or a corrupt value was found in it. Writes only within the shard's
  // own bounds, from this process's copy of them.
  static void reset_shard(const Part& p) {
    Shard& s = *p.s;
    for (uint32_t i = 0; i < p.entries; ++i) {
      p.e[i] = Entry{};
      p.e[i].state = kFree;
      p.e[i].bucket_next = i + 1 < p.entries ? int32_t(i + 1) : kNil;
    }
    std::fill(p.bucket, p.bucket + p.buckets, kNil);
    for (uint32_t i = 0; i < p.pages; ++i) p.next[i] = i + 1 < p.pages ? int32_t(i + 1) : kNil;
    s.free_entry = p.entries ? 0 : kNil;
    s.free_page = p.pages ? 0 : kNil;
    s.lru_head[kOpen] = s.lru_tail[kOpen] = s.lru_head[kDone] = s.lru_tail[kDone] = kNil;
    s.pending_head = kNil;
    s.pages_used = s.items_used = 0;
    ++s.generation;
  }

  static void repair(const Part& p) {
    reset_shard(p);
    ++p.s->repairs;
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
    set_parts(l);
    for (uint32_t i = 0; i < l.shards; ++i) {
      h.shard_off[i] = l.shard_off(i);
      Shard& s = *new (base + l.shard_off(i)) Shard{};
      init_mutex(&s.mutex, shared);
      s.entries = l.entries;
      s.buckets = l.buckets;
      s.pages = l.pages;
      s.entries_off = l.entries_off(i);
      s.buckets_off = l.buckets_off(i);
      s.page_next_off = l.page_next_off(i);
      s.data_off = l.data_off(i);
      reset_shard(parts[i]);
    }
  }

  // An attached segment's layout, recomputed from its counts and compared
  // with every offset it states; nullopt-like `false` if anything differs.
  bool validate(Layout& out) const {
    const Header& h = header();
    if (h.shards == 0 || h.shards > kMaxShards || bytes < align64(sizeof(Header))) return false;
    const uint64_t first = h.shard_off[0];
    if (first != align64(sizeof(Header)) || bytes - first < sizeof(Shard)) return false;
    const Shard& s0 = *reinterpret_cast<const Shard*>(base + first);
    if (s0.entries == 0 || uint64_t(s0.entries) * h.shards > kMaxEntries || s0.pages > uint32_t(INT32_MAX)) {
      return false;
    }
    const Layout l = layout_of(h.shards, s0.entries, s0.pages);
    if (l.total != bytes || h.region_bytes != bytes) return false;
    for (uint32_t i = 0; i < l.shards; ++i) {
      if (h.shard_off[i] != l.shard_off(i)) return false;
      const Shard& s = *reinterpret_cast<const Shard*>(base + l.shard_off(i));
      if (s.entries != l.entries || s.buckets != l.buckets || s.pages != l.pages ||
          s.entries_off != l.entries_off(i) || s.buckets_off != l.buckets_off(i) ||
          s.page_next_off != l.page_next_off(i) || s.data_off != l.data_off(i)) {
        return false;
      }
    }
    out = l;
    return true;
  }

  class Lock {
   public:
    Lock(const Impl& impl, const Part& p) : s_(*p.s) {
      const int rc = lock_mutex(&s_.mutex);
      if (rc == EOWNERDEAD) {
        // Its owner died mid-update: the shard's lists cannot be trusted.
        repair(p);
        pthread_mutex_consistent(&s_.mutex);
      } else if (rc == ETIMEDOUT) {
        cache_error("a lock of segment " + impl.name + " has been held for " +
                    std::to_string(kLockTimeoutNs / 1000000000LL) +
                    " s: the segment is corrupt; remove it (rm /dev/shm" + impl.name + ") and reconfigure the cache");
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

  // The entry of `key`, or kNil. Walks at most `entries` links: a corrupt
  // chain with a loop throws Corrupt instead of spinning.
  static int32_t lookup(const Part& p, const TileKey& key, uint64_t hash) {
    int32_t i = p.link(p.bucket[hash & (p.buckets - 1)]);
    for (uint32_t steps = 0; i != kNil; ++steps) {
      if (steps >= p.entries) throw Corrupt{};
      const Entry& e = p.e[i];
      if (e.hash == hash && same_key(e.key, key)) {
        if (e.state != kPending && e.state != kReady) throw Corrupt{};
        return i;
      }
      i = p.link(e.bucket_next);
    }
    return kNil;
  }

  // Which LRU list a ready tile is on; `covered` changes only while the tile is off its list.
  static uint32_t list_of(const Entry& e) { return (e.covered & e.valid) == e.valid ? kDone : kOpen; }

  static void lru_unlink(const Part& p, int32_t i) {
    Entry* e = p.e;
    Shard& s = *p.s;
    const uint32_t l = list_of(e[i]);
    const int32_t prev = p.link(e[i].lru_prev), next = p.link(e[i].lru_next);
    if (prev != kNil) e[prev].lru_next = next; else s.lru_head[l] = next;
    if (next != kNil) e[next].lru_prev = prev; else s.lru_tail[l] = prev;
    e[i].lru_prev = e[i].lru_next = kNil;
  }

  static void pending_push(const Part& p, int32_t i) {
    Entry* e = p.e;
    const int32_t head = p.head(&p.s->pending_head);
    e[i].lru_prev = kNil;
    e[i].lru_next = head;
    if (head != kNil) e[head].lru_prev = i;
    p.s->pending_head = i;
  }

  static void pending_unlink(const Part& p, int32_t i) {
    Entry* e = p.e;
    const int32_t prev = p.link(e[i].lru_prev), next = p.link(e[i].lru_next);
    if (prev != kNil) e[prev].lru_next = next; else p.s->pending_head = next;
    if (next != kNil) e[next].lru_prev = prev;
    e[i].lru_prev = e[i].lru_next = kNil;
  }

  // A pending tile becomes ready: from the pending list to an LRU front.
  static void mark_ready(const Part& p, int32_t i, const Coverage& cover) {
    pending_unlink(p, i);
    Entry& e = p.e[i];
    e.state = kReady;
    e.covered = cover.cells;
    e.valid = cover.valid;
    e.request = cover.request;
    lru_push_front(p, i);
  }

  // A ready tile was used: note what was asked for, move it to its list's front.
  static void touch(const Part& p, int32_t i, const Coverage& cover) {
    lru_unlink(p, i);
    p.e[i].covered |= cover.cells;
    p.e[i].request = cover.request;
    lru_push_front(p, i);
  }

  static void lru_push_front(const Part& p, int32_t i) {
    Entry* e = p.e;
    Shard& s = *p.s;
    const uint32_t l = list_of(e[i]);
    const int32_t head = p.head(&s.lru_head[l]);
    e[i].lru_prev = kNil;
    e[i].lru_next = head;
    if (head != kNil) e[head].lru_prev = i;
    s.lru_head[l] = i;
    if (p.head(&s.lru_tail[l]) == kNil) s.lru_tail[l] = i;
  }

  static void remove(const Part& p, int32_t i) {
    Entry* e = p.e;
    Shard& s = *p.s;
    if (e[i].state != kReady && e[i].state != kPending) throw Corrupt{};
    int32_t* link = &p.bucket[e[i].hash & (p.buckets - 1)];
    for (uint32_t steps = 0; p.link(*link) != kNil && *link != i; ++steps) {
      if (steps >= p.entries) throw Corrupt{};
      link = &e[*link].bucket_next;
    }
    if (*link == i) *link = p.link(e[i].bucket_next);
    if (e[i].state == kReady) lru_unlink(p, i);
    if (e[i].state == kPending) pending_unlink(p, i);
    if (e[i].pages > p.pages || s.pages_used < e[i].pages || s.items_used < 1) throw Corrupt{};
    int32_t q = e[i].first_page;
    for (uint32_t k = 0; k < e[i].pages && q != kNil; ++k) {
      const int32_t following = p.next[p.page_index(q)];
      p.next[q] = s.free_page;
      s.free_page = q;
      q = following;
    }
    s.pages_used -= e[i].pages;
    s.items_used -= 1;
    e[i].state = kFree;
    e[i].bucket_next = s.free_entry;
    s.free_entry = i;
  }

  // Removes pending tiles whose decoding process died; true if any were.
  // An owner seen alive is checked again only after 50 ms: it costs system calls.
  static bool reclaim_orphans(const Part& p) {
    Entry* e = p.e;
    const int32_t self = int32_t(::getpid());
    const uint32_t tag = process_tag();
    const int64_t now = monotonic_ns();
    bool any = false;
    uint32_t steps = 0;
    for (int32_t i = p.head(&p.s->pending_head); i != kNil;) {
      if (steps++ >= p.entries) throw Corrupt{};
      const int32_t next = p.link(e[i].lru_next);
      if (e[i].owner_pid == self && e[i].owner_tag != tag) {
        remove(p, i);  // left by an earlier process with this pid
        any = true;
      } else if (e[i].owner_pid != self && now - e[i].checked_ns > 50000000) {
        if (process_alive(e[i].owner_pid)) {
          e[i].checked_ns = now;
        } else {
          remove(p, i);
          any = true;
        }
      }
      i = next;
    }
    return any;
  }

  // Makes room by evicting least-recently-used ready tiles; kNil if impossible.
  static int32_t allocate(const Part& p, const TileKey& key, uint64_t hash, uint64_t size, uint64_t request) {
    Shard& s = *p.s;
    const uint32_t pages = uint32_t((size + kPageSize - 1) / kPageSize);
    if (pages > p.pages || p.entries == 0) return kNil;
    if (s.items_used > p.entries || s.pages_used > p.pages) throw Corrupt{};
    // Tiles orphaned by a killed decoder go first, then the least recently used.
    if (s.items_used >= p.entries || p.pages - s.pages_used < pages) reclaim_orphans(p);
    for (uint32_t evicted = 0; s.items_used >= p.entries || p.pages - s.pages_used < pages; ++evicted) {
      if (evicted > p.entries) throw Corrupt{};
      const int32_t done = p.head(&s.lru_tail[kDone]), open = p.head(&s.lru_tail[kOpen]);
      const bool own = done != kNil && request != 0 && p.e[done].request == request;
      const int32_t victim = done != kNil && !(own && open != kNil) ? done : open;
      if (victim == kNil) return kNil;  // everything left is being decoded
      if (p.e[victim].state != kReady) throw Corrupt{};
      remove(p, victim);
    }
    Entry* e = p.e;
    const int32_t i = p.entry(s.free_entry);
    if (e[i].state != kFree) throw Corrupt{};
    int32_t last = kNil;
    int32_t first = p.page_index(s.free_page);
    int32_t free_page = first;
    for (uint32_t k = 0; k < pages; ++k) {
      last = p.page_index(free_page);
      free_page = p.next[last];
    }
    s.free_entry = e[i].bucket_next;
    s.free_page = free_page;
    p.next[last] = kNil;
    e[i].first_page = first;
    e[i].key = key;
    e[i].hash = hash;
    e[i].size = size;
    e[i].pages = pages;
    e[i].state = kPending;
    e[i].owner_pid = int32_t(::getpid());
    e[i].owner_tag = process_tag();
    e[i].generation = ++s.generation;
    e[i].checked_ns = 0;  // never checked: the first look at its owner is immediate
    e[i].request = request;
    pending_push(p, i);
    int32_t& bucket = p.bucket[hash & (p.buckets - 1)];
    e[i].bucket_next = p.link(bucket);
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
  static uint64_t begin_hit(const Part& p, int32_t i, const Coverage& cover, std::vector<uint8_t*>& pages,
                            bool record) {
    list_pages(p, i, pages);
    touch(p, i, cover);
    if (record) ++p.s->hits;
    return p.e[i].generation;
  }

  // The entry's pages, in order: exactly as many as its size needs, or Corrupt
  // (a reader copies `size` bytes from them).
  static void list_pages(const Part& p, int32_t i, std::vector<uint8_t*>& pages) {
    const Entry& e = p.e[i];
    if (e.pages > p.pages || e.pages != (e.size + kPageSize - 1) / kPageSize) throw Corrupt{};
    pages.clear();
    int32_t q = e.first_page;
    for (uint32_t k = 0; k < e.pages; ++k) {
      pages.push_back(p.page(q));
      q = p.next[q];
    }
    if (q != kNil) throw Corrupt{};  // allocate() ends every chain: a loop, or a chain run into another
  }

  // Removes every ready tile; pending ones stay with their decoders.
  static void drop_ready(const Part& p) {
    for (uint32_t l : {kDone, kOpen}) {
      for (uint32_t steps = 0; p.head(&p.s->lru_tail[l]) != kNil; ++steps) {
        if (steps >= p.entries || p.e[p.s->lru_tail[l]].state != kReady) throw Corrupt{};
        remove(p, p.s->lru_tail[l]);
      }
    }
  }

  // False (and the hit taken back) if the tile was evicted during the copy.
  static bool end_hit(const Part& p, int32_t i, uint64_t generation, bool record) {
    const Entry& e = p.e[i];
    if (e.state == kReady && e.generation == generation) return true;
    if (record && p.s->hits > 0) --p.s->hits;
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
    const int rc = lock_mutex(m);
    if (rc == EOWNERDEAD) pthread_mutex_consistent(m);
    if (rc != 0 && rc != EOWNERDEAD) cache_error(std::string("the attach table's lock failed: ") + std::strerror(rc));
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

// Closes a descriptor on every way out of create().
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Waits for an existing segment's creator to finish: it writes the magic
// last. Reads with pread, not through a mapping: reading a page of a segment
// not yet reserved would allocate it, and on a full /dev/shm that is SIGBUS.
void wait_for_magic(int fd, const std::string& name) {
  char magic[sizeof kMagic] = {};
  for (int i = 0; i < 5000; ++i) {
    const ssize_t n = ::pread(fd, magic, sizeof magic, 0);
    if (n == ssize_t(sizeof magic)) {
      if (std::memcmp(magic, kMagic, sizeof kMagic) == 0) return;
      // The creator zero-fills until it writes the magic last: anything else is not ours.
      if (std::any_of(std::begin(magic), std::end(magic), [](char c) { return c != 0; })) break;
    }
    usleep(1000);
  }
  const bool blank = std::all_of(std::begin(magic), std::end(magic), [](char c) { return c == 0; });
  cache_error("segment " + name + (blank ? " was never initialised" : " is not a wsiarray cache segment") +
              "; remove it (rm /dev/shm" + name + ") or choose another name");
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
  // O_EXCL decides who creates: exactly one process makes the segment, the
  // others attach to what it made (after checking it). O_NOFOLLOW: a link
  // planted under the name is refused, not followed.
  bool creator = true;
  Fd fd{::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0600)};
  if (fd.fd < 0 && errno == EEXIST) {
    creator = false;
    fd.fd = ::shm_open(name.c_str(), O_RDWR | O_NOFOLLOW, 0600);
  }
  if (fd.fd < 0 && errno == ELOOP) {
    cache_error("refusing shared-memory segment " + name + ": /dev/shm" + name +
                " is a symbolic link; remove it or choose another name");
  }
  if (fd.fd < 0) cache_error("shm_open(" + name + "): " + std::strerror(errno));
  struct stat st {};
  uint64_t size = layout.total;
  if (creator) {
    if (::fstat(fd.fd, &st) == 0) impl.inode = uint64_t(st.st_ino);
    try {
      // ftruncate first, then reserve within that size: an attacher that
      // sees the full size waits for the magic, written after the reservation.
      if (::ftruncate(fd.fd, off_t(size)) != 0) cache_error("cannot size " + name + ": " + std::strerror(errno));
      reserve(fd.fd, size, name);
    } catch (...) {
      impl.unlink_own();  // leave no half-made segment behind
      throw;
    }
  } else {
    check_owner(fd.fd, name);
    wait_for_magic(fd.fd, name);
    if (::fstat(fd.fd, &st) != 0) cache_error("cannot stat segment " + name + ": " + std::strerror(errno));
    impl.inode = uint64_t(st.st_ino);
    size = uint64_t(st.st_size);
    uint64_t stated = 0;
    if (::pread(fd.fd, &stated, sizeof stated, offsetof(Header, region_bytes)) != ssize_t(sizeof stated) ||
        stated != size || size < align64(sizeof(Header))) {
      cache_error("segment " + name + " is " + std::to_string(size) + " bytes but its header says " +
                  std::to_string(stated) + "; it is not a usable wsiarray cache segment: remove it (rm /dev/shm" +
                  name + ") or choose another name");
    }
    // Its creator reserved it all; one made by a version of wsiarray that
    // did not (or left with holes) is reserved now, or refused if it cannot be.
    if (uint64_t(st.st_blocks) * 512 < size) reserve(fd.fd, size, name);
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | populate_flag(size), fd.fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    if (creator) impl.unlink_own();
    cache_error("mmap " + name + ": " + std::strerror(err));
  }
  impl.base = static_cast<uint8_t*>(p);
  impl.bytes = size;
  Header& h = impl.header();
  if (creator) {
    impl.initialise(layout, config);
    std::atomic_thread_fence(std::memory_order_release);
    std::memcpy(h.magic, kMagic, sizeof kMagic);
  } else {
    std::atomic_thread_fence(std::memory_order_acquire);
    Layout found{};
    if (!impl.validate(found)) {
      ::munmap(p, size);
      impl.base = nullptr;
      cache_error("segment " + name + " has a corrupt header (its layout does not add up); remove it (rm /dev/shm" +
                  name + ") or choose another name");
    }
    impl.set_parts(found);
    // The segment's own budgets win: they were fixed by its creator.
    cache->config_.memory_capacity = uint64_t(found.pages) * found.shards * kPageSize;
    cache->config_.capacity = uint64_t(found.entries) * found.shards;
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
  const uint64_t hash = hash_key(key);
  const Part& p = m.part(hash);
  const bool record = m.header().record.load(std::memory_order_relaxed);
  std::vector<uint8_t*>& pages = thread_pages();
  int32_t i = kNil;
  uint64_t generation = 0;
  {
    Impl::Lock lock(m, p);
    try {
      i = Impl::lookup(p, key, hash);
      if (i == kNil) return false;
      const Entry& e = p.e[i];
      if (e.state != kReady || e.size != size) return false;
      generation = Impl::begin_hit(p, i, cover, pages, record);
    } catch (const Corrupt&) {
      Impl::repair(p);  // a miss: the caller decodes the tile
      return false;
    }
  }
  use(View{pages.data(), kPageSize, size});
  Impl::Lock lock(m, p);
  return Impl::end_hit(p, i, generation, record);  // if not, the caller decodes the tile again
}

void TileCache::get(const TileKey& key, const TileLayout& layout, const Coverage& cover, const Use& use,
                    const Decode& decode) {
  const size_t size = layout.bytes();
  Impl& m = *impl_;
  const uint64_t hash = hash_key(key);
  const Part& p = m.part(hash);
  const int32_t self = int32_t(::getpid());
  const uint32_t tag = process_tag();
  const bool record = m.header().record.load(std::memory_order_relaxed);
  std::vector<uint8_t*>& pages = thread_pages();
  int32_t slot = kNil;
  uint64_t generation = 0;
  int64_t waiting_since = 0;
  for (unsigned round = 0;; backoff(round)) {
    int32_t hit = kNil;
    {
      Impl::Lock lock(m, p);
      try {
        const int32_t i = Impl::lookup(p, key, hash);
        if (i != kNil) {
          Entry& e = p.e[i];
          if (e.state == kReady && e.size == size) {
            generation = Impl::begin_hit(p, i, cover, pages, record);
            hit = i;
          } else if (e.state == kPending && !(e.owner_pid == self && e.owner_tag != tag)) {
            // Someone is decoding it: wait, looking at a decoder in another
            // process at most every 50 ms (it costs system calls, under the
            // lock), and for kPendingTimeoutNs at most: an owner alive that
            // long is not decoding (a corrupt entry, or a reused pid).
            const int64_t now = monotonic_ns();
            if (waiting_since == 0) waiting_since = now;
            const bool stale = now - waiting_since > kPendingTimeoutNs;
            if (!stale) {
              if (e.owner_pid == self) continue;
              if (now - e.checked_ns < 50000000) continue;
              e.checked_ns = now;
              if (process_alive(e.owner_pid)) continue;
            }
            Impl::remove(p, i);  // its decoder died or hung: take the tile over
          } else {
            // A stale entry of another size, or left pending by an earlier process with our pid.
            Impl::remove(p, i);
          }
        }
        if (hit == kNil) {
          if (record) ++p.s->misses;
          slot = Impl::allocate(p, key, hash, size, cover.request);
          if (slot != kNil) {
            generation = p.e[slot].generation;
            Impl::list_pages(p, slot, pages);
          }
          break;
        }
      } catch (const Corrupt&) {
        Impl::repair(p);
        slot = kNil;  // decode uncached this time
        break;
      }
    }
    use(View{pages.data(), kPageSize, size});
    Impl::Lock lock(m, p);
    if (Impl::end_hit(p, hit, generation, record)) return;
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
    Impl::Lock lock(m, p);
    Entry& e = p.e[slot];
    try {
      if (e.state == kPending && e.generation == generation) Impl::remove(p, slot);
    } catch (const Corrupt&) {
      Impl::repair(p);
    }
    throw;
  }
  Impl::Lock lock(m, p);
  Entry& e = p.e[slot];
  // The shard may have been reset (a dead lock owner) while we decoded.
  if (e.state == kPending && e.generation == generation) {
    try {
      // An unchanged generation means the entry still owns the pages listed at allocation.
      if (rows.count > 0 || m.shared) Impl::copy_in(e, pages, rows);
      Impl::mark_ready(p, slot, cover);
    } catch (const Corrupt&) {
      Impl::repair(p);  // the caller has its pixels; the cache just does not keep them
    } catch (...) {
      try {
        Impl::remove(p, slot);
      } catch (const Corrupt&) {
        Impl::repair(p);
      }
      throw;
    }
  }
}

CacheStats TileCache::stats() const {
  const Impl& m = *impl_;
  CacheStats st;
  for (const Part& p : m.parts) {
    Impl::Lock lock(m, p);
    st.hits += p.s->hits;
    st.misses += p.s->misses;
    st.repairs += p.s->repairs;
    st.items += std::min<uint64_t>(p.s->items_used, p.entries);
    st.memory_size += std::min<uint64_t>(p.s->pages_used, p.pages) * kPageSize;
    st.memory_capacity += uint64_t(p.pages) * kPageSize;
    st.capacity += p.entries;
  }
  if (m.shared) {
    Header& h = m.header();
    AttachLock lock(&h.attach_mutex);
    st.attached = prune_and_count(h);
  } else {
    st.attached = 1;
  }
  return st;
}

void TileCache::clear() {
  Impl& m = *impl_;
  for (const Part& p : m.parts) {
    Impl::Lock lock(m, p);
    try {
      Impl::drop_ready(p);
      Impl::reclaim_orphans(p);
    } catch (const Corrupt&) {
      Impl::repair(p);
    }
    p.s->hits = p.s->misses = 0;
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
