#include "thread_pool.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

namespace wsi {
namespace {

class Pool {
 public:
  explicit Pool(size_t threads) : target_(std::max<size_t>(1, threads)) {}

  // Threads are detached and never joined: the pool lives as long as the
  // process, and after fork() the child abandons it (see after_fork_in_child).
  void submit(std::function<void()> task) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(task));
    if (live_ < target_ && idle_ < queue_.size()) {
      ++live_;
      std::thread([this] { run(); }).detach();
    }
    cv_.notify_one();
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return target_;
  }

  void resize(size_t threads) {
    std::lock_guard<std::mutex> lock(mutex_);
    target_ = std::max<size_t>(1, threads);
    cv_.notify_all();  // surplus threads exit when they wake
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      ++idle_;
      cv_.wait(lock, [this] { return !queue_.empty() || live_ > target_; });
      --idle_;
      if (live_ > target_) break;
      auto task = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      task();
      lock.lock();
    }
    --live_;
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  size_t target_;
  size_t idle_ = 0;
  size_t live_ = 0;
};

std::mutex g_pool_mutex;
Pool* g_pool = nullptr;  // leaked on purpose: see Pool::submit
size_t g_requested = 0;

void after_fork_in_child() {
  // The parent's worker threads are gone and their locks may be held forever:
  // start over with a fresh pool and mutex the first time one is needed.
  new (&g_pool_mutex) std::mutex();
  g_pool = nullptr;
}

Pool& pool() {
  static std::once_flag registered;
  std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, after_fork_in_child); });
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_pool == nullptr) {
    size_t n = g_requested ? g_requested : std::max(1u, std::thread::hardware_concurrency());
    g_pool = new Pool(n);
  }
  return *g_pool;
}

struct ForState {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  size_t count = 0;
  const std::function<void(size_t)>* fn = nullptr;
  std::mutex mutex;
  std::condition_variable done;
  size_t active = 0;
  bool closed = false;
  std::exception_ptr error;

  void work() {
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) return;
      size_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= count) return;
      try {
        (*fn)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  }
};

}  // namespace

size_t pool_size() { return pool().size(); }

void set_pool_size(size_t threads) {
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    g_requested = threads;
  }
  pool().resize(threads ? threads : std::max(1u, std::thread::hardware_concurrency()));
}

void parallel_for(size_t count, size_t workers, const std::function<void(size_t)>& fn) {
  if (count == 0) return;
  workers = std::max<size_t>(1, std::min(workers, count));
  if (workers == 1) {
    for (size_t i = 0; i < count; ++i) fn(i);
    return;
  }
  auto state = std::make_shared<ForState>();
  state->count = count;
  state->fn = &fn;
  Pool& p = pool();
  for (size_t k = 1; k < workers; ++k) {
    p.submit([state] {
      {
        std::lock_guard<std::mutex> lock(state->mutex);
        // The caller may have finished everything and returned: fn is gone.
        if (state->closed) return;
        ++state->active;
      }
      state->work();
      std::lock_guard<std::mutex> lock(state->mutex);
      if (--state->active == 0) state->done.notify_all();
    });
  }
  state->work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->closed = true;
  state->done.wait(lock, [&] { return state->active == 0; });
  if (state->error) std::rethrow_exception(state->error);
}

}  // namespace wsi
