"""The house's layering, read from the imports (every import, at any depth of a module, TYPE_CHECKING ones too):
no import circle inside torchrest/, the handlers (api/, grpc/) never reach into the engine, and no module
imports another module's private name; and outside torchrest/tasks/ nothing names a task."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "torchrest"
HANDLERS = ("torchrest.api", "torchrest.grpc")
GENERATED = ("inference_pb2",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if not any(path.name.startswith(prefix) for prefix in GENERATED)
    }


def imported(path: Path, known: dict[str, Path]) -> Iterator[tuple[str, str]]:
    """(module, name) for every `import torchrest...` and `from torchrest... import name` in the file; the
    module is the one that provides the name (a submodule, when the name is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("torchrest"):
                    yield alias.name, ""
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative: from the package up
                base = package.split(".")
                source = ".".join([*base[: len(base) - node.level + 1], *([source] if source else [])])
            if not source.startswith("torchrest"):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield (submodule, "") if submodule in known else (source, alias.name)


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {target for target, _ in imported(path, known) if target in known and target != name}
        for name, path in known.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_in_the_package() -> None:
    assert circles(import_graph()) == []


def test_the_handlers_never_import_the_engine() -> None:
    graph = import_graph()
    reaching = {
        module: sorted(target for target in targets if target.startswith("torchrest.engine"))
        for module, targets in graph.items()
        if module.startswith(HANDLERS)
    }
    assert {module: targets for module, targets in reaching.items() if targets} == {}


def test_no_module_imports_another_modules_private_name() -> None:
    known = modules()
    private = [
        f"{module_name(path)} imports {name} from {source}"
        for path in known.values()
        for source, name in imported(path, known)
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# -- each task owns all of itself: outside torchrest/tasks/ nothing names one ------------------------------
TASK_NAMES = ("classify", "embed", "detect", "segment", "obb")  # the built-ins (a user's own are named nowhere here)
# where a model is what it is, its tasks are its data (the built-in networks classify and embed); --help's
# examples show real commands
MAY_NAME_TASKS = ("torchrest.tasks", "torchrest.models.registry", "torchrest.cli")
TASK_WORD = re.compile(r"\b(?:" + "|".join(TASK_NAMES) + r")\b", re.IGNORECASE)


def task_mentions(path: Path) -> list[str]:
    """The code of `path` that names a built-in task: a string (not a docstring), a name, an attribute, an
    import; and every comparison with a `task` (`if task == ...`)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        words: list[str] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words = [node.value]
        elif isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, ast.ImportFrom):
            words = [node.module or "", *(alias.name for alias in node.names)]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(side, ast.Name | ast.Attribute) and ast.unparse(side).endswith("task") for side in sides):
                if any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
                    if any(isinstance(side, ast.Constant | ast.Tuple | ast.List | ast.Set) for side in sides):
                        found.append(f"line {node.lineno}: {ast.unparse(node)}")
        for word in words:
            for part in re.split(r"[^A-Za-z0-9]+|_", word):  # CLASSIFY, tasks.detect, "/detect", DETECT_OPTIONS
                if TASK_WORD.fullmatch(part):
                    found.append(f"line {getattr(node, 'lineno', '?')}: {word!r}")
    return found


def test_nothing_outside_a_tasks_own_module_names_a_task() -> None:
    named = {
        name: mentions
        for name, path in modules().items()
        if not name.startswith(MAY_NAME_TASKS) and (mentions := task_mentions(path))
    }
    assert named == {}


def test_the_pages_script_knows_views_not_tasks() -> None:
    script = (PACKAGE / "api" / "static" / "app.js").read_text()
    code = re.sub(r"//[^\n]*", "", script)
    assert TASK_WORD.findall(code) == []


def test_the_task_check_finds_a_task_named_in_code(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""It may say classify in its docstring."""\nif job.task == "x":\n    route = "/detect"\n')
    assert task_mentions(sample) == ["line 2: job.task == 'x'", "line 3: '/detect'"]
