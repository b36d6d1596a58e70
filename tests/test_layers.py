"""The package's shape: no module uses another's private names, no import cycles, a light import.

These read the source with :mod:`ast`; they fail on the first module that
reaches into another module's private names (``slide._open``,
``from .dask import _read_level``) or that closes a cycle of module-level imports.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

# The package under test, found without importing it: the source tree in a
# development install, site-packages when tools/asan.sh runs a copy of tests/.
PACKAGE = Path(importlib.util.find_spec("wsiarray").origin).parent

#: Names every Python object has; not "private" in the sense checked here.
_DUNDER = "__"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith(_DUNDER)


def _defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines itself: functions, classes, assignments, attributes it sets."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if _is_private(n)}


def _all_private_names() -> dict[str, set[str]]:
    return {module: _defined_private_names(ast.parse(path.read_text(), str(path)))
            for module, path in MODULES.items()}


def _private_uses(module: str, path: Path, others: set[str] | None = None) -> list[str]:
    """Private names ``module`` takes from other wsiarray modules (``others``: what they define)."""
    tree = ast.parse(path.read_text(), str(path))
    own = _defined_private_names(tree)
    if others is None:
        others = set().union(*(names for name, names in _all_private_names().items() if name != module))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module, node, path.name == "__init__.py")
            for alias in node.names:
                # importing a private *module* (wsiarray._native) is how packages are laid out;
                # importing a private *name* from a module is reaching in
                if _is_private(alias.name) and f"{source}.{alias.name}" not in MODULES \
                        and alias.name != "_engine":
                    problems.append(f"{module}:{node.lineno} imports {alias.name} from {source}")
        elif isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own \
                and node.attr in others:
            problems.append(f"{module}:{node.lineno} uses .{node.attr}, another module's private name")
    return problems


def test_no_module_uses_another_modules_private_names() -> None:
    problems = [p for module, path in MODULES.items() for p in _private_uses(module, path)]
    assert not problems, "\n".join(problems)


def _top_level_imports(module: str, path: Path) -> set[str]:
    """wsiarray modules imported when ``module`` is imported (not in functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, block, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("wsiarray"))
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node, path.name == "__init__.py")
                if not source.startswith("wsiarray"):
                    continue
                for alias in node.names:
                    found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)

    visit(tree.body)
    # Importing a submodule imports its package first; that is not an edge of the graph.
    return {name for name in found
            if name in MODULES and name != module and not module.startswith(name + ".")}


def test_module_level_imports_have_no_cycle() -> None:
    graph = {module: _top_level_imports(module, path) for module, path in MODULES.items()}
    graph = {m: {d for d in deps if MODULES[d].name != "__init__.py" or d == "wsiarray._native"}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    # The layers the design names: the request layer and the handle manager sit below the Slide.
    assert "wsiarray.slide" not in graph["wsiarray.batch"]
    assert "wsiarray.dask" not in graph["wsiarray.xarray_backend"]
    assert not {"wsiarray.slide", "wsiarray.batch", "wsiarray.dask"} & graph["wsiarray._request"]


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The private-name and cycle checks fail on code that breaks the rules."""
    bad = tmp_path / "mod.py"
    bad.write_text("from .slide import _pair\nimport x\nx.thing._opened()\n")
    assert len(_private_uses("wsiarray.mod", bad)) == 2  # _opened is Slide's
    fine = tmp_path / "fine.py"
    fine.write_text("class A:\n    def _own(self):\n        return self._own\nfrom . import _native\n")
    assert _private_uses("wsiarray.fine", fine) == []
    cyclic = tmp_path / "cyc.py"
    cyclic.write_text("from .slide import Slide\nif TYPE_CHECKING:\n    from .dask import x\n"
                      "def f():\n    from .xarray_backend import y\n")
    assert _top_level_imports("wsiarray.cyc", cyclic) == {"wsiarray.slide"}


def _imported_after(code: str) -> dict[str, object]:
    script = (
        "import json, sys, time\n"
        "t = time.perf_counter()\n"
        f"{code}\n"
        "seconds = time.perf_counter() - t\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'seconds': seconds}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_is_light() -> None:
    modules = set(_imported_after("import wsiarray")["modules"])  # type: ignore[arg-type]
    heavy = {"wsiarray.compat", "wsiarray.openslide", "tifffile", "imagecodecs", "dask", "xarray", "zarr",
             "distributed", "torch", "monai", "PIL"}
    assert not heavy & modules, sorted(heavy & modules)


def test_heavy_layers_load_when_used(pyramid_slides: dict[str, str]) -> None:
    path = pyramid_slides["jpeg"]
    after_open = set(_imported_after(f"import wsiarray; wsiarray.open({path!r}).read_region((0, 0), (8, 8))")
                     ["modules"])  # type: ignore[arg-type]
    assert "tifffile" in after_open and "dask" not in after_open and "xarray" not in after_open
    lazy_xarray = set(_imported_after(
        f"import xarray as xr, wsiarray; xr.open_dataset({path!r}, engine='wsiarray').image[:8, :8].values")
        ["modules"])  # type: ignore[arg-type]
    # (xarray itself imports dask, when installed, to recognise dask arrays)
    assert "wsiarray.dask" not in lazy_xarray, "plain lazy xarray indexing must not need the dask layer"
    cuimage = set(_imported_after("import wsiarray; wsiarray.CuImage")["modules"])  # type: ignore[arg-type]
    assert "wsiarray.compat" in cuimage
