#include "output_memory.hpp"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

namespace wsi {
namespace {

using Clock = std::chrono::steady_clock;

struct Retained {
  void* data;
  size_t capacity;
  Clock::time_point freed;
};

size_t page_size() {
  static const size_t size = size_t(sysconf(_SC_PAGESIZE));
  return size;
}

uint64_t default_max_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const uint64_t ram = pages > 0 ? uint64_t(pages) * page_size() : 0;
  return std::min<uint64_t>(ram / 8, uint64_t(4) << 30);
}

// Leaked on purpose: the trimmer thread is detached and may still wait on
// the condition variable while static destructors run at exit.
struct State {
  std::mutex mutex;
  std::condition_variable wake;
  std::vector<Retained> retained;  // oldest first
  uint64_t retained_bytes = 0;
  uint64_t reused = 0;
  uint64_t mapped = 0;
  uint64_t max_bytes = default_max_bytes();
  double max_idle_seconds = 10.0;
  bool trimmer_running = false;
};

State* g_state = nullptr;

// fork() happens with the lock held, so the child sees a consistent list.
void before_fork() { g_state->mutex.lock(); }
void after_fork_in_parent() { g_state->mutex.unlock(); }

void after_fork_in_child() {
  // The trimmer thread did not survive the fork. Retained buffers are now
  // shared copy-on-write with the parent: writing them would copy every
  // page, so the child lets them go and starts a fresh pool.
  State* old = g_state;
  g_state = new State();
  g_state->max_bytes = old->max_bytes;
  g_state->max_idle_seconds = old->max_idle_seconds;
  for (const Retained& r : old->retained) munmap(r.data, r.capacity);
}

State& state() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_state = new State();
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
  });
  return *g_state;
}

Clock::duration idle_limit(const State& s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s.max_idle_seconds));
}

// Moves out the oldest buffers until the pool is within its byte budget and
// holds nothing idle for longer than allowed. Caller holds the lock.
std::vector<Retained> take_surplus(State& s, Clock::time_point now) {
  std::vector<Retained> out;
  size_t drop = 0;
  uint64_t bytes = s.retained_bytes;
  while (drop < s.retained.size() &&
         (bytes > s.max_bytes || now - s.retained[drop].freed >= idle_limit(s))) {
    bytes -= s.retained[drop].capacity;
    out.push_back(s.retained[drop++]);
  }
  s.retained.erase(s.retained.begin(), s.retained.begin() + std::ptrdiff_t(drop));
  s.retained_bytes = bytes;
  return out;
}

void unmap_all(const std::vector<Retained>& buffers) {
  for (const Retained& r : buffers) munmap(r.data, r.capacity);
}

void trim_forever(State* s) {
  std::unique_lock<std::mutex> lock(s->mutex);
  for (;;) {
    if (s->retained.empty()) {
      s->wake.wait(lock);
      continue;
    }
    const Clock::time_point due = s->retained.front().freed + idle_limit(*s);
    if (Clock::now() < due) {
      s->wake.wait_until(lock, due);
      continue;
    }
    std::vector<Retained> expired = take_surplus(*s, Clock::now());
    lock.unlock();
    unmap_all(expired);  // unmapping a GiB takes a while: not under the lock
    lock.lock();
  }
}

}  // namespace

void* acquire_output(size_t bytes, size_t* capacity) {
  const size_t page = page_size();
  if (bytes > SIZE_MAX - page) throw std::bad_alloc();  // rounding up would wrap around
  const size_t wanted = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    // Best fit among buffers at most a quarter larger than asked for.
    size_t best = s.retained.size();
    for (size_t i = 0; i < s.retained.size(); ++i) {
      const size_t c = s.retained[i].capacity;
      if (c >= wanted && c - wanted <= wanted / 4 && (best == s.retained.size() || c < s.retained[best].capacity)) {
        best = i;
      }
    }
    if (best < s.retained.size()) {
      void* data = s.retained[best].data;
      *capacity = s.retained[best].capacity;
      s.retained_bytes -= *capacity;
      s.retained.erase(s.retained.begin() + std::ptrdiff_t(best));
      ++s.reused;
      return data;
    }
    ++s.mapped;
  }
  void* data = mmap(nullptr, wanted, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (data == MAP_FAILED) throw std::bad_alloc();
  *capacity = wanted;
  return data;
}

void release_output(void* data, size_t capacity) noexcept {
  State& s = state();
  std::vector<Retained> surplus;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (capacity <= s.max_bytes && s.max_idle_seconds > 0) {
      s.retained.push_back(Retained{data, capacity, Clock::now()});
      s.retained_bytes += capacity;
      data = nullptr;
      surplus = take_surplus(s, Clock::now());
      if (!s.trimmer_running) {
        try {
          std::thread(trim_forever, &s).detach();
          s.trimmer_running = true;
        } catch (...) {
          // No thread: buffers are still trimmed on the next release.
        }
      }
      s.wake.notify_all();
    }
  }
  if (data != nullptr) munmap(data, capacity);
  unmap_all(surplus);
}

void set_output_retention(uint64_t max_bytes, double max_idle_seconds) {
  State& s = state();
  std::vector<Retained> surplus;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.max_bytes = max_bytes;
    s.max_idle_seconds = std::max(0.0, max_idle_seconds);
    surplus = take_surplus(s, Clock::now());
    s.wake.notify_all();
  }
  unmap_all(surplus);
}

OutputMemoryStats output_memory_stats() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  OutputMemoryStats st;
  st.retained_bytes = s.retained_bytes;
  st.retained_buffers = s.retained.size();
  st.reused = s.reused;
  st.mapped = s.mapped;
  st.max_bytes = s.max_bytes;
  st.max_idle_seconds = s.max_idle_seconds;
  return st;
}

}  // namespace wsi
