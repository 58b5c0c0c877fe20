"""The package's structure stays one-way: its imports, read with `ast`, form no cycle and never point up
the layer order (docs/architecture.md). Imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "nf_trainer"
PLUGIN = ROOT / "hydra_plugins" / "nf_trainer_optuna"  # our Hydra sweeper: Hydra finds it in the hydra_plugins namespace
# From the bottom up: a module imports only from its own layer or below.
LAYERS = [
    ("core", ["nf_trainer", "nf_trainer.core"]),
    ("building blocks", ["nf_trainer.dataset", "nf_trainer.transforms", "nf_trainer.model", "nf_trainer.trainer"]),
    ("tasks", ["nf_trainer.tasks"]),
    ("tracking", ["nf_trainer.tracking"]),
    ("jobs", ["nf_trainer.jobs"]),
    ("sweep", ["nf_trainer.sweep", "hydra_plugins.nf_trainer_optuna"]),
    ("cli", ["nf_trainer.cli", "nf_trainer.ui", "nf_trainer.runs", "nf_trainer.prepare"]),
]
NO_MLFLOW = ("nf_trainer.core", "nf_trainer.dataset", "nf_trainer.transforms", "nf_trainer.model", "nf_trainer.trainer",
             "nf_trainer.tasks")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix that names `module`'s place."""
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} belongs to no layer: add its folder to LAYERS and docs/architecture.md"
    return rank


def imports(path: Path, modules: set[str]):
    """(line, imported package module, inside a function?, source line) for each import of the package."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    in_function = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(fn)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                yield node.lineno, target, id(node) in in_function, lines[node.lineno - 1]
                break


def graph() -> dict[str, dict]:
    files = {module_name(p): p for folder in (PACKAGE, PLUGIN) for p in folder.rglob("*.py")}
    modules = set(files)
    return {name: {"path": path, "imports": list(imports(path, modules))} for name, path in files.items()}


def test_every_module_has_a_layer():
    for name in graph():
        layer_of(name)


def test_no_import_points_up_the_layer_order():
    wrong = []
    for name, node in graph().items():
        for line, target, _, _ in node["imports"]:
            if layer_of(target) > layer_of(name) and not name.startswith(target + "."):
                wrong.append(f"{node['path'].relative_to(ROOT)}:{line}: {name} ({LAYERS[layer_of(name)][0]}) imports "
                             f"{target} ({LAYERS[layer_of(target)][0]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    edges = {name: {t for _, t, _, _ in node["imports"] if t != name and not name.startswith(t + ".")}
             for name, node in graph().items()}
    seen, stack, cycles = {}, [], []

    def visit(module):
        seen[module] = "open"
        stack.append(module)
        for target in edges[module]:
            if seen.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in seen:
                visit(target)
        stack.pop()
        seen[module] = "done"

    for module in edges:
        if module not in seen:
            visit(module)
    assert not cycles, "\n".join(cycles)


def test_imports_inside_functions_say_why_they_are_lazy():
    """The package's own modules are imported at the top; one imported in a function says why on that line."""
    unexplained = [f"{node['path'].relative_to(ROOT)}:{line}: {text.strip()}"
                   for node in graph().values() for line, _, inside, text in node["imports"]
                   if inside and "# lazy:" not in text]
    assert not unexplained, "\n".join(unexplained)


def test_the_building_blocks_never_import_mlflow():
    """The loop is handed a tracker: MLflow code lives in nf_trainer/tracking/ and above."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if module_name(path).startswith(NO_MLFLOW):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "mlflow"]
    assert not found, found
