"""The doctests' namespace: the names that the docstring examples of ``wsiarray`` use.

``python -m pytest`` runs the examples of every module under ``wsiarray/`` as
doctests (``--doctest-modules``). This file sits at the repository root, outside
the package, so it applies to them without being shipped in the wheel. Every
doctest finds these names already defined:

- ``wsiarray``, ``np``, ``xr``, ``tifffile``, ``pickle``;
- ``path``: a synthetic pyramid written once per session, RGB uint8, level 0
  1000x763 (W x H), then 500x382 and 250x191, JPEG, 128-px tiles, 0.5 µm/px
  (the ``pyramid_slides["jpeg"]`` slide of ``tests/conftest.py``);
- ``slide``: ``wsiarray.open(path)``, opened for each doctest and closed after it;
- ``img`` (examples of ``wsiarray.compat`` only): ``CuImage(svs_path)``, opened for
  each doctest and closed after it;
- ``svs_path``: a small Aperio-style slide (1024x768 and 512x384, JPEG tiles,
  0.25 µm/px, 40x) with a thumbnail, a label (100x80) and a macro (300x120);
- ``ome_path``: a one-level OME-TIFF, uint16, 256x192, channels DAPI, CD3 and CD8;
- ``companion_path``: the ``.companion.ome`` of a multi-file OME-TIFF set, uint16 128x96,
  channels DAPI and CD3, one TIFF per channel (``tests/wsitest.py``, ``write_ome_set``);
- ``qptiff_path``: a QPTIFF look-alike, channels DAPI, CD8 and PD-L1, 512x384 and two lower
  levels, with a thumbnail, an overview (``macro``) and a label (``write_qptiff``);
- ``dicom_path``: a folder holding a DICOM WSI series written with pydicom: level 0
  300x200 (JPEG frames of 64x64), level 1 150x100 (uncompressed), a label 40x20;
- ``philips_path``: a Philips TIFF look-alike (``tests/philips_support.py``): levels
  512x384 and 256x192 (stored padded to 128-px tiles: 512x384, 256x256), a label (40x30) and a macro
  (120x50) as base64 JPEGs in the XML;
- ``tmp``: a temporary folder of its own (a :class:`pathlib.Path`), also the
  current directory while the doctest runs;
- ``client`` and ``worker`` (examples of ``wsiarray.distributed`` only): a
  :class:`distributed.Client` of an in-process one-worker cluster, started for
  each doctest, and that cluster's worker.

Process-wide settings that examples change (the tile cache and
``WSIARRAY_CACHE``, the handle manager's capacity, the output-memory pool) are
put back after each doctest, so examples cannot leak into other tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _pytest.doctest import DoctestItem

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

from philips_support import write_philips
from wsitest import preserved_cache, texture, write_dicom_wsi, write_jpeg_pyramid, write_ome_set, write_qptiff

# wsiarray.openslide and the ICC transforms need Pillow (the "openslide" and "icc" extras):
# without it, their examples are not collected
collect_ignore_glob = [] if importlib.util.find_spec("PIL") else ["wsiarray/openslide/*", "wsiarray/_icc.py"]
# wsiarray.monai needs MONAI (the "monai" extra)
if importlib.util.find_spec("monai") is None:
    collect_ignore_glob.append("wsiarray/monai.py")


def _write_svs(path: Path) -> None:
    """An Aperio layout: level 0, thumbnail, level 1, label, macro (as ``tests/test_formats.py``)."""
    import tifffile

    rng = np.random.default_rng(7)
    header = "Aperio Image Library v12.0.15\r\n1024x768 [0,0 1024x768] (256x256) JPEG/RGB Q=70"
    with tifffile.TiffWriter(path) as tw:

        def write(shape: tuple[int, int], description: str, **kwargs: object) -> None:
            image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
            tw.write(image, photometric="rgb", description=description, metadata=None, **kwargs)

        tiled = {"tile": (256, 256), "compression": "jpeg"}
        write((768, 1024), f"{header}|AppMag = 40|MPP = 0.25|Date = 01/02/24", **tiled)
        write((192, 256), "Aperio Image Library v12.0.15\n1024x768 -> 256x192 - ", rowsperstrip=64)
        write((384, 512), f"{header} -> 512x384", **tiled)
        write((80, 100), "Aperio Image Library v12.0.15\nlabel 100x80")
        write((120, 300), "Aperio Image Library v12.0.15\nmacro 300x120")


def _write_ome(path: Path) -> None:
    """A one-level OME-TIFF with three named uint16 channels."""
    import tifffile

    planes = np.random.default_rng(8).integers(0, 4096, (3, 192, 256), dtype=np.uint16)
    metadata = {"axes": "CYX", "Channel": {"Name": ["DAPI", "CD3", "CD8"]},
                "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    tifffile.imwrite(path, planes, ome=True, tile=(128, 128), compression="zlib", metadata=metadata)


@pytest.fixture(scope="session")
def doctest_slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The slides of the doctest namespace, written once per session."""
    folder = tmp_path_factory.mktemp("doctest-slides")
    paths = {"path": folder / "pyramid.tif", "svs_path": folder / "small.svs",
             "ome_path": folder / "channels.ome.tif"}
    write_jpeg_pyramid(paths["path"])
    _write_svs(paths["svs_path"])
    _write_ome(paths["ome_path"])
    paths["dicom_path"] = folder / "dicom"
    _write_dicom(paths["dicom_path"])
    (folder / "ome-set").mkdir()
    ome_set = write_ome_set(folder / "ome-set", channels=("DAPI", "CD3"), size=(128, 96), levels=1,
                            companion=True, label=False)
    paths["companion_path"] = Path(ome_set["xml"])
    paths["qptiff_path"] = folder / "scan.qptiff"
    write_qptiff(paths["qptiff_path"])
    paths["philips_path"] = folder / "philips.tiff"
    write_philips(paths["philips_path"], width=500, height=380, tile=128, levels=2)
    return {name: str(p) for name, p in paths.items()}


def _write_dicom(folder: Path) -> None:
    folder.mkdir()
    write_dicom_wsi(folder / "level-0.dcm", texture(200, 300, 3, "uint8", seed=1), tile=64, codec="jpeg")
    write_dicom_wsi(folder / "level-1.dcm", texture(100, 150, 3, "uint8", seed=2), tile=64)
    write_dicom_wsi(folder / "label.dcm", texture(20, 40, 3, "uint8", seed=3), tile=40, flavor="LABEL")


@contextlib.contextmanager
def _in_process_cluster(namespace: dict) -> Iterator[None]:
    """``client`` and ``worker``: an in-process ``distributed`` cluster with one worker."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        namespace["client"] = client
        namespace["worker"] = next(iter(cluster.workers.values()))
        yield


@pytest.fixture(autouse=True)
def _doctest_names(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fill ``doctest_namespace`` for each doctest (nothing happens for other tests)."""
    if not isinstance(request.node, DoctestItem):
        yield
        return
    name = request.node.name
    import tifffile
    import xarray as xr

    import wsiarray

    namespace: dict = request.getfixturevalue("doctest_namespace")
    tmp: Path = request.getfixturevalue("tmp_path")
    request.getfixturevalue("monkeypatch").chdir(tmp)
    slides = request.getfixturevalue("doctest_slides")
    namespace.clear()
    namespace.update(slides)
    namespace.update(wsiarray=wsiarray, np=np, xr=xr, tifffile=tifffile, pickle=pickle, tmp=tmp)

    handles = wsiarray.file_handles()
    capacity = handles.capacity
    memory = wsiarray.output_memory()
    with preserved_cache(), contextlib.ExitStack() as stack:
        if name.startswith("wsiarray.distributed"):
            stack.enter_context(_in_process_cluster(namespace))
        slide = namespace["slide"] = wsiarray.open(slides["path"])
        stack.callback(slide.close)
        if name.startswith("wsiarray.compat"):
            img = namespace["img"] = wsiarray.CuImage(slides["svs_path"])
            stack.callback(img.close)
        try:
            yield
        finally:
            handles.capacity = capacity
            wsiarray.output_memory(max_mib=memory.max_mib, idle_seconds=memory.idle_seconds)
