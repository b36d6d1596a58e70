/*
 * jpeg_baseline.c: pure libjpeg-turbo decode time of the tiles of one TIFF level.
 *
 * The floor that wsiarray's reader is measured against: the same tiles, the same
 * library (system libjpeg-turbo through jpeglib.h), no TIFF parsing, no I/O, no Python.
 *
 * Build (benchmarks/jpeg_baseline.py does this into the benchmark cache directory):
 *     cc -O2 -o jpeg_baseline jpeg_baseline.c -ljpeg -lpthread
 *
 * Usage:
 *     jpeg_baseline SLIDE.tif PARAMS.bin NTHREADS MODE [OUT.raw]
 *     jpeg_baseline --version      (the libjpeg-turbo version it was compiled with)
 *
 * PARAMS.bin (written by jpeg_baseline.py, little-endian):
 *     char[8]  magic "WSIJPB01"
 *     uint64   ntiles, tile_w, tile_h, img_w, img_h, tiles_across, photometric,
 *              tables_len
 *     uint64   offsets[ntiles], bytecounts[ntiles]
 *     uint8    jpegtables[tables_len]       (the JPEGTables tag; may be empty)
 *
 * MODE
 *     tile  decode every tile into one reused tile-sized buffer per thread
 *           (pure decode time: the number the issue asks for);
 *     full  allocate a fresh img_h x img_w x 3 buffer and decode each tile's rows
 *           straight into it (edge tiles through a scratch buffer), i.e. the decode
 *           plus the cost of a fresh output array (page faults); with OUT.raw the
 *           image is written there after timing, for a correctness check;
 *     fullhuge  the same, with the buffer madvise(MADV_HUGEPAGE)d as numpy does for
 *           large arrays (with THP in "madvise" mode it then faults in 2 MiB
 *           pages; on the 2-core VM this was measured *slower*, 4.9 vs 4.4 CPU-s).
 *
 * The whole file is read into memory before timing. Tiles are split into NTHREADS
 * contiguous ranges, one pthread and one decompressor each. Only the decode loop
 * is timed (CLOCK_MONOTONIC, from thread start to the last join; plus the process
 * CPU time of all threads over the same span), and printed as
 *     seconds=<float> cpu_seconds=<float> tiles=<n> threads=<n> mode=<mode>
 *
 * Colour: for each tile, jpeg_color_space is set from the TIFF Photometric tag
 * (6 = YCbCr, 2 = RGB) and out_color_space = JCS_RGB; DCT method and upsampling are
 * libjpeg's defaults (JDCT_ISLOW, fancy upsampling), as OpenSlide and tifffile use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sys/mman.h>

#include <jpeglib.h>

#define HUGE_ALIGN ((size_t)2 << 20)

typedef struct {
  uint64_t ntiles, tile_w, tile_h, img_w, img_h, tiles_across, photometric,
      tables_len;
  uint64_t *offsets, *counts;
  unsigned char *tables;
} params_t;

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jb;
  char msg[JMSG_LENGTH_MAX];
} err_t;

typedef struct {
  const params_t *p;
  const unsigned char *file;
  uint64_t file_size;
  unsigned char *out; /* full image (mode full) or NULL (mode tile) */
  uint64_t first, last;
  int failed;
  char error[256];
} job_t;

static void die(const char *what) {
  fprintf(stderr, "jpeg_baseline: %s: %s\n", what, strerror(errno));
  exit(2);
}

static void on_error(j_common_ptr cinfo) {
  err_t *e = (err_t *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->msg);
  longjmp(e->jb, 1);
}

static void on_message(j_common_ptr cinfo) { (void)cinfo; /* ignore warnings */ }

static unsigned char *read_all(const char *path, uint64_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) die(path);
  if (fseek(f, 0, SEEK_END) != 0) die(path);
  long n = ftell(f);
  if (n < 0 || fseek(f, 0, SEEK_SET) != 0) die(path);
  unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
  if (!buf) die("malloc");
  if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) die(path);
  fclose(f);
  *size = (uint64_t)n;
  return buf;
}

static void load_params(const char *path, params_t *p) {
  uint64_t size;
  unsigned char *b = read_all(path, &size);
  if (size < 8 + 8 * 8 || memcmp(b, "WSIJPB01", 8) != 0) {
    fprintf(stderr, "jpeg_baseline: %s: not a params file\n", path);
    exit(2);
  }
  uint64_t *fields[8] = {&p->ntiles, &p->tile_w,       &p->tile_h,      &p->img_w,
                         &p->img_h,  &p->tiles_across, &p->photometric, &p->tables_len};
  for (int k = 0; k < 8; k++) memcpy(fields[k], b + 8 + 8 * k, 8);
  uint64_t need = 8 + 8 * 8 + 16 * p->ntiles + p->tables_len;
  if (size != need) {
    fprintf(stderr, "jpeg_baseline: %s: size %llu, expected %llu\n", path,
            (unsigned long long)size, (unsigned long long)need);
    exit(2);
  }
  p->offsets = (uint64_t *)(b + 72);
  p->counts = p->offsets + p->ntiles;
  p->tables = (unsigned char *)(p->counts + p->ntiles);
}

static void *decode_range(void *arg) {
  job_t *job = arg;
  const params_t *p = job->p;
  const uint64_t tw = p->tile_w, th = p->tile_h, row_bytes = p->img_w * 3;
  unsigned char *scratch = malloc(tw * th * 3);
  JSAMPROW *rows = malloc(th * sizeof(JSAMPROW));
  if (!scratch || !rows) die("malloc");

  struct jpeg_decompress_struct cinfo;
  err_t err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.output_message = on_message;
  volatile uint64_t i = job->first;
  if (setjmp(err.jb)) {
    snprintf(job->error, sizeof job->error, "tile %llu: %s",
             (unsigned long long)i, err.msg);
    job->failed = 1;
    jpeg_destroy_decompress(&cinfo);
    free(scratch);
    free(rows);
    return NULL;
  }
  jpeg_create_decompress(&cinfo);
  if (p->tables_len > 0) { /* tables-only stream: sets the tables for all tiles */
    jpeg_mem_src(&cinfo, p->tables, (unsigned long)p->tables_len);
    jpeg_read_header(&cinfo, FALSE);
  }
  for (; i < job->last; i++) {
    uint64_t off = p->offsets[i], cnt = p->counts[i];
    if (cnt == 0 || off + cnt > job->file_size) {
      snprintf(job->error, sizeof job->error, "tile %llu: bad offset/bytecount",
               (unsigned long long)i);
      job->failed = 1;
      break;
    }
    jpeg_mem_src(&cinfo, job->file + off, (unsigned long)cnt);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.jpeg_color_space = p->photometric == 2 ? JCS_RGB : JCS_YCbCr;
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    const uint64_t ty = i / p->tiles_across, tx = i % p->tiles_across;
    const uint64_t y0 = ty * th, x0 = tx * tw;
    const uint64_t ow = cinfo.output_width, oh = cinfo.output_height;
    const int direct = job->out && y0 + oh <= p->img_h && x0 + ow <= p->img_w;
    if (ow > tw || oh > th) {
      snprintf(job->error, sizeof job->error, "tile %llu: %llux%llu > tile size",
               (unsigned long long)i, (unsigned long long)ow,
               (unsigned long long)oh);
      job->failed = 1;
      jpeg_abort_decompress(&cinfo);
      break;
    }
    for (uint64_t r = 0; r < oh; r++)
      rows[r] = direct ? job->out + (y0 + r) * row_bytes + x0 * 3
                       : scratch + r * ow * 3;
    while (cinfo.output_scanline < oh)
      jpeg_read_scanlines(&cinfo, rows + cinfo.output_scanline,
                          (JDIMENSION)(oh - cinfo.output_scanline));
    jpeg_finish_decompress(&cinfo);
    if (job->out && !direct && y0 < p->img_h && x0 < p->img_w) {
      /* edge tile: copy the part inside the image */
      uint64_t h = p->img_h - y0 < oh ? p->img_h - y0 : oh;
      uint64_t w = p->img_w - x0 < ow ? p->img_w - x0 : ow;
      for (uint64_t r = 0; r < h; r++)
        memcpy(job->out + (y0 + r) * row_bytes + x0 * 3, scratch + r * ow * 3,
               w * 3);
    }
  }
  jpeg_destroy_decompress(&cinfo);
  free(scratch);
  free(rows);
  return NULL;
}

static double clock_seconds(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define STR_(x) #x
#define STR(x) STR_(x)

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--version") == 0) {
#ifdef LIBJPEG_TURBO_VERSION
    printf("libjpeg-turbo %s (JPEG_LIB_VERSION %d)\n", STR(LIBJPEG_TURBO_VERSION),
           JPEG_LIB_VERSION);
#else
    printf("libjpeg (JPEG_LIB_VERSION %d)\n", JPEG_LIB_VERSION);
#endif
    return 0;
  }
  if (argc < 5 || argc > 6) {
    fprintf(stderr,
            "usage: %s SLIDE.tif PARAMS.bin NTHREADS tile|full|fullhuge [OUT.raw]\n",
            argv[0]);
    return 2;
  }
  params_t p;
  load_params(argv[2], &p);
  uint64_t file_size;
  unsigned char *file = read_all(argv[1], &file_size);
  int nthreads = atoi(argv[3]);
  int use_hugepages = strcmp(argv[4], "fullhuge") == 0;
  int full = use_hugepages || strcmp(argv[4], "full") == 0;
  if (nthreads < 1 || (!full && strcmp(argv[4], "tile") != 0)) {
    fprintf(stderr, "jpeg_baseline: bad NTHREADS or MODE\n");
    return 2;
  }
  job_t *jobs = calloc((size_t)nthreads, sizeof(job_t));
  pthread_t *tids = calloc((size_t)nthreads, sizeof(pthread_t));
  if (!jobs || !tids) die("calloc");

  double t0 = clock_seconds(CLOCK_MONOTONIC);
  double c0 = clock_seconds(CLOCK_PROCESS_CPUTIME_ID);
  unsigned char *out = NULL;
  if (full) {
    size_t bytes = p.img_h * p.img_w * 3;
    void *mem = NULL;
    if (posix_memalign(&mem, HUGE_ALIGN, bytes ? bytes : 1) != 0) die("malloc output");
    out = mem;
    /* fullhuge: ask for transparent huge pages, as numpy does for large arrays */
    if (use_hugepages) madvise(out, bytes, MADV_HUGEPAGE);
  }
  for (int t = 0; t < nthreads; t++) {
    jobs[t] = (job_t){.p = &p, .file = file, .file_size = file_size, .out = out};
    jobs[t].first = p.ntiles * (uint64_t)t / (uint64_t)nthreads;
    jobs[t].last = p.ntiles * (uint64_t)(t + 1) / (uint64_t)nthreads;
    if (pthread_create(&tids[t], NULL, decode_range, &jobs[t]) != 0)
      die("pthread_create");
  }
  for (int t = 0; t < nthreads; t++) pthread_join(tids[t], NULL);
  double seconds = clock_seconds(CLOCK_MONOTONIC) - t0;
  double cpu_seconds = clock_seconds(CLOCK_PROCESS_CPUTIME_ID) - c0;

  for (int t = 0; t < nthreads; t++)
    if (jobs[t].failed) {
      fprintf(stderr, "jpeg_baseline: %s\n", jobs[t].error);
      return 1;
    }
  if (full && argc == 6) {
    FILE *f = fopen(argv[5], "wb");
    if (!f || fwrite(out, 1, p.img_h * p.img_w * 3, f) != p.img_h * p.img_w * 3 ||
        fclose(f) != 0)
      die(argv[5]);
  }
  printf("seconds=%.6f cpu_seconds=%.6f tiles=%llu threads=%d mode=%s\n", seconds,
         cpu_seconds, (unsigned long long)p.ntiles, nthreads, argv[4]);
  free(out);
  free(file);
  return 0;
}
