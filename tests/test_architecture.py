"""ARCHITECTURE.md's invariants, read off the package's source with `ast`.

- the math core (cells, kernels, gemm, bf16, loss, model, classifier, tagger, optim) imports
  only itself, NumPy (kernels, gemm and bf16 also numba, gemm also llvmlite, numba's
  compiler), a few pure standard modules and charrnn.errors, and touches no files;
- only cli.py and progress.py print or use click or tqdm, and only cli.py exits;
- only atomic.py replaces a file (every checkpoint, id file, plot and page is
  written to a temp file and renamed over its target there);
- the modules import each other without cycles, and nothing imports the front
  rooms (cli, api) but the entry points;
- a module imports only its own layer and those below it, in ARCHITECTURE.md's
  table of layers (read from the file itself, so the two cannot drift apart);
- nothing escapes those checks: every module is on the map once, in its folder's
  row, under a name no other module has; the folders' __init__.py hold no code;
  no module imports a folder whole, and every form of import is read.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "charrnn"
# every module of the package, by its name (names are unique across the layer folders), and its folder
ALL_PATHS = [path for path in sorted(PACKAGE.rglob("*.py")) if path.stem != "__init__" or path.parent == PACKAGE]
PATHS = {path.stem: path for path in ALL_PATHS}
MODULES = {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for name, path in PATHS.items()}
FOLDER = {name: "" if path.parent == PACKAGE else path.parent.name for name, path in PATHS.items()}
CORE = ("cells", "kernels", "gemm", "bf16", "loss", "model", "classifier", "tagger", "optim")
COMPILED = {"kernels": {"numba"}, "gemm": {"numba", "llvmlite"}, "bf16": {"numba"}}
PURE_STDLIB = {"__future__", "math", "functools", "dataclasses", "typing", "threading", "warnings", "os"}  # model reads one environment variable
FILE_CALLS = {"open", "save", "savez", "load", "fromfile", "tofile", "memmap", "replace", "rename", "remove",
              "unlink", "mkdir", "makedirs", "rmdir", "write_file", "write_files"}


FOLDERS = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}


def imports(tree):
    """(charrnn modules, other top-level modules) that a module imports, anywhere in it. A layer folder
    imported whole (`from .. import core`, `import charrnn.core`) counts as the folder's name: no module
    has it, so test_no_module_imports_a_layer_folder_whole finds it."""
    ours, theirs = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or node.module.split(".")[0] == "charrnn"):
            # `from ..core import model`, `from ..core.model import X`, `from . import cells`: the module's name
            last = (node.module or "").split(".")[-1]
            ours.update([last] if last in PATHS else [a.name for a in node.names if a.name in PATHS.keys() | FOLDERS])
            if last in FOLDERS and not any(a.name in PATHS for a in node.names):
                ours.add(last)  # `from ..core import something` that is no module: the folder's __init__
        elif isinstance(node, ast.ImportFrom):
            theirs.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "charrnn" and len(parts) > 1:  # `import charrnn.core.model`
                    ours.add(parts[-1])
                else:
                    theirs.add(parts[0])
    return ours, theirs


def called_names(tree):
    """The names of everything called: f(...) gives f, a.b.f(...) gives f."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                yield func.id
            elif isinstance(func, ast.Attribute):
                yield func.attr


@pytest.mark.parametrize("name", CORE)
def test_the_math_core_imports_only_numpy_and_touches_no_files(name):
    ours, theirs = imports(MODULES[name])
    assert ours <= set(CORE) | {"errors"}, f"{name} imports charrnn.{sorted(ours)}"
    allowed = PURE_STDLIB | {"numpy"} | COMPILED.get(name, set())
    assert theirs <= allowed, f"{name} imports {sorted(theirs - allowed)}"
    touching = FILE_CALLS & set(called_names(MODULES[name]))
    assert not touching, f"{name} calls {sorted(touching)}"


def test_only_the_cli_prints_exits_or_draws_progress():
    for name, tree in MODULES.items():
        _, theirs = imports(tree)
        calls = set(called_names(tree))
        if name in ("cli", "progress", "__main__"):
            continue
        assert not theirs & {"click", "tqdm"}, f"{name} imports {sorted(theirs & {'click', 'tqdm'})}"
        assert not calls & {"print", "exit", "_exit"}, f"{name} calls {sorted(calls & {'print', 'exit', '_exit'})}"
    assert not {"exit", "_exit"} & set(called_names(MODULES["progress"]))  # progress draws; only cli exits
    # the check looks where the things are
    assert {"click", "tqdm"} <= imports(MODULES["cli"])[1] | imports(MODULES["progress"])[1]


def os_renames(tree) -> bool:
    """Whether a module calls os.replace or os.rename."""
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr in ("replace", "rename") and isinstance(node.func.value, ast.Name)
               and node.func.value.id == "os" for node in ast.walk(tree))


def test_only_atomic_replaces_files():
    renaming = sorted(name for name, tree in MODULES.items() if os_renames(tree))
    assert renaming == ["atomic"], f"{renaming}: write through atomic.write_file instead"


def test_the_rooms_import_each_other_without_cycles_and_only_entry_points_import_the_front():
    graph = {name: imports(tree)[0] & set(MODULES) for name, tree in MODULES.items()}
    for name, deps in graph.items():
        if "cli" in deps:
            assert name == "__main__", f"{name} imports cli"
        if "api" in deps:
            assert name in ("__init__", "cli", "progress"), f"{name} imports api"
    done, active = set(), []

    def visit(name):
        assert name not in active, "import cycle: " + " -> ".join(active[active.index(name):] + [name])
        if name in done:
            return
        active.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        active.pop()
        done.add(name)

    for name in graph:
        visit(name)


def layers_of_the_map() -> dict:
    """ARCHITECTURE.md's table of layers: module name -> its row, 0 for the top (the entry points)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text.split("| layer | modules |", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return {name: row for row, line in enumerate(rows) for name in re.findall(r"`(\w+)\.py`", line.split("|")[2])}


def rows_of_the_map() -> list:
    """ARCHITECTURE.md's table of layers, top row first: (the modules it lists, the folder it names)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text.split("| layer | modules |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|") for line in table.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [(re.findall(r"`(\w+)\.py`", row[2]), (re.findall(r"`charrnn/(\w*)/?`", row[3]) or [""])[0].strip("/"))
            for row in rows]


def folders_of_the_map() -> dict:
    """ARCHITECTURE.md's table of layers: module name -> the folder its row names ("" for the package itself)."""
    return {name: folder for names, folder in rows_of_the_map() for name in names}


def test_every_module_is_on_the_map_in_its_layer_folder():
    """A module ARCHITECTURE.md does not list would escape every layer check; one listed in a row
    whose folder it does not live in would make the map lie."""
    folder = folders_of_the_map()
    missing = sorted(set(PATHS) - set(folder))
    assert not missing, f"ARCHITECTURE.md's table of layers does not list {missing}"
    stale = sorted(set(folder) - set(PATHS))
    assert not stale, f"ARCHITECTURE.md's table of layers lists modules that do not exist: {stale}"
    for name in PATHS:
        assert FOLDER[name] == folder[name], f"{name}.py lives in charrnn/{FOLDER[name]}, the map says charrnn/{folder[name]}"


def test_each_module_has_one_name_and_one_row():
    """The checks know a module by its name: two modules of one name (in two folders), or one name in two
    rows of the map, would leave one of them checked against the other's layer."""
    names = [path.stem for path in ALL_PATHS]
    assert len(names) == len(set(names)), f"modules share a name: {sorted(n for n in set(names) if names.count(n) > 1)}"
    listed = [name for names, _ in rows_of_the_map() for name in names]
    assert len(listed) == len(set(listed)), f"ARCHITECTURE.md lists twice: {sorted(n for n in set(listed) if listed.count(n) > 1)}"


def test_the_layer_folders_hold_no_code_in_their_init():
    """A folder's __init__.py is no module of the map: code there would escape every check."""
    for folder in sorted(FOLDERS):
        tree = ast.parse((PACKAGE / folder / "__init__.py").read_text(encoding="utf-8"))
        assert len(tree.body) <= 1 and all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                                           for node in tree.body), f"charrnn/{folder}/__init__.py holds code"


def test_no_module_imports_a_layer_folder_whole():
    """`from .. import core` or `import charrnn.core` would hide which modules (so which layers) it uses."""
    for name, tree in MODULES.items():
        whole = sorted(imports(tree)[0] & FOLDERS)
        assert not whole, f"{name} imports the folder(s) {whole} whole: import their modules"


def test_the_import_reader_sees_every_form_of_import():
    forms = {"from ..core import model": {"model"}, "from ..core.model import X": {"model"},
             "from . import cells, gemm": {"cells", "gemm"}, "import charrnn.core.model as m": {"model"},
             "from charrnn.work import page": {"page"}, "from .. import core": {"core"},
             "from ..core import X": {"core"}, "from .. import errors": {"errors"}, "import numpy": set()}
    for code, expected in forms.items():
        assert imports(ast.parse(code))[0] == expected, code


def test_each_module_imports_only_its_own_layer_and_those_below():
    layer = layers_of_the_map()
    assert {"cli", "api", "model", "cells", "errors"} <= set(layer) and layer["cli"] < layer["model"] < layer["errors"]
    for name, tree in MODULES.items():
        for dep in sorted(imports(tree)[0] & set(layer)):
            assert layer[dep] >= layer[name], f"{name} imports {dep}, a layer above it in ARCHITECTURE.md"
