"""Shared fixtures: a few real Sacred runs, stored by both a file and a Mongo observer; a SLURM cluster."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mongomock
import mongomock.gridfs
import pymongo
import pytest
from sacred import Experiment
from sacred.observers import FileStorageObserver, MongoObserver
from slurm_cluster import missing, start, stop

import expt_dln

# Seconds per run: a tiny DLN, few SGLD steps. λ̂ is rough at this size; these runs test plumbing.
TINY = {
    "input_dim": 3,
    "num_training_data": 200,
    "sgld_config.epsilon": 1e-4,
    "sgld_config.num_steps": 60,
    "sgld_config.num_burnin_steps": 30,
    "sgld_config.num_chains": 2,
    "sgld_config.batch_size": 20,
}
COMPLETED = [
    {"layer_widths": [4, 4]},
    {"layer_widths": [5, 6, 3]},
    {"layer_widths": [6, 6, 6, 4]},
    {"layer_widths": [4, 4], "sgld_config.epsilon": 3e-5},
]
TRAINED = {"layer_widths": [4, 3], "do_training": True, "training_config.optim": "adam",
           "training_config.num_steps": 300, "training_config.batch_size": 20}
FAILING = {"sgld_config.epsilon": -1e-6}
CAPTURE = {"--capture": "sys"}  # Sacred's default, "fd", fights with pytest's capture

# Until an experiment tracks λ̂ over training (the reference's expt_llc_curve.py), this stand-in
# logs the metrics that plots.training_curve reads, with made-up values.
llc_curve = Experiment("llc_curve_standin", save_git_info=False)


@llc_curve.main
def _llc_curve(_run):
    for step in range(0, 200, 5):
        _run.log_scalar("train/loss", math.exp(-step / 50) + 0.01, step)
        if step % 20 == 0:
            _run.log_scalar("llc/mean", 10 * (1 - math.exp(-step / 60)), step)


@dataclass(frozen=True)
class SacredRuns:
    """The runs the fixture made, and where they are."""

    dir: Path  # FileStorageObserver folder of expt_dln runs, then damaged copies
    mongo: Any  # the mongomock database that MongoObserver wrote the same expt_dln runs to
    completed: list[int]  # run ids of expt_dln runs that completed; the last one trained
    trained: int
    failed: int
    damaged: dict[str, int]  # what was done to a copy of the first completed run → its run id
    curve_dir: Path  # one run of the λ̂-over-training stand-in
    curve_run: int


def _damage(runs_dir: Path, source_id: int) -> dict[str, int]:
    # Copy a completed run four times and break each copy the way real runs break.
    damaged = {"running": 101, "interrupted": 102, "info_truncated": 103, "run_json_missing": 104}
    for what, run_id in damaged.items():
        d = runs_dir / str(run_id)
        shutil.copytree(runs_dir / str(source_id), d)
        run = json.loads((d / "run.json").read_text())
        if what == "running":  # killed mid-run: Sacred never wrote the stop
            run["status"] = "RUNNING"
            del run["stop_time"]
            (d / "run.json").write_text(json.dumps(run))
        elif what == "interrupted":
            run["status"] = "INTERRUPTED"
            (d / "run.json").write_text(json.dumps(run))
        elif what == "info_truncated":  # read while Sacred was rewriting it
            text = (d / "info.json").read_text()
            (d / "info.json").write_text(text[: len(text) // 2])
        else:
            (d / "run.json").unlink()
    return damaged


@pytest.fixture(scope="session")
def sacred_runs(tmp_path_factory: pytest.TempPathFactory) -> SacredRuns:
    """Real runs of expt_dln.py, observed into a folder and into mongomock.

    Returns:
        Where the runs are and which ids they got.
    """
    runs_dir, curve_dir = tmp_path_factory.mktemp("dln"), tmp_path_factory.mktemp("llc_curve")
    mongomock.gridfs.enable_gridfs_integration()
    with mongomock.patch(servers=(("localhost", 27017),)):
        client = pymongo.MongoClient("mongodb://localhost:27017")
        observers = [
            FileStorageObserver(runs_dir),
            MongoObserver(url="mongodb://localhost:27017", db_name="sacred"),
        ]
    ex = expt_dln.ex
    ex.observers[:] = observers
    try:
        with warnings.catch_warnings():
            # tiny runs: the estimator rightly warns that the trace has not settled
            warnings.simplefilter("ignore", UserWarning)
            completed = [ex.run(config_updates={**TINY, **c}, options=CAPTURE)._id
                         for c in [*COMPLETED, TRAINED]]
        with pytest.raises(ValueError, match="epsilon must be a number > 0"):
            ex.run(config_updates={**TINY, **FAILING}, options=CAPTURE)
    finally:
        ex.observers.clear()
    llc_curve.observers[:] = [FileStorageObserver(curve_dir)]
    try:
        curve_run = llc_curve.run(options=CAPTURE)._id
    finally:
        llc_curve.observers.clear()
    return SacredRuns(
        dir=runs_dir,
        mongo=client["sacred"],
        completed=completed,
        trained=completed[-1],
        failed=completed[-1] + 1,
        damaged=_damage(runs_dir, completed[0]),
        curve_dir=curve_dir,
        curve_run=curve_run,
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the SLURM cluster `slurm`, so that `-m "not slurm"` leaves it out."""
    for item in items:
        if "slurm_env" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_env() -> Iterator[dict[str, str]]:
    """Environment whose SLURM_CONF points at a freshly started single-node cluster; stopped afterwards.

    The tests install nothing: `make slurm` installs slurm-wlm and munge (CI's `.ci/run` calls it).
    Without them a test skips naming that command, except under CI (`CI=true`), where a missing
    SLURM is a failure, so that the SLURM tests cannot silently stop running.

    Yields:
        os.environ plus SLURM_CONF.
    """
    reason = missing()
    if reason:
        message = f"cannot start a SLURM cluster: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the SLURM tests must run in CI)")
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="slurm-ci-"))
    root.chmod(0o755)  # munged, running as user munge, must reach its socket folder inside
    try:
        conf = start(root)
        yield dict(os.environ, SLURM_CONF=str(conf))
    finally:
        stop(root)
        shutil.rmtree(root, ignore_errors=True)
