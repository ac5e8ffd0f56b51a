"""The package's shape, held by parsing its source (issue 12):

- imports point one way, from the layers below (docs/architecture.md draws them);
- no private (underscore) name is imported from another top-level package;
- no bertkit module is imported inside a function (such imports only hide a cycle); a third-party
  import inside a function is allowed for a heavy optional dependency, with a comment saying so;
- no function is longer than 80 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bertkit"

# Lowest first. A module may import from its own layer and the layers below it.
LAYERS = [
    {"jsonfile", "outputs", "version"},
    {"config", "tokenizer"},
    {"modeling", "checkpoint", "data", "inference", "runtime"},
    {"peft"},
    {"tasks"},
    {"training"},
    {"compress", "explain", "search"},
    {"serve"},
    {"api", "demo", "cli", "__main__", "__init__"},
]
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}
MAX_FUNCTION_LINES = 80


def modules() -> list[tuple[str, ast.Module, list[str]]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        top = relative.parts[0]
        source = path.read_text(encoding="utf-8")
        found.append((top, ast.parse(source, str(path)), source.splitlines(), str(relative)))
    return found


def bertkit_imports(tree: ast.Module) -> list[tuple[ast.AST, str, list[str]]]:
    """(node, imported top-level package, imported names) for every bertkit import."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "bertkit":
                continue
            names = [a.name for a in node.names]
            if len(parts) == 1:  # `from bertkit import x`: x is a module or the package root
                for name in names:
                    found.append((node, name if name in LAYER_OF else "__init__", [name]))
            else:
                found.append((node, parts[1], names))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "bertkit":
                    found.append((node, parts[1] if len(parts) > 1 else "__init__", []))
    return found


def function_imports(tree: ast.Module) -> list[ast.AST]:
    inside = []
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside += [n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return inside


def explained(lines: list[str], node: ast.AST) -> bool:
    """A comment on the import, or above it within its block of imports."""
    if "#" in " ".join(lines[node.lineno - 2:node.end_lineno]):  # on it, or on the line above
        return True
    index = node.lineno - 2
    while index >= 0 and lines[index].strip().startswith(("#", "import ", "from ")):
        if lines[index].strip().startswith("#"):
            return True
        index -= 1
    return False


def test_every_module_has_a_layer():
    unknown = sorted({top for top, *_ in modules()} - set(LAYER_OF))
    assert not unknown, f"add these to LAYERS (and docs/architecture.md): {unknown}"


def test_imports_point_down_the_layers():
    wrong = []
    for top, tree, _, where in modules():
        for node, target, _ in bertkit_imports(tree):
            if target in LAYER_OF and LAYER_OF[target] > LAYER_OF.get(top, 0):
                wrong.append(f"{where}:{node.lineno} ({top}, layer {LAYER_OF[top]}) imports "
                             f"bertkit.{target} (layer {LAYER_OF[target]})")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_packages():
    wrong = []
    for top, tree, _, where in modules():
        for node, target, names in bertkit_imports(tree):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if target != top and private:
                wrong.append(f"{where}:{node.lineno} imports {private} from bertkit.{target}")
    assert not wrong, "\n".join(wrong)


def test_no_bertkit_import_hides_in_a_function():
    wrong = []
    for top, tree, lines, where in modules():
        for node in function_imports(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                wrong.append(f"{where}:{node.lineno} relative import in a function")
                continue
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names])
            if any(name.split(".")[0] == "bertkit" for name in names):
                wrong.append(f"{where}:{node.lineno} {lines[node.lineno - 1].strip()}")
                continue
            if not explained(lines, node):
                wrong.append(f"{where}:{node.lineno} {lines[node.lineno - 1].strip()} "
                             "(a third-party import in a function needs a comment saying why)")
    assert not wrong, "\n".join(wrong)


def test_functions_fit_on_a_screen():
    long = []
    for _, tree, _, where in modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{where}:{node.lineno} {node.name} is {length} lines")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("source, expected", [
    ("from bertkit.training.finetune import run_finetuning", ("training", ["run_finetuning"])),
    ("from bertkit import BertModel", ("__init__", ["BertModel"])),
    ("from bertkit import tasks", ("tasks", ["tasks"])),
    ("import bertkit.serve.app", ("serve", [])),
])
def test_the_parser_reads_every_import_form(source, expected):
    ((_, target, names),) = bertkit_imports(ast.parse(source))
    assert (target, names) == expected
