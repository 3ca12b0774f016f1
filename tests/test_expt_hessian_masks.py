"""expt_hessian_masks.py on a tiny MLP: the sketch recovers the exact top-k eigenspace; its notebook runs."""

import json

import pytest
from sacred.observers import FileStorageObserver

from expt_hessian_masks import ex
from tests.notebook_runner import execute_notebook

# 64 → 6 → 10 MLP (460 parameters), 200 SGD steps; sketch of 300 products for k ≤ 10.
TINY = {"hidden_width": 6, "log_at_steps": [0, 100, 200], "ks": [3, 10], "num_measurements": 300,
        "training_config": {"num_steps": 200}}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hessian_masks")
    observer = FileStorageObserver(str(path))
    ex.observers.append(observer)
    try:
        run = ex.run(config_updates=TINY)
    finally:
        ex.observers.remove(observer)
    assert run.status == "COMPLETED"
    return path


@pytest.mark.slow
def test_records_overlaps_and_sketch_errors(runs_dir):
    info = json.loads((runs_dir / "1" / "info.json").read_text())
    assert info["model_dim"] == 460 and [r["step"] for r in info["per_step"]] == [0, 100, 200]
    for rec in info["per_step"]:
        for k, v in rec["k"].items():
            assert 0 <= v["exact"]["overlap"] <= 1 and 0 <= v["sketch"]["overlap"] <= 1
            # 300 of 460 directions measured: the top 10 eigenpairs come out nearly exact
            assert v["eig_rel_error"] < 1e-2, (rec["step"], k, v["eig_rel_error"])
            assert v["sketch"]["overlap"] == pytest.approx(v["exact"]["overlap"], abs=0.05)
    metrics = json.loads((runs_dir / "1" / "metrics.json").read_text())
    assert metrics["overlap/exact/k10"]["steps"] == [0, 100, 200]
    assert metrics["overlap/random/k10"]["values"][0] == pytest.approx(10 / 460)


def test_bad_config_fails_clearly():
    with pytest.raises(ValueError, match=r"num_measurements must be an int in \[max\(ks\)=10"):
        ex.run(config_updates={**TINY, "num_measurements": 5})


@pytest.mark.slow
def test_notebook_runs(runs_dir, tmp_path):
    execute_notebook("hessian_masks.ipynb", {"RUNS_DIR": str(runs_dir)}, tmp_path)
