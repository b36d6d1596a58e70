// One persistent pool of worker threads per process, shared by every slide
// and request. Requests borrow up to `workers` threads (the caller counts as
// one) through parallel_for; nothing is created per call.
#pragma once

#include <cstddef>
#include <functional>

namespace wsi {

// Number of threads the pool will use (defaults to the CPU count).
size_t pool_size();
// Resizes the pool; takes effect for later requests.
void set_pool_size(size_t threads);

// Calls fn(i) for every i in [0, count) on up to `workers` threads, the
// calling thread included, and returns when all calls are done. The first
// exception thrown by fn stops handing out new indices and is rethrown here.
void parallel_for(size_t count, size_t workers, const std::function<void(size_t)>& fn);

}  // namespace wsi
