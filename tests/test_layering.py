"""The package's layers: no module imports a layer above its own; importing it stays light.

Layers, lowest first. A unit is a subpackage or top-level module of ``compressjax``. A unit may
import units of lower layers; units of the same layer only in the bottom and the top layer
(cli, pipeline), or along an edge listed in ``METHOD_EDGES``. Imports inside functions count too.
"""

import ast
import os
import pathlib
import subprocess
import sys
import time

LAYERS = (
    ("qarray", "kernels"),
    ("core",),
    ("quant", "prune", "distill", "mixed", "cost"),
    ("export",),
    ("train", "artifacts"),
    ("data", "models", "config"),  # applications' building blocks, independent of each other
    ("runs",),  # config-driven training: builds the data and model a Config names
    ("cli", "pipeline", "_story_report", "__main__"),
)
SAME_LAYER_FREE = (0, len(LAYERS) - 1)  # the bottom and the top import each other
METHOD_EDGES = {  # (importer, imported) between methods
    ("mixed", "quant"),  # mixed precision interpolates and switches the quantizers
    ("mixed", "cost"),  # budgets are BitOPs or bytes of the cost model
    ("distill", "cost"),  # CAT measures the pruned generator's MACs
}
# Imported only on demand (extras), never by `import compressjax`.
HEAVY = ("tensorflow_datasets", "orbax", "matplotlib", "sklearn", "tqdm")
# Subpackages `import compressjax` leaves to first use (kernels too, unless core loads them).
LAZY = ("prune", "distill", "cost", "mixed", "train", "data", "models", "runs")

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "compressjax"
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
  """Absolute names of every compressjax module (or ``from`` target) the tree imports."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = module.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([base] if base else []))
      names.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module` too
  return {n for n in names if n.split(".")[0] == "compressjax"}


def _unit(name: str) -> str | None:
  parts = name.split(".")
  return parts[1] if len(parts) > 1 and parts[1] in LAYER_OF else None


def _upward_imports() -> set[tuple[str, str]]:
  found = set()
  for path in sorted(PACKAGE.rglob("*.py")):
    module = _module_name(path)
    own = _unit(module)
    if own is None:  # compressjax/__init__.py: the lazy facade over every layer
      continue
    tree = ast.parse(path.read_text(), str(path))
    for target in {_unit(n) for n in _imported(tree, module, path.name == "__init__.py")}:
      if target is None or target == own:
        continue
      lo, hi = LAYER_OF[target], LAYER_OF[own]
      if lo > hi or (lo == hi and hi not in SAME_LAYER_FREE and (own, target) not in METHOD_EDGES):
        found.add((module, target))
  return found


def test_every_unit_has_a_layer():
  units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
  assert units <= set(LAYER_OF), f"add {sorted(units - set(LAYER_OF))} to LAYERS"


def test_no_upward_imports():
  found = sorted(_upward_imports())
  assert not found, f"upward imports (module, imported unit; see LAYERS): {found}"


def test_relative_and_function_level_imports_count():
  tree = ast.parse("def f():\n  from ..train import loop\n  import compressjax.data\n")
  names = _imported(tree, "compressjax.mixed.fracbits", is_package=False)
  assert names == {"compressjax.train.loop", "compressjax.data"}


def _run(code: str) -> str:
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=PACKAGE.parent, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout


def test_import_compressjax_stays_light():
  loaded = _run("import sys, compressjax; print(' '.join(sys.modules))").split()
  heavy = sorted({m.split(".")[0] for m in loaded} & set(HEAVY))
  assert not heavy, f"`import compressjax` imports {heavy}; import them where they are used"


def test_train_names_load_their_modules_on_demand():
  # data and config need train's light modules only: the [data] extra works without [train]
  loaded = _run("import sys, compressjax.config, compressjax.data, compressjax.train.steps\n"
                "import compressjax.train as t\n"
                "assert sorted(t.__all__) == sorted(n for n in dir(t) if n in t.__all__)\n"
                "print(' '.join(sys.modules))").split()
  assert "orbax" not in {m.split(".")[0] for m in loaded}
  assert "compressjax.train.checkpoint" not in loaded
  assert _run("from compressjax.train import fit, Checkpoints; print(fit.__module__)").strip() \
      == "compressjax.train.loop"


def test_subpackages_are_attributes_imported_on_demand():
  _run("import sys, compressjax as cj\n"
       f"lazy = {LAZY!r}\n"
       "early = [n for n in lazy if 'compressjax.' + n in sys.modules]\n"
       "assert not early, f'import compressjax already imported {early}'\n"
       "for n in (*lazy, 'kernels'):\n"
       "  assert getattr(cj, n).__name__ == 'compressjax.' + n and n in dir(cj), n\n"
       "assert all(hasattr(cj, n) for n in cj.__all__)\n")


def test_import_time_is_reported():
  t0 = time.perf_counter()
  seconds = float(_run("import time; t = time.perf_counter(); import compressjax; "
                       "print(time.perf_counter() - t)"))
  print(f"import compressjax: {seconds:.2f} s (subprocess total {time.perf_counter() - t0:.2f} s)")
  assert seconds < 30
