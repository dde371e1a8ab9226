"""The import graph between the top-level packages: one direction, no cycles, no torch in the runtime.

Every import counts, function-local ones included (they hide cycles, they do not remove
them). Layers, lowest first: basics <- runtime <- training, calibration <- export <- benchmarks.
"""

import ast
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


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno, id(node) in top_level))
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, line, _ in imports_of(path):
                target = module.split(".")[0]
                if target in PACKAGES and target != package:
                    edges.setdefault((package, target), []).append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return edges


def test_packages_import_only_downwards():
    wrong = [where for (src, dst), places in package_edges().items() if dst not in ALLOWED[src] for where in places]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for src, dst in package_edges():
        graph[src].add(dst)
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for package in PACKAGES:
        if package not in state:
            visit(package, [package])


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check has teeth: a calibration module importing export is caught."""
    fake = tmp_path / "calibration"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from export.bundle_build import build_bundle\n")
    for package in PACKAGES:
        if package != "calibration":
            (tmp_path / package).symlink_to(ROOT / package)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="import cycle: calibration -> export -> calibration"):
        test_no_import_cycle_between_packages()
    with pytest.raises(AssertionError, match="calibration/bad.py:2 imports export.bundle_build"):
        test_packages_import_only_downwards()


def test_nothing_imports_the_build_cli():
    """export/build_engines.py orchestrates; libraries call export.bundle_build."""
    users = [f"{path.relative_to(ROOT)}:{line}" for package in PACKAGES + ("tests",)
             for path in (ROOT / package).rglob("*.py")
             for module, line, _ in imports_of(path) if module in ("export.build_engines",)]
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
        path = ROOT / (module.replace(".", "/") + ".py")
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
