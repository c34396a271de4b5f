"""bertfast's modules import each other without a cycle (imports inside functions included: a deferred
import still ties the two modules together), and the model file holds the modules only."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_graph() -> dict[str, set[str]]:
    """module -> the bertfast modules it imports (a name imported from a package that is not a module of
    its own, such as `from bertfast import BertModel`, counts as the package; the compiled _C is left out)."""
    files = {}
    for path in (ROOT / "bertfast").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {owner(a.name) for a in node.names if a.name.startswith("bertfast")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if base.startswith("bertfast"):
                    edges |= {owner(f"{base}.{a.name}") if f"{base}.{a.name}" in files else owner(base)
                              for a in node.names if f"{base}.{a.name}" != "bertfast._C"}
        graph[module] = edges - {module, None}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "bertfast.models.batch" in graph["bertfast.integrations.transformers"]
    assert cycles(graph) == []


def test_a_deferred_import_back_is_a_cycle():
    """The check sees an import inside a function (as to_transformers once imported the integrations)."""
    graph = import_graph()
    graph["bertfast.models.pretrained"] = graph["bertfast.models.pretrained"] | {"bertfast.integrations"}
    assert any("bertfast.models.pretrained" in c for c in cycles(graph))


def test_the_model_file_holds_the_modules_only():
    """models/bert.py: the transformer's modules and BertModel; the batch machinery and transformers'
    PreTrainedModel surface live in models/batch.py and models/pretrained.py."""
    tree = ast.parse((ROOT / "bertfast" / "models" / "bert.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    assert defined == {"BertSelfAttention", "BertSelfOutput", "BertAttention", "BertIntermediate", "BertOutput",
                       "BertLayer", "BertEncoder", "BertPooler", "BertModel"}
    assert "bertfast.integrations" not in import_graph()["bertfast.models.pretrained"]
