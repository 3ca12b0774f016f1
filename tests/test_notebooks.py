"""Notebooks are committed without outputs, and each runs top to bottom on real runs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from tests.notebook_runner import execute_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks under {ROOT / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs or execution counts; clear them before "
        f"committing: jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}"
    )


def test_every_notebook_is_executed_by_a_test():
    # Each notebook is run top to bottom on real runs by a test (tests.notebook_runner.execute_notebook).
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    missing = [p.name for p in NOTEBOOKS if f'"{p.name}"' not in sources]
    assert not missing, f"no test executes {missing}; call execute_notebook(name, env, tmp_path) in one"


def test_plots_final_runs(sacred_runs, tmp_path):
    execute_notebook("plots_final.ipynb", {"RUNS_DIR": str(sacred_runs.dir),
                                           "CURVE_RUNS_DIR": str(sacred_runs.curve_dir)}, tmp_path)
