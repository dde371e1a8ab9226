"""The import graph, module by module: one direction, no cycles, no torch in the runtime.

Every import counts, function-local ones included (they hide cycles, they do not remove
them); only ``if TYPE_CHECKING:`` blocks are left out (they never run). Layers, lowest
first: basics <- runtime <- training, calibration <- export <- benchmarks; inside runtime,
each subpackage's docstring says what it may import ("May import: ..."), and the test
holds it to that.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("basics", "runtime", "training", "calibration", "export", "benchmarks")
ALLOWED = {
    "basics": set(),
    "runtime": {"basics"},
    "training": {"basics", "runtime"},
    "calibration": {"basics", "runtime"},
    "export": {"basics", "runtime", "training", "calibration"},
    "benchmarks": {"basics", "runtime", "training", "calibration", "export"},
}


def _type_checking(node) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING" or
                                         getattr(test, "attr", None) == "TYPE_CHECKING")


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported name, line, at module level) for every import statement that can run in a file:
    ``from A import b`` gives ``A.b`` (a module or a name in A; :func:`resolve` tells which)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if _type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(f"{node.module}.{alias.name}", node.lineno, id(node) in top_level) for alias in node.names]
        pending.extend(ast.iter_child_nodes(node))
    return found


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name (without the ``img2music.`` the wheel adds) -> file, for every package."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (the longest prefix that is one), or None."""
    name = name.removeprefix("img2music.")
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def module_edges(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    """(importer, imported) module pairs -> where (file:line)."""
    modules = project_modules(root)
    edges: dict[tuple[str, str], list[str]] = {}
    for module, path in modules.items():
        for name, line, _ in imports_of(path):
            target = resolve(name, modules)
            if target is not None and target != module:
                edges.setdefault((module, target), []).append(f"{path.relative_to(root)}:{line} imports {name}")
    return edges


def cycles(edges) -> list[list[str]]:
    """Every strongly connected set of two or more modules, as one cycle through it (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for src, dst in sorted(edges):
        graph.setdefault(src, []).append(dst)
        graph.setdefault(dst, [])
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(_cycle_through(sorted(members), graph))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _cycle_through(members: list[str], graph) -> list[str]:
    """One path from the first member back to itself inside the set (breadth-first: the shortest)."""
    start, inside = members[0], set(members)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in graph[node]:
            if nxt == start:
                return paths[node] + [start]
            if nxt in inside and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return members


def _package(module: str) -> str:
    return module.split(".")[0]


def test_no_import_cycle_between_modules():
    found = cycles(module_edges())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_packages_import_only_downwards():
    wrong = [where for (src, dst), places in module_edges().items()
             if _package(dst) != _package(src) and _package(dst) not in ALLOWED[_package(src)] for where in places]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def runtime_rules(root: Path = ROOT) -> dict[str, set[str]]:
    """runtime subpackage -> what else of the runtime its docstring's "May import:" line names
    (subpackages, the top-level modules such as ``torch_reference``; "runtime" is the public API
    in ``runtime/__init__.py``, which "img2music.runtime (all of it)" includes)."""
    everything = {p.parent.name for p in (root / "runtime").glob("*/__init__.py")}
    everything |= {p.stem for p in (root / "runtime").glob("*.py") if p.stem != "__init__"} | {"runtime"}
    rules = {}
    for init in sorted((root / "runtime").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        found = re.search(r"May import:(.*?)(?:\n\n|$)", doc, re.S)
        assert found, f"{init.relative_to(root)}: its docstring must say what it may import ('May import: ...')"
        text = found.group(1)
        rules[init.parent.name] = everything if "(all of it)" in text else set(re.findall(r"img2music\.runtime\.(\w+)", text))
    return rules


def test_runtime_subpackages_import_what_their_docstrings_allow():
    rules = runtime_rules()
    wrong = []
    for (src, dst), places in module_edges().items():
        s, d = src.split("."), dst.split(".")
        if s[0] != "runtime" or d[0] != "runtime" or len(s) < 2 or s[1] not in rules:
            continue  # only the modules inside a runtime subpackage are held to a rule
        target = d[1] if len(d) > 1 else "runtime"
        if target != s[1] and target not in rules[s[1]]:
            wrong += places
    assert not wrong, "imports a runtime subpackage's docstring does not allow:\n" + "\n".join(wrong)


def test_the_checks_have_teeth(tmp_path):
    """A module cycle (calibration <-> export, hidden in a function) and a runtime subpackage
    importing one its docstring does not name are both caught."""
    for package in PACKAGES:
        (tmp_path / package).symlink_to(ROOT / package)
    (tmp_path / "calibration").unlink()
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "__init__.py").write_text("")
    (tmp_path / "calibration" / "bad.py").write_text("def f():\n    from img2music.export.bundle_build import b\n")
    (tmp_path / "export").unlink()
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "__init__.py").write_text("")
    (tmp_path / "export" / "bundle_build.py").write_text("from img2music.calibration.bad import f\n")
    assert cycles(module_edges(tmp_path)) == [["calibration.bad", "export.bundle_build", "calibration.bad"]]
    assert runtime_rules()["bundle"] == set()  # bundle may import nothing else of the runtime


def test_imports_use_the_one_import_name():
    """`import runtime` would load a second copy of a module beside img2music.runtime."""
    bare = [f"{path.relative_to(ROOT)}:{line} {name}" for path in project_modules(ROOT).values()
            for name, line, _ in imports_of(path) if _package(name) in PACKAGES]
    bare += [f"{path.relative_to(ROOT)}:{line} {name}" for path in (ROOT / "tests").rglob("*.py")
             for name, line, _ in imports_of(path) if _package(name) in PACKAGES]
    assert not bare, bare


def test_every_package_folder_is_in_the_wheel():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"img2music"} | {"img2music." + ".".join(init.parent.relative_to(ROOT).parts)
                               for package in PACKAGES for init in (ROOT / package).rglob("__init__.py")}
    assert listed == folders


def test_nothing_imports_the_build_cli():
    """export/build_engines.py orchestrates; libraries call export.bundle_build."""
    modules = project_modules(ROOT)
    users = [f"{path.relative_to(ROOT)}:{line}" for path in list(modules.values()) + list((ROOT / "tests").rglob("*.py"))
             for name, line, _ in imports_of(path) if resolve(name, modules) == "export.build_engines"]
    assert not users, users


def test_runtime_modules_import_no_torch_at_module_level():
    """The runtime runs on onnxruntime + numpy; only the PyTorch reference may load torch (lazily)."""
    heavy = ("torch", "transformers", "onnx")
    found = [f"{path.relative_to(ROOT)}:{line} {module}" for path in (ROOT / "runtime").rglob("*.py")
             for module, line, module_level in imports_of(path)
             if module_level and module.split(".")[0] in heavy]
    assert not found, found


def test_console_scripts_resolve_and_answer_help():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"img2music-generate", "img2music-live", "img2music-build"} <= set(scripts)
    bin_dir = Path(sys.executable).parent
    for name, target in scripts.items():
        module, func = target.split(":")
        path = ROOT / (module.removeprefix("img2music.").replace(".", "/") + ".py")
        assert path.is_file() and f"def {func}(" in path.read_text(), target
        exe = bin_dir / name
        assert exe.is_file(), f"{name} is not installed next to {sys.executable} (pip install -e .)"
        proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage:" in proc.stdout, (name, proc.stderr[-500:])
        # defaults stated once, and never as a bare "None" (basics.cli_help)
        text = " ".join(proc.stdout.split())
        assert "(default: None)" not in text, name
        twice = [part for part in text.split(" --") if part.count("(default") > 1]
        assert not twice, (name, twice)
