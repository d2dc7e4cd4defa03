"""No import cycles in spendstream: the graph of which module imports which, built from the
source with ``ast`` over every package pyproject installs (``spendstream``, its ``cli``, and
``schemas/``, ``streams/``, ``sinks/`` mapped in as ``spendstream.schemas`` ...).

Every import counts wherever it is written: at module level, inside a function (where a
cycle hides until that function runs) and under ``if TYPE_CHECKING:`` (it never runs, but a
cycle through it is the same tangle: each module needs the other). Importing ``a.b.c`` also
runs the ``__init__`` of ``a`` and ``a.b``, so those count too. A cycle that cannot be
removed without a large redesign goes into ``ALLOWED`` with its reason.
"""

from __future__ import annotations

import ast
import graphlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: (importer, imported) edges allowed to close a cycle, each with why it cannot go yet
ALLOWED: dict[tuple[str, str], str] = {
    ("spendstream.schemas.models", "spendstream.sources"): (
        "WorkflowRun.platform is checked against the registered engines when a model is "
        "validated (a function-level import), and the registry checks each kind against "
        "the payload models; removing it moves the engine names into the contract layer"
    ),
}

#: module -> {imported module: "file:line" of the import}
Graph = dict[str, dict[str, str]]


def package_dirs(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, Path]:
    """Each installed package and its folder, as setuptools maps them."""
    config = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    mapped: dict[str, str] = config.get("package-dir", {})

    def folder(package: str) -> Path:
        if package in mapped:
            return pyproject.parent / mapped[package]
        parent, _, name = package.rpartition(".")
        return folder(parent) / name if parent else pyproject.parent / name

    return {package: folder(package) for package in config["packages"]}


def find_modules(packages: dict[str, Path]) -> dict[str, Path]:
    """Module name -> file, for the ``.py`` files directly in each package's folder."""
    modules = {}
    for package, folder in packages.items():
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """The dotted names an import statement loads (``from x import y``: ``x.y`` and ``x``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importer's package, up level - 1
        parts = importer.split(".") if is_package else importer.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(modules: dict[str, Path], root: Path = ROOT) -> Graph:
    """Which of ``modules`` each of them imports, anywhere in its source."""
    graph: Graph = {name: {} for name in modules}
    for importer, path in modules.items():
        ancestors = {importer.rsplit(".", i)[0] for i in range(importer.count(".") + 1)}
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            for name in _imported(node, importer, path.name == "__init__.py"):
                # the module itself and the packages whose __init__ the import runs
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    target = ".".join(parts[:i])
                    if target in modules and target not in ancestors:
                        graph[importer].setdefault(target, where)
    return graph


def find_cycles(graph: Graph, allowed: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Every cycle, one per line ("a -> b (where a imports b) -> ... -> a"), found one at a
    time: each found cycle's first edge is set aside so the search can go on to the next."""
    edges = {a: set(bs) - {b for (x, b) in (allowed or {}) if x == a} for a, bs in graph.items()}
    found = []
    while True:
        try:
            # graphlib wants predecessors: a module's imports come before it
            tuple(graphlib.TopologicalSorter(edges).static_order())
            return found
        except graphlib.CycleError as exc:
            # each node of exc.args[1] is imported by the next one: reversed, it reads "imports"
            cycle = list(reversed(exc.args[1]))
        steps = [cycle[0]]
        for a, b in zip(cycle, cycle[1:], strict=False):
            steps.append(f"-> {b} ({graph[a][b]})")
        found.append(" ".join(steps))
        edges[cycle[0]].discard(cycle[1])


def test_the_source_has_no_import_cycles() -> None:
    graph = import_graph(find_modules(package_dirs()))
    cycles = find_cycles(graph, ALLOWED)
    assert cycles == [], "import cycles (move the shared piece out):\n" + "\n".join(cycles)


def test_allowed_cycles_still_exist() -> None:
    graph = import_graph(find_modules(package_dirs()))
    stale = [edge for edge in ALLOWED if edge[1] not in graph.get(edge[0], {})]
    assert stale == [], "remove these from ALLOWED: the import is gone"


def test_the_graph_covers_every_package_and_every_kind_of_import() -> None:
    packages = package_dirs()
    # a package folder pyproject does not list would be missing here (and from the wheel)
    listed = set(packages.values())
    folders = {init.parent for folder in listed for init in folder.rglob("__init__.py")}
    assert folders - listed == set()
    graph = import_graph(find_modules(packages))
    assert len(graph) > 60
    # a function-level import, a relative import, a mapped folder's absolute import
    assert "spendstream.demo" in graph["spendstream.cli.demo"]
    assert "spendstream.streams.observability" in graph["spendstream.streams.app"]
    assert "spendstream.schemas.money" in graph["spendstream.render"]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cycle_through_a_function_level_import_is_found_and_named(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "a.py", "from pkg.b import helper\n")
    write(tmp_path / "pkg" / "b.py", "def helper():\n    from . import a\n    return a\n")
    write(tmp_path / "pkg" / "c.py", "import pkg.a\n")
    graph = import_graph(find_modules({"pkg": tmp_path / "pkg"}), tmp_path)
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    assert "pkg.a -> pkg.b (pkg/a.py:1)" in cycles[0] or "pkg.b -> pkg.a (pkg/b.py:2)" in cycles[0]
    assert set(cycles[0].split()) >= {"pkg.a", "pkg.b"} and "pkg.c" not in cycles[0]
    assert find_cycles(graph, {("pkg.b", "pkg.a"): "the example"}) == []


def test_a_cycle_through_a_package_init_is_found(tmp_path: Path) -> None:
    # importing pkg.sub.x runs pkg/sub/__init__.py, which imports pkg.y, which imports pkg.sub.x
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "sub" / "__init__.py", "from pkg import y\n")
    write(tmp_path / "pkg" / "sub" / "x.py", "")
    write(tmp_path / "pkg" / "y.py", "import pkg.sub.x\n")
    packages = {"pkg": tmp_path / "pkg", "pkg.sub": tmp_path / "pkg" / "sub"}
    graph = import_graph(find_modules(packages), tmp_path)
    assert graph["pkg.y"] == {"pkg.sub": "pkg/y.py:1", "pkg.sub.x": "pkg/y.py:1"}
    assert len(find_cycles(graph)) == 1


def test_render_and_the_demo_need_no_command() -> None:
    # the CLI imports them; they print what it prints without knowing a command
    graph = import_graph(find_modules(package_dirs()))
    for module in ("spendstream.render", "spendstream.demo"):
        assert [m for m in graph[module] if m.startswith("spendstream.cli")] == []
    tree = ast.parse((ROOT / "spendstream" / "render.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {name for name in names if name.split(".")[0] in ("typer", "click")}
