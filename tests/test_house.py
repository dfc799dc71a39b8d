"""The house rules a newcomer relies on (STYLE.md, issue 18), read off the sources with ``ast``:
no import cycle in jacosr (function-level imports included), the run format's file name spelled
in one module, no experiment importing another, the scoring API apart from the training loop,
no module over 600 lines, no measured figures in jacosr's sources; and the tests importing their
shared helpers as ``helpers``."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "jacosr"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The jacosr modules ``name`` imports, anywhere in its file (a ``from package import
    module`` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_import_graph_has_no_cycle():
    """Packages (``jacosr.data``) count as the modules their ``__init__`` re-exports from, so an
    edge into a package is followed to its modules."""
    done, path = set(), []

    def visit(name: str) -> None:
        if name in path:
            raise AssertionError(f"import cycle: {' -> '.join([*path[path.index(name) :], name])}")
        if name in done:
            return
        path.append(name)
        for target in sorted(GRAPH[name]):
            visit(target)
        path.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


def test_the_results_file_is_named_in_one_module():
    spelled = [
        n for n, p in MODULES.items() if re.search(r"[\"']results\.json[\"']", p.read_text())
    ]
    assert spelled == ["jacosr.runs"]


def test_no_experiment_imports_another():
    shared = {"jacosr.experiments", "jacosr.experiments.command"}
    found = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if name.startswith("jacosr.experiments.")
        for target in targets
        if target.startswith("jacosr.experiments.") and target not in shared
    ]
    assert found == []


def test_scoring_anyones_model_does_not_import_the_training_loop():
    assert "jacosr.train" not in GRAPH["jacosr.detectors"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_600_lines(name):
    assert len(MODULES[name].read_text().splitlines()) <= 600


MEASURED = re.compile(
    r"load average|samples/s|images/s|steps/s|GFLOP|% of (the )?(matmul )?peak|page faults|"
    r"Runtime on|\bs wall\b|of CPU\)",
    re.IGNORECASE,
)


def test_measured_figures_live_in_the_readme_not_in_the_sources():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
        for path in MODULES.values()
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if MEASURED.search(line)
    ]
    assert found == []


def _imported_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and not node.level:
        return [node.module or ""]
    return []


def test_tests_import_their_shared_helpers_as_helpers():
    """``tests`` is not a package: pytest puts the folder itself on the path, so a test module
    imports ``helpers``. ``tests.helpers`` only resolves where the repository root happens to
    be on the path too (some editable installs), and fails to collect in CI."""
    found = [
        f"{path.name}: {ast.unparse(node)}"
        for path in sorted(Path(__file__).parent.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if any(n == "tests" or n.startswith("tests.") for n in _imported_names(node))
    ]
    assert found == []
