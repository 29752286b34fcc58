"""The package's layers, one way (issue 10): errors/io -> config -> nets/guide/losses/generators -> studio ->
api -> eval/worlds/demos -> commands -> cli. Imports are parsed from the source, those inside functions
included, so a cycle hidden by a local import is caught too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clipstudio"

# Layer of each top-level part of the package; a module may import only from its own layer or below.
LAYERS = {
    "_version": 0, "errors": 0, "settings": 0, "images": 0, "weights": 0, "embedded": 0, "checkpoints": 0, "resources": 0,
    "devices": 0, "schedules": 0, "video": 0,
    "config": 1, "recipes": 1, "keyframes": 1,
    "guide": 2, "losses": 2, "generators": 2, "diffusion": 2, "nets": 2,
    "studio": 3, "ranking": 3, "animation": 3,
    "api": 4, "__init__": 4, "benchmark": 4,
    "worlds": 5, "demos": 5, "evaluation": 5, "farm": 5, "live": 5,
    "commands": 7,
    "cli": 8,
}
# Parts a layer below may still not import although they sit lower: the core never imports a world by name.
CORE_NEVER_NAMES = ("worlds",)


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every clipstudio module that ``path`` imports, anywhere in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("clipstudio")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("clipstudio"):
                for alias in node.names:  # "from pkg import mod" imports the module; "import name" the package
                    sub = f"{target}.{alias.name}"
                    found.add(sub if _resolves(sub) else target)
    return {name for name in found if _resolves(name)}


def _resolves(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return name == "clipstudio" or (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel).is_dir()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) - {_module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _graph()}
    assert parts <= set(LAYERS), f"add these to LAYERS: {sorted(parts - set(LAYERS))}"


def test_no_import_runs_up_the_layers():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if target == "clipstudio":
                target = "clipstudio.__init__"
            low, high = LAYERS[_part(module)], LAYERS[_part(target)]
            if high > low:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run up the layers:\n" + "\n".join(sorted(upward))


def test_the_core_never_names_a_world():
    core = [p for p in PACKAGE.rglob("*.py")
            if LAYERS[_part(_module_name(p))] < LAYERS["worlds"]]
    offenders = [str(p.relative_to(PACKAGE)) for p in core if "shapes" in _module_source_imports(p)]
    assert not offenders, f"core modules that import a world: {offenders}"


def _module_source_imports(path: Path) -> str:
    return " ".join(sorted(_imports(path)))


def test_no_import_cycles():
    graph = _graph()
    # Package __init__ modules re-export their children; an import of a child through its parent is fine.
    edges = {m: {t for t in ts if not m.startswith(t + ".") and t != "clipstudio"} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
                return True
            if nxt not in state and visit(nxt, path + [nxt]):
                return True
        state[node] = 2
        return False

    for start in sorted(edges):
        if start not in state and visit(start, [start]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("folder", ["guide", "losses", "generators", "diffusion"])
def test_no_argparse_in_library_modules(folder):
    offenders = [str(p.relative_to(PACKAGE)) for p in (PACKAGE / folder).rglob("*.py") if "argparse" in p.read_text()]
    assert not offenders, f"argparse belongs in commands/: {offenders}"
