// Python bindings: thin wrappers that convert arguments, release the GIL
// around engine calls and map wsi::Error to wsiarray.errors classes.
#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <string>

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <vector>

#include "cache.hpp"
#include "../codecs/headers.hpp"
#include "error.hpp"
#include "fetch.hpp"
#include "streams.hpp"
#include "output_memory.hpp"
#include "place.hpp"
#include "plan.hpp"
#include "reader.hpp"
#include "../codecs/restart.hpp"
#include "resample.hpp"
#include "thread_pool.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using U64Array = nb::ndarray<const uint64_t, nb::c_contig, nb::device::cpu>;
using I64Array = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// A layer of a placed level: (width, height, tile_width, tile_height,
// jpeg_tables, offsets, bytecounts, external, page_index, cell_width,
// cell_height, first_column, first_row, xs, ys); codec and samples are the
// level's.
using LayerTuple = std::tuple<uint32_t, uint32_t, uint32_t, uint32_t, nb::bytes, U64Array, U64Array, nb::object,
                              uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, I64Array, I64Array>;
using OutArray = nb::ndarray<uint8_t, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using TileArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

nb::object error_class(wsi::ErrorKind kind) {
  nb::module_ errors = nb::module_::import_("wsiarray.errors");
  switch (kind) {
    case wsi::ErrorKind::Open: return errors.attr("OpenError");
    case wsi::ErrorKind::Format: return errors.attr("FormatError");
    case wsi::ErrorKind::Unsupported: return errors.attr("UnsupportedError");
    case wsi::ErrorKind::Read: return errors.attr("TileReadError");
    case wsi::ErrorKind::Decode: return errors.attr("TileDecodeError");
    case wsi::ErrorKind::Argument: return errors.attr("ArgumentError");
    case wsi::ErrorKind::Cache: return errors.attr("CacheError");
  }
  return errors.attr("WSIError");
}

// The first line of str(exc), prefixed with the exception's class name:
// the codec's own message without the traceback nanobind's what() carries.
std::string one_line(nb::handle exc) {
  std::string text = nb::cast<std::string>(nb::str(exc));
  const size_t newline = text.find('\n');
  if (newline != std::string::npos) text.resize(newline);
  const std::string name = nb::cast<std::string>(nb::handle(Py_TYPE(exc.ptr())).attr("__name__"));
  return text.empty() ? name : name + ": " + text;
}

// Keeps a Python exception alive inside a wsi::Error (its opaque cause);
// the reference is dropped with the GIL held, whichever thread drops it.
std::shared_ptr<void> keep_exception(nb::handle exc) {
  return std::shared_ptr<void>(new nb::object(nb::borrow(exc)), [](void* p) {
    nb::gil_scoped_acquire gil;
    delete static_cast<nb::object*>(p);
  });
}

// Calls a Python tile decoder from a pool thread: takes the GIL only for the
// call (imagecodecs releases it again while it decodes). A Python exception
// becomes a TileDecodeError with its one-line message, chained as __cause__.
wsi::ExternalDecoder wrap_decoder(nb::object decoder) {
  auto holder = std::make_shared<nb::object>(std::move(decoder));
  return [holder](const uint8_t* src, size_t size, uint64_t index, uint8_t* dst, size_t dst_size) {
    std::string problem;
    std::shared_ptr<void> cause;
    {
      nb::gil_scoped_acquire gil;
      try {
        nb::bytes data(reinterpret_cast<const char*>(src), size);
        nb::object result = (*holder)(data, index);
        TileArray tile = nb::cast<TileArray>(result);
        if (tile.nbytes() != dst_size) {
          problem = "decoder returned " + std::to_string(tile.nbytes()) + " bytes for a tile of " +
                    std::to_string(dst_size);
        } else {
          std::memcpy(dst, static_cast<const uint8_t*>(tile.data()), dst_size);
        }
      } catch (nb::python_error& e) {
        problem = one_line(e.value());
        cause = keep_exception(e.value());
      } catch (const std::exception& e) {
        problem = e.what();
      }
    }
    if (!problem.empty()) throw wsi::Error(wsi::ErrorKind::Decode, problem, std::move(cause));
  };
}

// A remote file's fetcher: calls `fetch(ranges)` (wsiarray._remote.RangeFetcher)
// with the GIL taken only for the call; it returns one bytes-like object per
// (offset, length) range, each checked to have exactly that length before
// it is copied. A Python exception becomes a TileReadError with its message,
// chained as __cause__.
class PyRangeFetcher final : public wsi::RangeFetcher {
 public:
  explicit PyRangeFetcher(nb::object fetch) : fetch_(std::move(fetch)) {}
  ~PyRangeFetcher() override {
    if (!Py_IsInitialized()) {
      fetch_.release();  // the interpreter is gone: leak rather than touch it
      return;
    }
    nb::gil_scoped_acquire gil;
    fetch_.reset();
  }

  void fetch(const std::vector<wsi::ByteRange>& ranges, const std::vector<uint8_t*>& dst) const override {
    if (ranges.size() != dst.size()) throw wsi::Error(wsi::ErrorKind::Argument, "one buffer per byte range expected");
    std::string problem;
    std::shared_ptr<void> cause;
    {
      nb::gil_scoped_acquire gil;
      try {
        nb::list arg;
        for (const wsi::ByteRange& r : ranges) arg.append(nb::make_tuple(r.offset, r.length));
        nb::object result = fetch_(arg);
        nb::list parts(result);
        if (parts.size() != ranges.size()) {
          problem = "the remote fetcher returned " + std::to_string(parts.size()) + " buffers for " +
                    std::to_string(ranges.size()) + " byte ranges";
        }
        for (size_t i = 0; problem.empty() && i < ranges.size(); ++i) {
          Py_buffer view;
          if (PyObject_GetBuffer(parts[i].ptr(), &view, PyBUF_C_CONTIGUOUS) != 0) throw nb::python_error();
          const uint64_t got = uint64_t(view.len);
          if (got != ranges[i].length) {
            problem = "the remote fetcher returned " + std::to_string(got) + " bytes for byte range " +
                      std::to_string(ranges[i].offset) + "+" + std::to_string(ranges[i].length);
          } else if (got > 0) {
            std::memcpy(dst[i], view.buf, size_t(got));
          }
          PyBuffer_Release(&view);
        }
      } catch (nb::python_error& e) {
        nb::module_ errors = nb::module_::import_("wsiarray.errors");
        const bool ours = PyObject_IsInstance(e.value().ptr(), errors.attr("WSIError").ptr()) == 1;
        problem = ours ? nb::cast<std::string>(nb::str(e.value())) : one_line(e.value());
        cause = keep_exception(e.value());
      } catch (const std::exception& e) {
        problem = e.what();
      }
    }
    if (!problem.empty()) throw wsi::Error(wsi::ErrorKind::Read, problem, std::move(cause));
  }

 private:
  nb::object fetch_;
};

std::vector<uint64_t> to_vector(const U64Array& a) { return {a.data(), a.data() + a.size()}; }
std::vector<int64_t> to_vector(const I64Array& a) { return {a.data(), a.data() + a.size()}; }

void argument_error(const std::string& message) { throw wsi::Error(wsi::ErrorKind::Argument, message); }

// dct= of the resampler: 0 off, 1 on, 2 snap (wsi::DctMode).
wsi::DctMode dct_mode(int dct) {
  if (dct < 0 || dct > 2) argument_error("dct must be 0 (off), 1 (on) or 2 (snap)");
  return static_cast<wsi::DctMode>(dct);
}

// A numpy array that owns `values` (moved to the heap), shaped `shape`.
template <class T>
nb::object to_numpy(std::vector<T>&& values, std::initializer_list<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(values));
  if (heap->empty()) heap->reserve(1);  // a valid data pointer for empty arrays
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::cast(nb::ndarray<nb::numpy, T>(heap->data(), shape.size(), shape.begin(), owner));
}

// The plan as a dict of numpy arrays (fields: see _engine.pyi, PlanDict).
nb::dict plan_dict(const wsi::Plan& plan) {
  const size_t n = plan.tiles.size();
  std::vector<uint32_t> plane(n), tx(n), ty(n), tile_rect(4 * n), out_rect(4 * n);
  std::vector<uint64_t> index(n), offset(n), bytecount(n);
  std::vector<uint8_t> whole(n);
  for (size_t i = 0; i < n; ++i) {
    const wsi::PlanTile& t = plan.tiles[i];
    plane[i] = t.plane;
    tx[i] = t.tx;
    ty[i] = t.ty;
    index[i] = t.index;
    offset[i] = t.offset;
    bytecount[i] = t.bytecount;
    const uint32_t in_tile[4] = {t.in_tile.x, t.in_tile.y, t.in_tile.width, t.in_tile.height};
    const uint32_t in_out[4] = {t.out_x, t.out_y, t.in_tile.width, t.in_tile.height};
    std::copy(in_tile, in_tile + 4, tile_rect.begin() + 4 * i);
    std::copy(in_out, in_out + 4, out_rect.begin() + 4 * i);
    whole[i] = t.whole ? 1 : 0;
  }
  std::vector<uint64_t> runs;
  runs.reserve(4 * plan.runs.size());
  for (const wsi::Run& r : plan.runs) {
    for (uint64_t v : {uint64_t(r.first), uint64_t(r.count), r.offset, r.size}) runs.push_back(v);
  }
  std::vector<uint32_t> fills;
  fills.reserve(4 * plan.fills.size());
  for (const wsi::Rect& f : plan.fills) {
    for (uint32_t v : {f.x, f.y, f.width, f.height}) fills.push_back(v);
  }
  const size_t r = plan.runs.size(), f = plan.fills.size();
  nb::dict d;
  d["region"] = nb::make_tuple(plan.region.x, plan.region.y, plan.region.width, plan.region.height);
  d["clipped"] = nb::make_tuple(plan.x0, plan.y0, std::max(plan.x0, plan.x1), std::max(plan.y0, plan.y1));
  d["plane"] = to_numpy(std::move(plane), {n});
  d["tx"] = to_numpy(std::move(tx), {n});
  d["ty"] = to_numpy(std::move(ty), {n});
  d["index"] = to_numpy(std::move(index), {n});
  d["offset"] = to_numpy(std::move(offset), {n});
  d["bytecount"] = to_numpy(std::move(bytecount), {n});
  d["tile_rect"] = to_numpy(std::move(tile_rect), {n, 4});
  d["out_rect"] = to_numpy(std::move(out_rect), {n, 4});
  d["whole"] = to_numpy(std::move(whole), {n}).attr("view")("bool");
  d["runs"] = to_numpy(std::move(runs), {r, 4});
  d["fill"] = to_numpy(std::move(fills), {f, 4});
  return d;
}

void check_tables(const U64Array& offsets, const U64Array& bytecounts, const wsi::LevelGeometry& g) {
  const size_t want[3] = {g.planes, g.tiles_down(), g.tiles_across()};
  for (const U64Array* a : {&offsets, &bytecounts}) {
    if (a->ndim() != 3 || a->shape(0) != want[0] || a->shape(1) != want[1] || a->shape(2) != want[2]) {
      argument_error("tile tables must be (planes, tiles_down, tiles_across) = (" + std::to_string(want[0]) +
                     ", " + std::to_string(want[1]) + ", " + std::to_string(want[2]) + ")");
    }
  }
}

wsi::Region make_region(int64_t x, int64_t y, int64_t width, int64_t height) {
  if (width < 0 || height < 0 || width > int64_t(UINT32_MAX) || height > int64_t(UINT32_MAX)) {
    argument_error("region size must be between 0 and 2**32 - 1");
  }
  return wsi::Region{x, y, uint32_t(width), uint32_t(height)};
}

}  // namespace

NB_MODULE(_engine, m) {
  m.doc() = "wsiarray's native tile engine (see docs/architecture.md).";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const wsi::Error& e) {
      nb::object cls = error_class(e.kind());
      if (!e.cause()) {
        PyErr_SetString(cls.ptr(), e.what());
        return;
      }
      // raise cls(message) from cause
      nb::object exc = cls(nb::str(e.what()));
      const nb::object& cause = *static_cast<const nb::object*>(e.cause().get());
      PyException_SetCause(exc.ptr(), nb::object(cause).release().ptr());
      PyErr_SetObject(cls.ptr(), exc.ptr());
    }
  });

  nb::class_<wsi::Reader>(m, "Reader")
      .def(
          "__init__",
          [](wsi::Reader* r, const std::string& path, const std::string& file_access) {
            const wsi::FileAccess access = wsi::parse_file_access(file_access);
            nb::gil_scoped_release release;
            new (r) wsi::Reader(path, access);
          },
          "path"_a, "file_access"_a = "pread")
      .def_static(
          "open_remote",
          [](const std::string& url, std::tuple<uint64_t, uint64_t, uint64_t, int64_t> identity, nb::object fetch,
             uint64_t max_gap, uint64_t max_span) {
            if (!PyCallable_Check(fetch.ptr())) argument_error("fetch must be callable");
            const wsi::FileIdentity id{std::get<0>(identity), std::get<1>(identity), std::get<2>(identity),
                                       std::get<3>(identity)};
            wsi::RemoteOptions options;
            options.max_gap = max_gap;
            options.max_span = max_span;
            auto fetcher = std::make_shared<PyRangeFetcher>(std::move(fetch));
            return new wsi::Reader(url, id, std::move(fetcher), options);
          },
          "url"_a, "identity"_a, "fetch"_a, "max_gap"_a = uint64_t(8) << 20, "max_span"_a = uint64_t(16) << 20,
          nb::rv_policy::take_ownership,
          "A reader of a remote object: `fetch([(offset, length), ...])` returns the bytes of every range.")
      .def_prop_ro("remote", [](const wsi::Reader& r) { return r.file().remote(); },
                   "Whether the slide is a remote object (read through its fetcher).")
      .def_prop_ro("path", [](const wsi::Reader& r) { return r.file().path(); })
      .def_prop_ro("file_access", [](const wsi::Reader& r) { return wsi::file_access_name(r.access()); },
                   "How the file's bytes are read: 'pread', 'mmap', 'direct' or 'preload'.")
      .def_prop_ro("identity",
                   [](const wsi::Reader& r) {
                     const auto& id = r.file().identity();
                     return nb::make_tuple(id.device, id.inode, id.size, id.mtime_ns);
                   },
                   "(st_dev, st_ino, st_size, st_mtime_ns) at open time.")
      .def_prop_ro("level_count", &wsi::Reader::level_count)
      .def_prop_ro("file_count", &wsi::Reader::file_count)
      .def("add_file", &wsi::Reader::add_file, "path"_a, nb::call_guard<nb::gil_scoped_release>(),
           "Opens another file whose tiles levels may hold (add_level's file); returns its index.")
      .def(
          "file_identity",
          [](const wsi::Reader& r, size_t index) {
            if (index >= r.file_count()) argument_error("no such file");
            const auto& id = r.file(index).identity();
            return nb::make_tuple(id.device, id.inode, id.size, id.mtime_ns);
          },
          "index"_a, "(st_dev, st_ino, st_size, st_mtime_ns) of file `index` at open time.")
      .def(
          "add_level",
          [](wsi::Reader& r, uint32_t width, uint32_t height, uint32_t tile_width, uint32_t tile_height,
             uint32_t samples_per_plane, uint32_t bytes_per_sample, int codec, bool byteswap, int predictor,
             nb::bytes jpeg_tables, int jpeg_in, int jpeg_out, U64Array offsets, U64Array bytecounts,
             nb::object external, uint32_t page_index, uint32_t compression, bool strips, uint32_t file,
             bool missing_fill, std::vector<LayerTuple> layers, uint32_t dct_scale, uint32_t stored_width,
             uint32_t stored_height, bool bilevel, std::vector<uint32_t> plane_files) {
            if (offsets.ndim() != 3 || bytecounts.ndim() != 3) {
              throw wsi::Error(wsi::ErrorKind::Format, "tile tables must be (planes, down, across)");
            }
            wsi::LevelDesc level;
            level.width = width;
            level.height = height;
            level.tile_width = tile_width;
            level.tile_height = tile_height;
            level.samples_per_plane = samples_per_plane;
            level.planes = static_cast<uint32_t>(offsets.shape(0));
            level.bytes_per_sample = bytes_per_sample;
            level.codec = static_cast<wsi::Codec>(codec);
            level.byteswap = byteswap;
            level.predictor = predictor;
            const auto* tables = static_cast<const uint8_t*>(jpeg_tables.data());
            level.jpeg_tables.assign(tables, tables + jpeg_tables.size());
            level.jpeg_in_colorspace = jpeg_in;
            level.jpeg_out_colorspace = jpeg_out;
            level.offsets = to_vector(offsets);
            level.bytecounts = to_vector(bytecounts);
            if (!external.is_none()) level.external = wrap_decoder(external);
            level.page_index = page_index;
            level.compression = compression;
            level.strips = strips;
            level.bilevel = bilevel;
            level.file = file;
            level.plane_files = std::move(plane_files);
            level.missing_is_fill = missing_fill;
            level.dct_scale = dct_scale;
            level.stored_width = stored_width;
            level.stored_height = stored_height;
            for (const LayerTuple& t : layers) {
              const U64Array& lo = std::get<5>(t);
              const U64Array& lb = std::get<6>(t);
              if (lo.ndim() != 3 || lb.ndim() != 3 || lo.shape(0) != level.planes) {
                throw wsi::Error(wsi::ErrorKind::Format, "layer tile tables must be (planes, down, across)");
              }
              wsi::LevelDesc layer = level;  // codec and samples
              layer.layers.clear();
              layer.width = std::get<0>(t);
              layer.height = std::get<1>(t);
              layer.tile_width = std::get<2>(t);
              layer.tile_height = std::get<3>(t);
              const nb::bytes& lt = std::get<4>(t);
              const auto* ltables = static_cast<const uint8_t*>(lt.data());
              layer.jpeg_tables.assign(ltables, ltables + lt.size());
              layer.offsets = to_vector(lo);
              layer.bytecounts = to_vector(lb);
              layer.external = std::get<7>(t).is_none() ? wsi::ExternalDecoder{} : wrap_decoder(std::get<7>(t));
              layer.page_index = std::get<8>(t);
              layer.placement.cell_width = std::get<9>(t);
              layer.placement.cell_height = std::get<10>(t);
              layer.placement.first_column = std::get<11>(t);
              layer.placement.first_row = std::get<12>(t);
              layer.placement.xs = to_vector(std::get<13>(t));
              layer.placement.ys = to_vector(std::get<14>(t));
              level.layers.push_back(std::move(layer));
            }
            if (!level.layers.empty()) {
              level.offsets.clear();
              level.bytecounts.clear();
            }
            return r.add_level(std::move(level));
          },
          "width"_a, "height"_a, "tile_width"_a, "tile_height"_a, "samples_per_plane"_a,
          "bytes_per_sample"_a, "codec"_a, "byteswap"_a, "predictor"_a, "jpeg_tables"_a, "jpeg_in"_a,
          "jpeg_out"_a, "offsets"_a, "bytecounts"_a, "external"_a.none(), "page_index"_a, "compression"_a = 0,
          "strips"_a = false, "file"_a = 0, "missing_fill"_a = false, "layers"_a = std::vector<LayerTuple>(),
          "dct_scale"_a = 1, "stored_width"_a = 0, "stored_height"_a = 0, "bilevel"_a = false,
          "plane_files"_a = std::vector<uint32_t>(),
          "Adds a level (`plane_files`: each plane's file, when they are in several); with `layers`, a placed level of width x height composed of those stored images.")
      .def(
          "read_region",
          [](const wsi::Reader& r, size_t level, int64_t x, int64_t y, OutArray out, nb::bytes fill,
             size_t workers) {
            const wsi::LevelDesc& desc = r.level(level);
            if (out.shape(2) != desc.pixel_bytes()) {
              argument_error("output array has the wrong pixel size");
            }
            if (fill.size() != desc.pixel_bytes()) {
              argument_error("fill value has the wrong pixel size");
            }
            if (out.shape(0) > UINT32_MAX || out.shape(1) > UINT32_MAX) {
              argument_error("region size must be between 0 and 2**32 - 1");
            }
            wsi::Region region{x, y, static_cast<uint32_t>(out.shape(1)), static_cast<uint32_t>(out.shape(0))};
            const auto* fill_bytes = static_cast<const uint8_t*>(fill.data());
            uint8_t* data = out.data();
            const size_t pitch = out.shape(1) * out.shape(2);
            nb::gil_scoped_release release;
            r.read_region(level, region, data, pitch, fill_bytes, workers);
          },
          "level"_a, "x"_a, "y"_a, "out"_a, "fill"_a, "workers"_a = 1,
          "Reads pixels at level coordinates (x, y) into out, a (h, w, pixel_bytes) uint8 array.")
      .def(
          "plan",
          [](const wsi::Reader& r, size_t level, int64_t x, int64_t y, int64_t width, int64_t height,
             size_t workers) {
            const wsi::Region region = make_region(x, y, width, height);
            wsi::Plan plan;
            {
              nb::gil_scoped_release release;
              r.plan(level, region, workers, plan);
            }
            return plan_dict(plan);
          },
          "level"_a, "x"_a, "y"_a, "width"_a, "height"_a, "workers"_a = 1,
          "The plan of a region of a level (see plan_region), without reading anything.")
      .def(
          "fetch",
          [](const wsi::Reader& r, size_t level, int64_t x, int64_t y, int64_t width, int64_t height,
             size_t workers) {
            const wsi::Region region = make_region(x, y, width, height);
            wsi::Plan plan;
            wsi::FetchLayout layout;
            std::vector<uint8_t> data;
            {
              nb::gil_scoped_release release;
              r.plan(level, region, workers, plan);
              layout = wsi::fetch_layout(plan);
              data.resize(layout.bytes);
              std::vector<const wsi::ByteSource*> sources;
              for (size_t f = 0; f < r.file_count(); ++f) sources.push_back(&r.source(f));
              wsi::fetch_plan(sources, plan, layout, data.data(), workers == 0 ? 1 : workers,
                              r.level(level).geometry(), r.label(level));
            }
            const size_t n = plan.tiles.size();
            std::vector<uint64_t> spans(2 * n);
            for (size_t i = 0; i < n; ++i) {
              spans[2 * i] = layout.tile_start[i];
              spans[2 * i + 1] = plan.tiles[i].bytecount;
            }
            nb::dict d = plan_dict(plan);
            const size_t bytes = data.size();
            d["data"] = to_numpy(std::move(data), {bytes});
            d["spans"] = to_numpy(std::move(spans), {n, 2});
            return d;
          },
          "level"_a, "x"_a, "y"_a, "width"_a, "height"_a, "workers"_a = 1,
          "The plan of a region plus the compressed bytes of its tiles, read with the plan's merged reads.")
      .def(
          "jpeg_streams_problem",
          [](const wsi::Reader& r, size_t level) { return wsi::jpeg_export_problem(r.level(level)); },
          "level"_a, "Empty when jpeg_streams can hand out the level's tiles, else why not.")
      .def(
          "jpeg_streams",
          [](const wsi::Reader& r, size_t level, int64_t x, int64_t y, int64_t width, int64_t height,
             size_t workers) {
            const wsi::Region region = make_region(x, y, width, height);
            wsi::TileStreams streams;
            {
              nb::gil_scoped_release release;
              wsi::export_jpeg_streams(r, level, region, workers, streams);
            }
            const size_t n = streams.plan.tiles.size();
            nb::dict d = plan_dict(streams.plan);
            const size_t bytes = streams.data.size();
            d["data"] = to_numpy(std::move(streams.data), {bytes});
            d["spans"] = to_numpy(std::move(streams.spans), {n, 2});
            d["kind"] = to_numpy(std::move(streams.kind), {n});
            d["frames"] = to_numpy(std::move(streams.frames), {n, 2});
            return d;
          },
          "level"_a, "x"_a, "y"_a, "width"_a, "height"_a, "workers"_a = 1,
          "The plan of a region plus each tile as a standalone JPEG stream (tables spliced in, Adobe APP14 "
          "on RGB-coded tiles), headers checked against the TIFF; kind 0 stream, 1 zeros, 2 fill.")
      .def(
          "level_info",
          [](const wsi::Reader& r, size_t level) {
            const wsi::LevelDesc& l = r.level(level);
            nb::dict d;
            d["width"] = l.width;
            d["height"] = l.height;
            d["tile_width"] = l.tile_width;
            d["tile_height"] = l.tile_height;
            d["planes"] = l.planes;
            d["samples_per_plane"] = l.samples_per_plane;
            d["bytes_per_sample"] = l.bytes_per_sample;
            d["tiles_across"] = l.tiles_across();
            d["tiles_down"] = l.tiles_down();
            d["codec"] = int(l.codec);
            d["byteswap"] = l.byteswap;
            d["predictor"] = l.predictor;
            d["bilevel"] = l.bilevel;
            d["jpeg_tables"] = nb::bytes(reinterpret_cast<const char*>(l.jpeg_tables.data()), l.jpeg_tables.size());
            d["jpeg_in"] = l.jpeg_in_colorspace;
            d["jpeg_out"] = l.jpeg_out_colorspace;
            d["page_index"] = l.page_index;
            d["file"] = l.file;
            d["plane_files"] = l.plane_files;
            d["missing_fill"] = l.missing_is_fill;
            const size_t planes = l.planes, down = l.tiles_down(), across = l.tiles_across();
            d["offsets"] = to_numpy(std::vector<uint64_t>(l.offsets), {planes, down, across});
            d["bytecounts"] = to_numpy(std::vector<uint64_t>(l.bytecounts), {planes, down, across});
            return d;
          },
          "level"_a, "The level's geometry, codec parameters and tile tables, to decode its tiles elsewhere.")
      .def(
          "read_ranges",
          [](const wsi::Reader& r, U64Array offsets, U64Array lengths, nb::ndarray<uint8_t, nb::c_contig, nb::device::cpu> out,
             size_t workers) {
            if (offsets.ndim() != 1 || lengths.ndim() != 1 || offsets.size() != lengths.size()) {
              argument_error("offsets and lengths must be 1-d arrays of one length");
            }
            nb::gil_scoped_release release;
            r.read_ranges(offsets.data(), lengths.data(), offsets.size(), out.data(), out.size(), workers);
          },
          "offsets"_a, "lengths"_a, "out"_a, "workers"_a = 1,
          "Reads each byte range of the file (raw, undecoded) into `out`, one after another.")
      .def("close", &wsi::Reader::close);

  m.def(
      "plan_region",
      [](uint32_t width, uint32_t height, uint32_t tile_width, uint32_t tile_height, U64Array offsets,
         U64Array bytecounts, uint64_t file_size, int64_t x, int64_t y, int64_t region_width, int64_t region_height,
         uint32_t samples_per_plane, uint32_t bytes_per_sample, size_t workers, const std::string& name) {
        if (offsets.ndim() != 3) argument_error("tile tables must be (planes, tiles_down, tiles_across)");
        const wsi::LevelGeometry g{width, height, tile_width, tile_height, static_cast<uint32_t>(offsets.shape(0)),
                                   samples_per_plane, bytes_per_sample};
        const std::string problem = wsi::geometry_problem(g);
        if (!problem.empty()) argument_error(problem);
        check_tables(offsets, bytecounts, g);
        const wsi::Region region = make_region(x, y, region_width, region_height);
        wsi::Plan plan;
        {
          nb::gil_scoped_release release;
          make_plan(g, wsi::TileTables{offsets.data(), bytecounts.data()}, file_size, region, workers,
                    wsi::TileLabel{&name, 0, 0}, plan);
        }
        return plan_dict(plan);
      },
      "width"_a, "height"_a, "tile_width"_a, "tile_height"_a, "offsets"_a, "bytecounts"_a, "file_size"_a, "x"_a,
      "y"_a, "region_width"_a, "region_height"_a, "samples_per_plane"_a = 1, "bytes_per_sample"_a = 1,
      "workers"_a = 1, "name"_a = "<tile tables>",
      "Plans a region of a level described by its geometry and tile tables, with no file and no decoder.");

  m.def(
      "read_batch",
      [](nb::list readers, nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> where,
         nb::ndarray<uint8_t, nb::ndim<4>, nb::c_contig, nb::device::cpu> out, nb::bytes fill, size_t workers) {
        // where[i] = (reader index, level, x, y) in level pixels; out[i] receives region i.
        const size_t n = where.shape(0);
        if (where.shape(1) != 4 || out.shape(0) != n) {
          argument_error("read_batch: where must be (N, 4) and out (N, h, w, px)");
        }
        std::vector<const wsi::Reader*> pointers;
        for (nb::handle h : readers) pointers.push_back(nb::cast<const wsi::Reader*>(h));
        const size_t h = out.shape(1), w = out.shape(2), px = out.shape(3);
        if (h > UINT32_MAX || w > UINT32_MAX) argument_error("region size must be between 0 and 2**32 - 1");
        std::vector<wsi::RegionRequest> requests(n);
        for (size_t i = 0; i < n; ++i) {
          const int64_t* row = where.data() + 4 * i;
          if (row[0] < 0 || size_t(row[0]) >= pointers.size() || row[1] < 0) {
            argument_error("read_batch: bad reader or level index");
          }
          requests[i] = wsi::RegionRequest{pointers[size_t(row[0])], size_t(row[1]),
                                           wsi::Region{row[2], row[3], uint32_t(w), uint32_t(h)},
                                           out.data() + i * h * w * px, w * px};
        }
        const auto* fill_bytes = static_cast<const uint8_t*>(fill.data());
        const size_t fill_size = fill.size();
        if (fill_size != px) argument_error("fill value has the wrong pixel size");
        nb::gil_scoped_release release;
        wsi::read_regions(requests, fill_bytes, fill_size, workers);
      },
      "readers"_a, "where"_a, "out"_a, "fill"_a, "workers"_a = 1,
      "Reads N equally sized regions (of one or several readers) into out with shared threads.");
  m.def(
      "jpeg_streams_batch",
      [](nb::list readers, nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> where,
         int64_t width, int64_t height, size_t workers) {
        // where[i] = (reader index, level, x, y) in level pixels, all regions width x height.
        const size_t n = where.shape(0);
        if (where.shape(1) != 4) argument_error("jpeg_streams_batch: where must be (N, 4)");
        std::vector<const wsi::Reader*> pointers;
        for (nb::handle h : readers) pointers.push_back(nb::cast<const wsi::Reader*>(h));
        std::vector<wsi::StreamRequest> requests(n);
        for (size_t i = 0; i < n; ++i) {
          const int64_t* row = where.data() + 4 * i;
          if (row[0] < 0 || size_t(row[0]) >= pointers.size() || row[1] < 0) {
            argument_error("jpeg_streams_batch: bad reader or level index");
          }
          requests[i] = wsi::StreamRequest{pointers[size_t(row[0])], size_t(row[1]),
                                           make_region(row[2], row[3], width, height)};
        }
        wsi::TileStreams streams;
        std::vector<uint32_t> request;
        {
          nb::gil_scoped_release release;
          wsi::export_jpeg_batch(requests, workers, streams, request);
        }
        const size_t tiles = streams.plan.tiles.size();
        nb::dict d = plan_dict(streams.plan);
        const size_t bytes = streams.data.size();
        d["request"] = to_numpy(std::move(request), {tiles});
        d["data"] = to_numpy(std::move(streams.data), {bytes});
        d["spans"] = to_numpy(std::move(streams.spans), {tiles, 2});
        d["kind"] = to_numpy(std::move(streams.kind), {tiles});
        d["frames"] = to_numpy(std::move(streams.frames), {tiles, 2});
        return d;
      },
      "readers"_a, "where"_a, "width"_a, "height"_a, "workers"_a = 1,
      "Reader.jpeg_streams for N equally sized regions (of one or several readers), concatenated; "
      "request[i] is tile i's region.");
  m.def(
      "read_resampled",
      [](nb::list readers, nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> where,
         nb::ndarray<const double, nb::ndim<2>, nb::c_contig, nb::device::cpu> coords,
         nb::ndarray<uint8_t, nb::ndim<4>, nb::c_contig, nb::device::cpu> out, nb::bytes fill,
         const std::string& sample, int dct, size_t workers) {
        const wsi::DctMode mode = dct_mode(dct);
        // where[i] = (reader index, level); coords[i] = (x, y, fx, fy) in level
        // pixels (see resample.hpp); out[i] receives region i.
        const size_t n = where.shape(0);
        if (where.shape(1) != 2 || coords.shape(0) != n || coords.shape(1) != 4 || out.shape(0) != n) {
          argument_error("read_resampled: where must be (N, 2), coords (N, 4) and out (N, h, w, px)");
        }
        std::vector<const wsi::Reader*> pointers;
        for (nb::handle h : readers) pointers.push_back(nb::cast<const wsi::Reader*>(h));
        const size_t h = out.shape(1), w = out.shape(2), px = out.shape(3);
        if (h > UINT32_MAX || w > UINT32_MAX) argument_error("region size must be between 0 and 2**32 - 1");
        const wsi::SampleType type = wsi::sample_type(sample);
        std::vector<wsi::ResampleRequest> requests(n);
        for (size_t i = 0; i < n; ++i) {
          const int64_t* row = where.data() + 2 * i;
          if (row[0] < 0 || size_t(row[0]) >= pointers.size() || row[1] < 0) {
            argument_error("read_resampled: bad reader or level index");
          }
          const double* c = coords.data() + 4 * i;
          wsi::ResampleRequest& r = requests[i];
          r.reader = pointers[size_t(row[0])];
          r.level = size_t(row[1]);
          r.x = c[0];
          r.y = c[1];
          r.fx = c[2];
          r.fy = c[3];
          r.out = out.data() + i * h * w * px;
          r.pitch = w * px;
          r.width = uint32_t(w);
          r.height = uint32_t(h);
        }
        const auto* fill_bytes = static_cast<const uint8_t*>(fill.data());
        const size_t fill_size = fill.size();
        if (fill_size != px) argument_error("fill value has the wrong pixel size");
        nb::gil_scoped_release release;
        wsi::read_resampled(requests, fill_bytes, fill_size, type, mode, workers);
      },
      "readers"_a, "where"_a, "coords"_a, "out"_a, "fill"_a, "sample"_a, "dct"_a = 1, "workers"_a = 1,
      "Reads N regions at a target resolution: level pixels area-averaged by fractional factors.");
  m.def(
      "dct_scale",
      [](const wsi::Reader& r, size_t level, double x, double y, double fx, double fy, int dct) {
        return wsi::dct_scale(r.level(level), x, y, fx, fy, dct_mode(dct));
      },
      "reader"_a, "level"_a, "x"_a, "y"_a, "fx"_a, "fy"_a, "dct"_a = 1,
      "The DCT scale (1, 2, 4 or 8) read_resampled decodes a level's tiles at for these factors.");
  m.def(
      "cache_configure",
      [](const std::string& type, uint64_t memory_capacity, uint64_t capacity, bool record,
         const std::string& name) {
        wsi::CacheConfig config;
        if (type == "nocache") {
          config.type = wsi::CacheType::None;
        } else if (type == "per_process") {
          config.type = wsi::CacheType::PerProcess;
        } else if (type == "shared_memory") {
          config.type = wsi::CacheType::SharedMemory;
        } else {
          argument_error("unknown cache type " + type);
        }
        config.memory_capacity = memory_capacity;
        config.capacity = capacity;
        config.record_stat = record;
        config.name = name;
        nb::gil_scoped_release release;
        wsi::set_current_cache(wsi::TileCache::create(config));
      },
      "type"_a, "memory_capacity"_a, "capacity"_a, "record"_a, "name"_a,
      "Replace the process's tile cache (memory_capacity in bytes, capacity in items).");
  m.def(
      "cache_stats",
      []() -> nb::object {
        auto cache = wsi::current_cache();
        if (!cache) return nb::none();
        wsi::CacheStats st;
        {
          nb::gil_scoped_release release;
          st = cache->stats();
        }
        const wsi::CacheConfig& c = cache->config();
        nb::dict d;
        d["type"] = c.type == wsi::CacheType::PerProcess ? "per_process" : "shared_memory";
        d["name"] = c.name;
        d["hits"] = st.hits;
        d["misses"] = st.misses;
        d["repairs"] = st.repairs;
        d["items"] = st.items;
        d["memory_size"] = st.memory_size;
        d["memory_capacity"] = st.memory_capacity;
        d["capacity"] = st.capacity;
        d["attached"] = st.attached;
        d["record"] = c.record_stat;
        return d;
      },
      "Statistics of the current cache, or None when there is none.");
  m.def("cache_clear", []() {
    if (auto cache = wsi::current_cache()) {
      nb::gil_scoped_release release;
      cache->clear();
    }
  });
  m.def("cache_record", [](bool record) {
    if (auto cache = wsi::current_cache()) cache->set_record(record);
  });
  m.def("cache_unlink", []() {
    if (auto cache = wsi::current_cache()) cache->unlink();
  });
  m.def("cache_detach", []() {
    // Called at exit: a shared segment is unlinked by the last process attached.
    if (auto cache = wsi::current_cache()) cache->detach();
  });

  m.def(
      "empty_output",
      [](size_t nbytes) {
        struct Lease {
          void* data;
          size_t capacity;
        };
        size_t capacity = 0;
        void* data = nullptr;
        try {
          data = wsi::acquire_output(nbytes, &capacity);
        } catch (const std::bad_alloc&) {
          // The request layer bounds outputs first; this is what is left (an address-space
          // limit, a full machine): say what could not be had, not just "std::bad_alloc".
          PyErr_Format(PyExc_MemoryError, "cannot map %zu bytes for the output array", nbytes);
          throw nb::python_error();
        }
        // The capsule is the array's base: views keep the memory leased.
        nb::capsule owner(new Lease{data, capacity}, [](void* p) noexcept {
          auto* lease = static_cast<Lease*>(p);
          wsi::release_output(lease->data, lease->capacity);
          delete lease;
        });
        size_t shape[1] = {nbytes};
        return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(data, 1, shape, owner);
      },
      "nbytes"_a, "An uninitialised uint8 array of nbytes from the output-memory pool.");
  m.def(
      "output_memory",
      [](nb::object max_bytes, nb::object max_idle_seconds) {
        wsi::OutputMemoryStats st = wsi::output_memory_stats();
        if (!max_bytes.is_none() || !max_idle_seconds.is_none()) {
          wsi::set_output_retention(max_bytes.is_none() ? st.max_bytes : nb::cast<uint64_t>(max_bytes),
                                    max_idle_seconds.is_none() ? st.max_idle_seconds
                                                               : nb::cast<double>(max_idle_seconds));
          st = wsi::output_memory_stats();
        }
        nb::dict d;
        d["retained_bytes"] = st.retained_bytes;
        d["retained_buffers"] = st.retained_buffers;
        d["reused"] = st.reused;
        d["mapped"] = st.mapped;
        d["max_bytes"] = st.max_bytes;
        d["max_idle_seconds"] = st.max_idle_seconds;
        return d;
      },
      "max_bytes"_a = nb::none(), "max_idle_seconds"_a = nb::none(),
      "Set (when given) and report the output-memory pool's limits and counters.");

  m.def(
      "stream_header",
      [](uint32_t compression, nb::bytes data) -> nb::object {
        const wsi::HeaderCodec codec = wsi::header_parser(compression);
        if (codec.parse == nullptr) return nb::none();
        wsi::StreamHeader h;
        const char* problem = codec.parse(static_cast<const uint8_t*>(data.data()), data.size(), h);
        if (problem != nullptr) throw wsi::Error(wsi::ErrorKind::Decode, problem);
        return nb::make_tuple(h.width, h.height, h.samples, h.bits);
      },
      "compression"_a, "data"_a,
      "(width, height, samples, bits) a tile stream of this TIFF Compression declares (0: not declared), "
      "or None for codecs whose streams carry no size; TileDecodeError when it cannot be read.");

  m.def(
      "jpeg_scan_header",
      [](nb::bytes data) {
        wsi::ScanHeader h;
        if (const char* problem = wsi::parse_scan_header(static_cast<const uint8_t*>(data.data()), data.size(), h)) {
          throw wsi::Error(wsi::ErrorKind::Format, problem);
        }
        nb::dict d;
        d["width"] = h.width;
        d["height"] = h.height;
        d["components"] = h.components;
        d["mcu_width"] = h.mcu_width;
        d["mcu_height"] = h.mcu_height;
        d["restart_interval"] = h.restart_interval;
        d["length"] = h.length;
        return d;
      },
      "data"_a,
      "The frame and scan header of a baseline JPEG whose restart intervals are tiles (NDPI): a dict of "
      "width, height, components, mcu_width, mcu_height, restart_interval and length (bytes up to the first "
      "entropy-coded byte); FormatError when it is not one.");
  m.def(
      "scan_restart_markers",
      [](const std::string& path, uint64_t offset, uint64_t size, uint64_t start, uint64_t max_markers) {
        std::vector<uint64_t> ends;
        {
          nb::gil_scoped_release release;
          wsi::File file(path);
          if (offset > file.size() || size > file.size() - offset || start > size) {
            throw wsi::Error(wsi::ErrorKind::Format, path + ": JPEG strip " + std::to_string(offset) + "+" +
                                                         std::to_string(size) + " lies outside the file");
          }
          wsi::RestartScanner scanner(start, max_markers);
          std::vector<uint8_t> chunk(std::min<uint64_t>(size, 4u << 20));
          try {
            for (uint64_t at = start; at < size && !scanner.done();) {
              const uint64_t n = std::min<uint64_t>(chunk.size(), size - at);
              file.read_exact(offset + at, n, chunk.data());
              scanner.feed(chunk.data(), size_t(n), at);
              at += n;
            }
          } catch (const wsi::Error& e) {
            // A bad scan is a bad file structure: the slide does not open.
            if (e.kind() != wsi::ErrorKind::Decode) throw;
            throw wsi::Error(wsi::ErrorKind::Format, path + ": JPEG strip at " + std::to_string(offset) + ": " + e.what());
          }
          if (!scanner.done()) throw wsi::Error(wsi::ErrorKind::Format, path + ": JPEG strip has no end-of-image marker");
          ends = scanner.ends();
        }
        return ends;
      },
      "path"_a, "offset"_a, "size"_a, "start"_a, "max_markers"_a,
      "Offsets (relative to the strip) just past each restart marker of the JPEG strip at offset..offset+size, "
      "scanning from `start` (the first entropy-coded byte) to its EOI, GIL released; FormatError when markers "
      "are out of sequence, more than max_markers, or there is no EOI.");

  m.def(
      "to_planes",
      [](nb::ndarray<const uint8_t, nb::ndim<3>, nb::c_contig, nb::device::cpu> src,
         nb::ndarray<uint8_t, nb::ndim<3>, nb::c_contig, nb::device::cpu> dst, size_t sample_bytes,
         size_t workers) {
        const size_t height = src.shape(0), width = src.shape(1), pixel_bytes = src.shape(2);
        const size_t planes = dst.shape(0);
        if (sample_bytes == 0 || pixel_bytes % sample_bytes != 0 || planes * sample_bytes > pixel_bytes ||
            dst.shape(1) != height || dst.shape(2) != width * sample_bytes) {
          argument_error("to_planes: dst must be (planes, h, w * sample_bytes) for src (h, w, pixel_bytes), "
                         "planes * sample_bytes <= pixel_bytes");
        }
        const uint8_t* from = src.data();
        uint8_t* to = dst.data();
        const size_t count = height * width, plane_pitch = count * sample_bytes;
        // About 1 MiB of pixels per task: a patch is one call on this thread.
        const size_t step = std::max<size_t>(1, (size_t(1) << 20) / std::max<size_t>(1, pixel_bytes));
        const size_t tasks = (count + step - 1) / step;
        nb::gil_scoped_release release;
        wsi::parallel_for(tasks, workers == 0 ? 1 : workers, [&](size_t t) {
          const size_t first = t * step, n = std::min(step, count - first);
          wsi::pixels_to_planes(from + first * pixel_bytes, n, pixel_bytes, sample_bytes, planes,
                                to + first * sample_bytes, plane_pitch);
        });
      },
      "src"_a, "dst"_a, "sample_bytes"_a, "workers"_a = 1,
      "Copies the first dst.shape[0] samples of src's (h, w) pixels into planes: dst[k] holds sample k of "
      "every pixel (sample_bytes each), GIL released; up to `workers` threads of the pool for large arrays.");

  m.def(
      "merge_ranges",
      [](std::vector<std::tuple<uint64_t, uint64_t>> ranges, uint64_t max_gap, uint64_t max_span) {
        std::vector<wsi::ByteRange> in;
        for (const auto& [offset, length] : ranges) {
          if (offset > UINT64_MAX - length) argument_error("byte range past 2**64");
          in.push_back(wsi::ByteRange{offset, length});
        }
        std::vector<std::tuple<uint64_t, uint64_t>> out;
        for (const wsi::ByteRange& r : wsi::merge_ranges(std::move(in), max_gap, max_span)) {
          out.emplace_back(r.offset, r.length);
        }
        return out;
      },
      "ranges"_a, "max_gap"_a, "max_span"_a,
      "The (offset, length) ranges a remote request fetches: sorted, those less than max_gap apart merged.");
  m.def("pool_size", &wsi::pool_size, "Threads in the process-wide decode pool.");
  m.def("set_pool_size", &wsi::set_pool_size, "threads"_a,
        "Resize the process-wide decode pool (0: one thread per CPU).");
}
