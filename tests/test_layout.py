"""The package's stages and the one direction its imports flow in.

scannet_tools <- base (sparse, device) <- data <- models <- losses <- config <- inference
<- evaluation <- engine <- viz <- cli/demo/check: a module may import its own stage and the
stages before it, never a later one, lazy imports inside functions included. Imports under
``if TYPE_CHECKING:`` are only read by type checkers and never run, so they do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the stage of every module, by the longest matching dotted prefix; lower numbers come first
STAGES = {
    "scannet_tools": 0,
    "minkseg": 1,  # the package docstring and version
    "minkseg.sparse": 1,
    "minkseg.device": 1,
    "minkseg.data": 2,
    "minkseg.models": 3,
    "minkseg.losses": 4,
    "minkseg.config": 5,  # holds the loss weights and augmentation settings of data and losses
    "minkseg.inference": 6,
    "minkseg.evaluation": 7,
    "minkseg.engine": 8,
    "minkseg.viz": 9,
    "minkseg.cli": 10,
    "minkseg.demo": 10,
    "minkseg.check": 10,
    "minkseg.__main__": 10,
}

# the only imports against the flow, each with the reason it stays
UPWARD_ALLOWED = {
    # with split_over_ranks every torchrun rank evaluates its share of the scenes and the
    # records are gathered: evaluation needs the process-group helpers of the engine
    ("minkseg.evaluation.model_eval", "minkseg.engine.distributed"),
    # a self-training run ends with the comparison report of its rounds (plots included)
    ("minkseg.engine.selftrain", "minkseg.viz.compare"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in ("minkseg", "scannet_tools") for p in sorted((ROOT / pkg).rglob("*.py"))}


def stage(name: str) -> int:
    prefixes = [p for p in STAGES if name == p or name.startswith(p + ".")]
    if not prefixes:
        raise KeyError(f"{name}: no stage in tests/test_layout.py STAGES; give the new module a stage")
    return STAGES[max(prefixes, key=len)]


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _walk_executed(node: ast.AST):
    """Every node that can run, skipping ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if _type_checking_only(child):
            for orelse in child.orelse:
                yield orelse
                yield from _walk_executed(orelse)
            continue
        yield child
        yield from _walk_executed(child)


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of this project that ``name`` imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _walk_executed(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from minkseg.engine import distributed`` imports the submodule
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] in ("minkseg", "scannet_tools"))
    return found


def upward_imports() -> list[str]:
    modules = package_modules()
    known = set(modules)
    bad = []
    for name, path in modules.items():
        for target in sorted(imported_modules(name, path, known)):
            if stage(target) > stage(name) and (name, target) not in UPWARD_ALLOWED:
                bad.append(f"{name} (stage {stage(name)}) imports {target} (stage {stage(target)})")
    return bad


def test_every_module_has_a_stage():
    for name in package_modules():
        stage(name)  # raises naming the module when it has none


def test_imports_flow_one_way():
    assert upward_imports() == []


def test_allowed_exceptions_are_still_needed():
    """An exception that no longer happens is removed from the list, so the list stays the truth."""
    modules = package_modules()
    known = set(modules)
    for low, high in UPWARD_ALLOWED:
        assert high in imported_modules(low, modules[low], known), f"{low} no longer imports {high}"


def test_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a lazy import of a later stage inside a function is reported,
    a relative import is resolved, a TYPE_CHECKING import is not counted."""
    pkg = tmp_path / "minkseg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "engine").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "engine" / "train.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "augment.py").write_text("")
    (pkg / "data" / "dataset.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .augment import x\nif TYPE_CHECKING:\n"
        "    from minkseg.engine import train\n\ndef f():\n    from minkseg.engine import train\n")
    (tmp_path / "scannet_tools").mkdir()
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert upward_imports() == ["minkseg.data.dataset (stage 2) imports minkseg.engine.train (stage 8)"]
    path = pkg / "data" / "dataset.py"
    assert imported_modules("minkseg.data.dataset", path, set(package_modules())) == {
        "minkseg.data.augment", "minkseg.engine.train"}

