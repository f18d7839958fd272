"""The package's shape: no import cycle in morphonet, one training loop, one masked layer, one
set of validators, the seed systems' import names."""

import ast
import importlib
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MORPHONET = ROOT / "python" / "morphonet"


def _module_name(path: Path) -> str:
    rel = path.relative_to(MORPHONET.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every morphonet module ``path`` imports, at any depth (function-level imports too)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from pkg import name` imports pkg.name when that is a module
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if _exists(sub) else target)
    return {m for m in out if m == "morphonet" or m.startswith("morphonet.")}


def _exists(mod: str) -> bool:
    p = MORPHONET.parent.joinpath(*mod.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def test_no_import_cycle_in_morphonet():
    g = nx.DiGraph()
    for path in MORPHONET.rglob("*.py"):
        src = _module_name(path)
        g.add_node(src)
        for dst in _imports(path):
            if dst != src:
                g.add_edge(src, dst)
    assert g.number_of_nodes() > 25
    cycles = list(nx.simple_cycles(g))
    assert cycles == [], cycles
    # no module inside the package imports the package's front (__init__), which imports all
    assert not [m for m in g.predecessors("morphonet")], list(g.predecessors("morphonet"))


def _calls(path: Path, attr: str) -> list[str]:
    """Enclosing function names of every ``<x>.<attr>(...)`` call in ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and \
                    child.func.attr == attr:
                found.append(func)
            visit(child, f)
    visit(tree, "<module>")
    return found


def test_one_training_loop():
    """Optimizer steps and backward passes happen in morphonet.loop only (the kernel warm-up
    of ``morpho grow`` runs one backward outside any training)."""
    where = {}
    for path in MORPHONET.rglob("*.py"):
        for attr in ("backward", "zero_grad"):
            for func in _calls(path, attr):
                where.setdefault(_module_name(path), set()).add(func)
    assert where == {"morphonet.loop": {"step"}, "morphonet.growth.experiment": {"_warm_up"}}


def test_one_masked_layer_and_one_set_of_validators():
    sources = {p: p.read_text() for p in [*MORPHONET.rglob("*.py"),
                                          *(ROOT / "morpho_kernels").rglob("*.py")]}
    # the hand-written int / number check lives in the checks module only
    copies = [str(p.relative_to(ROOT)) for p, s in sources.items()
              if "bool) or not isinstance" in s and p.name != "checks.py"]
    assert copies == []
    # the mask logic (get_mask, prune, effective_weight) is defined once, in LearnedMask
    for name in ("get_mask", "effective_weight", "prune_units", "unit_mask"):
        defs = [str(p.relative_to(ROOT)) for p, s in sources.items()
                if f"    def {name}(" in s]
        assert defs == ["morpho_kernels/nn/masked.py"], (name, defs)
    # set_temperature: the layer's, and models that set it on every layer they hold
    defs = sorted(str(p.relative_to(ROOT)) for p, s in sources.items()
                  if "    def set_temperature(" in s)
    assert defs == ["morpho_kernels/nn/masked.py", "python/morphonet/masks/models.py"]
    from morpho_kernels.nn import LearnedMask, MaskedLinear
    from morphonet.masks import MorphoConv, MorphoLinear

    assert issubclass(MorphoLinear, MaskedLinear) and issubclass(MorphoConv, LearnedMask)


@pytest.mark.parametrize("alias, names", [
    ("morphonet_pro", ["MorphoNetMLP", "MorphoNetCNN", "MorphoNetTransformer", "MorphoConfig",
                       "MorphoTrainer", "create_morphonet"]),
    ("structure_net", ["create_multi_scale_network", "MinimalNetwork", "ExtremaDetector",
                       "GrowthScheduler", "ConnectionRouter", "SnapshotManager"]),
])
def test_seed_import_names(alias, names):
    mod = importlib.import_module(alias)
    for n in names:
        assert getattr(mod, n) is getattr(importlib.import_module("morphonet"), n)


@pytest.mark.parametrize("alias, package, names", [
    ("morph", "morphonet.morph", ["once", "widen", "resize_layers", "NetworkRegularizer"]),
    ("autoplastic", "morphonet.autoplastic", ["TrainConfig", "AutoplasticNet", "ANNBlock",
                                              "SpatialSelfAttentionLite"]),
])
def test_seed_import_names_of_the_subpackages(alias, package, names):
    mod, pkg = importlib.import_module(alias), importlib.import_module(package)
    for n in names:
        assert getattr(mod, n) is getattr(pkg, n)


def test_no_test_folder_shadows_a_package():
    """pytest puts test folders on sys.path: a folder named like a top-level package we ship
    (``morph``, ``autoplastic``) would be imported in its place as a namespace package."""
    import tomllib

    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    top = {p.split(".")[0] for p in shipped["packages"]}
    clash = [str(d.relative_to(ROOT)) for d in (ROOT / "tests").rglob("*")
             if d.is_dir() and d.name in top]
    assert not clash, clash


def test_one_subpackage_per_system_and_the_skeleton_at_the_top():
    top = {p.stem for p in MORPHONET.glob("*.py")}
    assert {"config", "checks", "loop", "files", "data", "viz", "cli"} <= top
    assert (MORPHONET / "masks" / "__init__.py").exists()
    assert (MORPHONET / "growth" / "__init__.py").exists()
