/* faultshim: an LD_PRELOAD library that injects I/O faults into pread() for the tests.
 *
 * Built by tests/test_io_faults.py (cc -shared -fPIC -O2 -o faultshim.so faultshim.c -ldl).
 * The native engine reads tiles with pread (nm -D _engine*.so: pread@GLIBC_2.2.5; no
 * read, preadv or mmap of slide files), so pread and its alias pread64 are wrapped.
 *
 * Only descriptors whose path (readlink /proc/self/fd/N) contains FAULTSHIM_MATCH are
 * touched, so Python's own imports and tifffile's reads (read(2)) are left alone. The
 * settings are environment variables read with getenv at every call, so the process
 * under test switches faults on and off through os.environ (between reads):
 *
 *   FAULTSHIM_MATCH        substring of the path; unset or empty: no faults at all
 *   FAULTSHIM_EIO_EVERY    N: every Nth matching call fails with EIO
 *   FAULTSHIM_EINTR_EVERY  N: every Nth matching call fails with EINTR (nothing read)
 *   FAULTSHIM_SHORT        1: every matching call reads fewer bytes than asked (at least 1)
 *   FAULTSHIM_DELAY_US     microseconds to sleep before every matching call
 *
 * faultshim_calls() and faultshim_injected() (found with ctypes.CDLL(None)) count the
 * matching calls and the faults injected, so a test can prove the shim was active.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

typedef ssize_t (*pread_fn)(int, void*, size_t, off_t);

static atomic_long calls;
static atomic_long injected;

long faultshim_calls(void) { return atomic_load(&calls); }
long faultshim_injected(void) { return atomic_load(&injected); }

static long env_long(const char* name) {
  const char* value = getenv(name);
  return value && *value ? strtol(value, NULL, 10) : 0;
}

/* Whether fd's path contains FAULTSHIM_MATCH. */
static int matches(int fd) {
  const char* match = getenv("FAULTSHIM_MATCH");
  if (match == NULL || *match == '\0') return 0;
  char link[64], path[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return 0;
  path[n] = '\0';
  return strstr(path, match) != NULL;
}

static ssize_t faulty(pread_fn real, int fd, void* buf, size_t count, off_t offset) {
  if (!matches(fd)) return real(fd, buf, count, offset);
  long call = atomic_fetch_add(&calls, 1) + 1;
  long delay = env_long("FAULTSHIM_DELAY_US");
  if (delay > 0) usleep((useconds_t)delay);
  long every = env_long("FAULTSHIM_EIO_EVERY");
  if (every > 0 && call % every == 0) {
    atomic_fetch_add(&injected, 1);
    errno = EIO;
    return -1;
  }
  every = env_long("FAULTSHIM_EINTR_EVERY");
  if (every > 0 && call % every == 0) {
    atomic_fetch_add(&injected, 1);
    errno = EINTR;
    return -1;
  }
  if (env_long("FAULTSHIM_SHORT") && count > 1) {
    /* Between a quarter and a half of what was asked (a different share each call), at least 1. */
    size_t shorter = count / 4 + (size_t)(call % 7) * (count / 28) + 1;
    if (shorter < count) {
      atomic_fetch_add(&injected, 1);
      count = shorter;
    }
  }
  return real(fd, buf, count, offset);
}

static pread_fn next(const char* name) {
  pread_fn fn = (pread_fn)dlsym(RTLD_NEXT, name);
  if (fn == NULL) abort(); /* cannot happen with glibc: fail loudly rather than read nothing */
  return fn;
}

ssize_t pread(int fd, void* buf, size_t count, off_t offset) {
  static pread_fn real;
  if (real == NULL) real = next("pread");
  return faulty(real, fd, buf, count, offset);
}

ssize_t pread64(int fd, void* buf, size_t count, off_t offset) {
  static pread_fn real;
  if (real == NULL) real = next("pread64");
  return faulty(real, fd, buf, count, offset);
}
