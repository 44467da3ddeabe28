"""The package's shape, checked from its source: no import cycle (function-local imports
count), serving reads no training code, no asset module imports another, no private Dagster
API, and every third-party package imported is declared in pyproject.toml."""

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stl_pipeline"
# Import names of declared distributions where the two differ.
DISTRIBUTIONS = {
    "faiss": "faiss-cpu",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "psycopg2": "psycopg2-binary",
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _executed(tree: ast.AST) -> list[ast.AST]:
    """Every node, less the bodies of ``if TYPE_CHECKING:`` (annotations are not imports run)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports() -> dict[str, set[str]]:
    """Every module of the package and every module name it imports, anywhere in its body."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        names = set()
        for node in _executed(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
        found[_module(path)] = names
    return found


def _internal(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {n for n in names if n in imports and n != m} for m, names in imports.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of the graph, or [] (a package's ``__init__`` importing its children is none)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):  # a module's own parent package
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    assert _cycle(_internal(_imports())) == []


def test_serving_reads_no_training_code_and_asset_modules_import_no_other() -> None:
    graph = _internal(_imports())
    for module, names in graph.items():
        if module.startswith("stl_pipeline.serving"):
            assert not [n for n in names if n.startswith("stl_pipeline.training")], module
        if module.endswith(".assets"):
            assert not [n for n in names if n.endswith(".assets")], module


def test_no_private_dagster_api_and_every_package_declared() -> None:
    imports = _imports()
    assert not [m for m, names in imports.items() if any(n.startswith("dagster._") for n in names)]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        spec.split(">")[0].split("=")[0].split("[")[0].strip().lower()
        for spec in [*project["dependencies"], *project["optional-dependencies"]["deploy"]]
    }
    used = {n.split(".")[0] for names in imports.values() for n in names} - {"stl_pipeline"}
    third_party = {n for n in used if n not in sys.stdlib_module_names and n != "__future__"}
    missing = {n for n in third_party if DISTRIBUTIONS.get(n, n).lower().replace("_", "-") not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
