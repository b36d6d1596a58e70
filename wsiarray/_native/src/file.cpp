#include "file.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csetjmp>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include "error.hpp"
#include "thread_pool.hpp"

namespace wsi {
namespace {

uint64_t align_down(uint64_t v) { return v & ~(kDirectAlign - 1); }
uint64_t align_up(uint64_t v) { return align_down(v + kDirectAlign - 1); }

// Large enough that one request streams at the device's rate, small enough
// that a thread's bounce buffer stays modest.
constexpr uint64_t kDirectChunk = uint64_t(8) << 20;

[[noreturn]] void truncated(const std::string& path, uint64_t offset) {
  throw Error(ErrorKind::Read, path + ": file truncated while reading offset " + std::to_string(offset));
}

// ---- SIGBUS guard --------------------------------------------------------
// A mapped page past the end of a file that shrank raises SIGBUS on access.
// Copies out of a mapping register the address range in a slot owned by
// their thread; the handler jumps back out of a fault inside a registered
// range of its own thread, and hands every other SIGBUS to the handler that
// was installed before (Python's faulthandler, a sanitizer) or the default.
// Slots, not thread_local: a dlopen'ed module's TLS may allocate on first
// access, which a signal handler must not do.

struct GuardSlot {
  std::atomic<pthread_t> owner{0};
  const uint8_t* lo = nullptr;
  const uint8_t* hi = nullptr;
  sigjmp_buf env;
};

constexpr size_t kGuardSlots = 256;
GuardSlot g_slots[kGuardSlots];
struct sigaction g_previous {};

void chain(int sig, siginfo_t* info, void* context) {
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if ((g_previous.sa_flags & SA_SIGINFO) == 0 && g_previous.sa_handler != SIG_DFL &&
      g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  // The default action: restored, a fault repeats on return and ends the
  // process as it would have without us; a sent signal is sent again.
  std::signal(sig, SIG_DFL);
  if (info == nullptr || info->si_code <= 0) std::raise(sig);
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
  if (info != nullptr && info->si_code > 0) {
    const pthread_t self = pthread_self();
    const auto* addr = static_cast<const uint8_t*>(info->si_addr);
    for (GuardSlot& slot : g_slots) {
      if (slot.owner.load(std::memory_order_relaxed) == self && addr >= slot.lo && addr < slot.hi) {
        siglongjmp(slot.env, 1);
      }
    }
  }
  chain(sig, info, context);
}

void release_slots_in_child() {
  // Threads that held slots at fork() do not exist in the child.
  for (GuardSlot& slot : g_slots) slot.owner.store(0, std::memory_order_relaxed);
}

// Once per process, when the first file is mapped: a handler installed later
// (faulthandler.enable() after that) runs first and ends the process on a
// truncated mapped file, so install such handlers before opening files.
void install_sigbus_guard() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    struct sigaction previous {};
    if (::sigaction(SIGBUS, nullptr, &previous) == 0) {
      g_previous = previous;
      ::sigaction(SIGBUS, &action, nullptr);
    }
    pthread_atfork(nullptr, nullptr, release_slots_in_child);
  });
}

GuardSlot* claim_slot() {
  const pthread_t self = pthread_self();
  const size_t start = std::hash<pthread_t>{}(self) % kGuardSlots;
  for (size_t k = 0; k < kGuardSlots; ++k) {
    GuardSlot& slot = g_slots[(start + k) % kGuardSlots];
    pthread_t expected = 0;
    if (slot.owner.compare_exchange_strong(expected, self, std::memory_order_acquire)) return &slot;
  }
  return nullptr;
}

// Copies n bytes from a mapping; false when the mapping faulted (SIGBUS).
// Nothing between sigsetjmp and the copy's end has a destructor or changes
// a local, so jumping back here is defined.
bool guarded_copy(GuardSlot* slot, uint8_t* dst, const uint8_t* src, size_t n) {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  slot->lo = reinterpret_cast<const uint8_t*>(uintptr_t(src) & ~(page - 1));
  slot->hi = src + n;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (sigsetjmp(slot->env, 1) != 0) return false;
  std::memcpy(dst, src, n);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  return true;
}

// Per-thread bounce buffer for O_DIRECT, aligned to kDirectAlign.
struct AlignedBuffer {
  uint8_t* data = nullptr;
  size_t size = 0;
  ~AlignedBuffer() { std::free(data); }
  uint8_t* get(size_t n) {
    if (n > size) {
      std::free(data);
      data = nullptr;
      size = 0;
      void* p = nullptr;
      if (::posix_memalign(&p, kDirectAlign, n) != 0) throw std::bad_alloc();
      data = static_cast<uint8_t*>(p);
      size = n;
    }
    return data;
  }
};

AlignedBuffer& bounce_buffer() {
  static thread_local AlignedBuffer buffer;
  return buffer;
}

}  // namespace

FileAccess parse_file_access(const std::string& name) {
  if (name == "pread") return FileAccess::Pread;
  if (name == "mmap") return FileAccess::Mmap;
  if (name == "direct") return FileAccess::Direct;
  if (name == "preload") return FileAccess::Preload;
  throw Error(ErrorKind::Argument,
              "file_access must be 'pread', 'mmap', 'direct' or 'preload', got '" + name + "'");
}

const char* file_access_name(FileAccess access) noexcept {
  switch (access) {
    case FileAccess::Pread: return "pread";
    case FileAccess::Mmap: return "mmap";
    case FileAccess::Direct: return "direct";
    case FileAccess::Preload: return "preload";
  }
  return "pread";
}

File::File(const std::string& path, FileAccess access) : path_(path), access_(access) {
  const bool direct = access == FileAccess::Direct || access == FileAccess::Preload;
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd_ < 0 && direct && errno == EINVAL) {
    // Directories refuse O_DIRECT; a directory (a DICOM series' reader) is never read.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECTORY);
    if (fd_ < 0) {
      throw Error(ErrorKind::Open, path + ": the file system refuses O_DIRECT (file_access='" +
                                       file_access_name(access) + "'); open it with file_access='pread'");
    }
  }
  if (fd_ < 0) throw Error(ErrorKind::Open, path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0) fail_open(errno, "");
  identity_.device = static_cast<uint64_t>(st.st_dev);
  identity_.inode = static_cast<uint64_t>(st.st_ino);
  identity_.size = static_cast<uint64_t>(st.st_size);
  identity_.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL +
                       static_cast<int64_t>(st.st_mtim.tv_nsec);
  // A directory (a DICOM series' reader: its levels live in files added
  // later) is never read: nothing to probe or map.
  const bool regular = S_ISREG(st.st_mode);
  if (direct && regular && identity_.size > 0) {
    // Some file systems accept O_DIRECT at open and refuse the reads.
    uint8_t* probe = bounce_buffer().get(kDirectAlign);
    ssize_t got;
    do {
      got = ::pread(fd_, probe, kDirectAlign, 0);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
      int err = errno;
      if (err == EINVAL) {
        fail_open(err, "the file system refuses O_DIRECT reads (file_access='" +
                           std::string(file_access_name(access)) + "'); open it with file_access='pread'");
      }
      fail_open(err, "");
    }
  }
  if (access == FileAccess::Mmap && regular && identity_.size > 0) {
    if (identity_.size > uint64_t(SIZE_MAX)) fail_open(EFBIG, "");
    void* map = ::mmap(nullptr, size_t(identity_.size), PROT_READ, MAP_SHARED, fd_, 0);
    if (map == MAP_FAILED) {
      int err = errno;
      fail_open(err, std::string("cannot map the file (file_access='mmap'): ") + std::strerror(err));
    }
    map_ = static_cast<const uint8_t*>(map);
    install_sigbus_guard();
  }
}

void File::fail_open(int err, const std::string& why) {
  ::close(fd_);
  fd_ = -1;
  throw Error(ErrorKind::Open, path_ + ": " + (why.empty() ? std::string(std::strerror(err)) : why));
}

File::~File() {
  close();
  // Unmapped only here: a read racing close() sees "closed", never a hole.
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), size_t(identity_.size));
}

File::File(const std::string& url, const FileIdentity& identity, std::shared_ptr<const RangeFetcher> fetcher,
           const RemoteOptions& options)
    : path_(url), identity_(identity), fetcher_(std::move(fetcher)), remote_(options) {
  if (!fetcher_) throw Error(ErrorKind::Argument, url + ": a remote file needs a fetcher");
  if (remote_.max_span == 0) throw Error(ErrorKind::Argument, url + ": remote max_span must be positive");
}

void File::close() noexcept {
  closed_ = true;
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

void File::check_range(uint64_t offset, uint64_t length) const {
  if (fd_ < 0 && (!fetcher_ || closed_)) throw Error(ErrorKind::Read, path_ + ": file is closed");
  if (offset > identity_.size || length > identity_.size - offset) {
    throw Error(ErrorKind::Read, path_ + ": byte range " + std::to_string(offset) + "+" +
                                     std::to_string(length) + " lies past the end of the file (" +
                                     std::to_string(identity_.size) + " bytes)");
  }
}

void File::read_exact(uint64_t offset, uint64_t length, uint8_t* dst) const {
  check_range(offset, length);
  if (length == 0) return;
  if (fetcher_) return fetcher_->fetch({ByteRange{offset, length}}, {dst});
  switch (access_) {
    case FileAccess::Mmap:
      if (map_ != nullptr) return read_mapped(offset, length, dst);
      break;  // not a regular file: nothing mapped
    case FileAccess::Direct:
    case FileAccess::Preload: return read_direct(offset, length, dst);
    case FileAccess::Pread: break;
  }
  read_pread(offset, length, dst);
}

void File::read_pread(uint64_t offset, uint64_t length, uint8_t* dst) const {
  uint64_t done = 0;
  while (done < length) {
    ssize_t got = ::pread(fd_, dst + done, static_cast<size_t>(length - done),
                          static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorKind::Read, path_ + ": read failed at offset " +
                                       std::to_string(offset + done) + ": " + std::strerror(errno));
    }
    if (got == 0) truncated(path_, offset + done);
    done += static_cast<uint64_t>(got);
  }
}

void File::read_mapped(uint64_t offset, uint64_t length, uint8_t* dst) const {
  GuardSlot* slot = claim_slot();
  if (slot == nullptr) return read_pread(offset, length, dst);  // more than 256 threads copying at once
  const bool ok = guarded_copy(slot, dst, map_ + offset, size_t(length));
  slot->owner.store(0, std::memory_order_release);
  // Pages wholly past a new end fault (caught above); the page holding the
  // new end reads zeros past it. Either way the file is now shorter than the
  // range: the same error as a short pread, never zeros passed off as bytes.
  struct stat st {};
  const uint64_t now = ::fstat(fd_, &st) == 0 ? uint64_t(st.st_size) : 0;
  if (!ok || now < offset + length) truncated(path_, std::max(offset, std::min(now, offset + length)));
}

void File::read_direct(uint64_t offset, uint64_t length, uint8_t* dst) const {
  uint64_t done = 0;
  while (done < length) {
    const uint64_t pos = offset + done;
    const uint64_t start = align_down(pos);
    const uint64_t skip = pos - start;
    // Straight into dst when it and the range are aligned; else through the bounce buffer.
    const uint64_t aligned_part = align_down(std::min(length - done, kDirectChunk));
    const bool straight = skip == 0 && aligned_part > 0 && uintptr_t(dst + done) % kDirectAlign == 0;
    const uint64_t want = straight ? aligned_part : std::min(length - done, kDirectChunk - skip);
    const uint64_t need = skip + want;
    const uint64_t span = align_up(need);
    uint8_t* buf = straight ? dst + done : bounce_buffer().get(size_t(span));
    uint64_t got = 0;
    int stalls = 0;
    while (got < need) {
      ssize_t r = ::pread(fd_, buf + got, size_t(span - got), off_t(start + got));
      if (r < 0) {
        if (errno == EINTR) continue;
        throw Error(ErrorKind::Read, path_ + ": read failed at offset " + std::to_string(start + got) + ": " +
                                         std::strerror(errno));
      }
      if (r == 0) truncated(path_, start + got);
      got += uint64_t(r);
      if (got < need && got % kDirectAlign != 0) {
        // O_DIRECT reads come back in whole blocks except at the end of the
        // file: a short read before the end is read again from its block.
        struct stat st {};
        if (::fstat(fd_, &st) != 0 || uint64_t(st.st_size) < start + need) truncated(path_, start + got);
        const uint64_t kept = align_down(got);
        if (kept == got - uint64_t(r) && ++stalls > 16) {
          throw Error(ErrorKind::Read, path_ + ": O_DIRECT reads at offset " + std::to_string(start + got) +
                                           " keep coming back short");
        }
        got = kept;
      }
    }
    if (!straight) std::memcpy(dst + done, buf + skip, size_t(want));
    done += want;
  }
}

PreloadedSpan::PreloadedSpan(const File& file, const ByteSource& fallback, uint64_t first, uint64_t last,
                             size_t workers)
    : fallback_(fallback), data_(nullptr, std::free) {
  if (last > file.size() || first > last) throw Error(ErrorKind::Read, file.path() + ": preload span past the end");
  first_ = align_down(first);
  length_ = last - first_;
  void* p = nullptr;
  if (::posix_memalign(&p, kDirectAlign, size_t(align_up(length_))) != 0) throw std::bad_alloc();
  data_.reset(static_cast<uint8_t*>(p));
  const size_t chunks = size_t((length_ + kDirectChunk - 1) / kDirectChunk);
  parallel_for(chunks, workers, [&](size_t i) {
    const uint64_t off = uint64_t(i) * kDirectChunk;
    file.read_exact(first_ + off, std::min(kDirectChunk, length_ - off), data_.get() + off);
  });
}

const uint8_t* PreloadedSpan::view(uint64_t offset, uint64_t length) const {
  if (offset < first_ || offset - first_ > length_ || length > length_ - (offset - first_)) return nullptr;
  return data_.get() + (offset - first_);
}

void PreloadedSpan::read(uint64_t offset, uint64_t length, uint8_t* dst) const {
  if (const uint8_t* p = view(offset, length)) {
    std::memcpy(dst, p, size_t(length));
    return;
  }
  fallback_.read(offset, length, dst);
}

}  // namespace wsi
