"""Every tutorial in notebooks/ runs top to bottom as a Jupyter notebook, with quick settings.

Each jupytext percent-format ``.py`` file becomes an in-memory notebook executed by nbclient in
a kernel of *this* interpreter (a kernel spec written for ``sys.executable``, so the venv's
packages are used whatever ``python`` is on PATH). The notebooks assert what they show, so a
broken API fails here. ``COMPRESSJAX_NOTEBOOK_QUICK=1`` selects their small settings.
"""

import pathlib
import re

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")
from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
from jupyter_client.manager import KernelManager  # pylint: disable=g-import-not-at-top

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
KERNEL = "compressjax-tests"
CELL_TIMEOUT_S = 300  # a guard against hangs; the quick notebooks take seconds per cell


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory) -> list[str]:
  """A directory holding one kernel spec that launches ``sys.executable -m ipykernel``."""
  root = tmp_path_factory.mktemp("kernels")
  kernelspec.write_kernel_spec(path=root / KERNEL, overrides={"display_name": KERNEL})
  return [str(root)]


def test_there_are_the_four_tutorials_and_the_readme_lists_them():
  names = [p.name for p in NOTEBOOKS]
  assert names[:4] == ["01_quickstart.py", "02_mixed_precision.py",
                       "03_pruning_and_distillation.py", "04_export_and_kernels.py"]
  readme = (NOTEBOOK_DIR / "README.md").read_text()
  for name in names:
    assert name in readme, f"notebooks/README.md does not list {name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, kernel_dirs, monkeypatch):
  monkeypatch.setenv("COMPRESSJAX_NOTEBOOK_QUICK", "1")  # inherited by the kernel process
  nb = jupytext.read(path)
  kinds = [c.cell_type for c in nb.cells]
  assert kinds.count("markdown") >= 3 and kinds.count("code") >= 3, kinds
  assert any(re.search(r"\bassert\b", c.source) for c in nb.cells if c.cell_type == "code")

  km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
  client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S,
                                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
  client.execute()  # raises CellExecutionError, naming the cell, if any cell fails

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code)
  errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
  printed = "".join(o.get("text", "") for c in code for o in c.get("outputs", []))
  assert printed.strip(), "the notebook printed nothing"
