"""raymem's import graph: layers point one way (store <- estimator <- paper <- actors <- training <- driver <- api
<- cli), no circles.

Every ``import`` of a raymem module is counted, at module level or inside a function, since a lazy
import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raymem"

#: Module prefix -> layer. A module may import its own layer or lower ones only.
LAYERS = {
    "raymem.errors": 0,
    "raymem.store": 1,               # trial log, run files, storage, atomic writes and safe loading
    "raymem.estimator": 2,           # counts, formulas, bounds, FDR, stopping, reports: numpy and pyarrow only
    "raymem.paper": 3,               # the supplement's selection rule, the authors' formats, figures
    "raymem.cluster.connection": 3,  # reaching Ray
    "raymem.data": 3,                # data sets by name, canaries, cached labels
    "raymem.config": 4,              # experiment configs and presets
    "raymem.actors": 4,              # the accumulator and its shards
    "raymem.cluster": 5,             # starting and stopping clusters
    "raymem.training": 5,            # the Keras side: models, recipes, packing, checkpoints
    "raymem.driver": 6,              # scheduling trials on Ray, leases, detached jobs
    "raymem.handle": 7,              # the Run handle
    "raymem.explorer": 8,            # raymem serve: the web explorer over Run handles
    "raymem.api": 8,
    "raymem.cli": 9,
    "raymem": 10,  # the package's __init__ re-exports the API
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return LAYERS[max(matches, key=len)]


def imports_of(path: Path) -> set[str]:
    """The raymem modules that ``path`` imports (``from raymem.x import y`` counts raymem.x.y when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("raymem")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raymem") and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                    (PACKAGE.parent / Path(*candidate.split("."))).is_dir()
                found.add(candidate if is_module else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer_and_imports_none_above_it():
    upward = []
    for module, imported in graph().items():
        for target in imported:
            if layer(target) > layer(module):
                upward.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
    assert not upward, "\n".join(upward)


def test_actors_do_not_import_the_runner_and_the_estimator_and_store_have_no_ray_or_tensorflow():
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        text = path.read_text()
        if module.startswith("raymem.actors"):
            assert not any(f"raymem.{p}" in text for p in ("training", "driver", "config")), module
        if module.startswith(("raymem.estimator", "raymem.store")):
            tree = ast.parse(text)
            names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert not names & {"ray", "tensorflow", "keras"}, module


def test_no_import_circles():
    modules = graph()
    edges = {m: {t for t in targets if t in modules and t != m} for m, targets in modules.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:  # back edge: nxt is on the current path
                path = stack + [node]
                cycle.extend(path[path.index(nxt):] + [nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for start in sorted(edges):
        if state.get(start) is None and visit(start, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_the_walker_sees_lazy_imports_and_would_catch_an_upward_one(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from raymem.api import estimates\n    import raymem.cli\n")
    assert imports_of(source) == {"raymem.api", "raymem.cli"}
    assert layer("raymem.api") > layer("raymem.estimator.counts")
