"""expt_hessian_sketch.py: the three stages in-process (resume, damage, refusal, missing blocks, bad keys), and the
measurements split over SLURM array tasks equal to the one-process sketch.

The SLURM test submits the generator's measurement sweep through ``sweep.py slurm`` and ``job.slurm`` to the
single-node cluster of ``tests/conftest.py`` (``slurm_env``), then merges and compares with
``curvature.top_eigs_sketched(recovery="oversampled")`` at the same seeds: eigenvalues to 1e-6 relative and
subspaces to 1e-5 rad. Both sides run the same float32 products and LAPACK calls with one thread each, so the
difference is round-off of the order of 1e-7 at most (here it comes out 0).
"""

import json
import shlex
import shutil
from pathlib import Path

import pytest
import slurm_cluster
import torch
from sacred.arg_parser import get_config_updates
from sacred.observers import FileStorageObserver

import curvature as cv
import sweep
from expt_hessian_sketch import ex, hessian_at, setup
from gen_commands_hessian_sketch import Grid, make_commands
from sketch_store import SketchStore, sketch_seed
from tests.test_sweep_slurm import show_tasks, submit, sweep_status, wait_for

REPO = Path(__file__).resolve().parents[1]
# 64 → 6 → 10 MLP on 300 digits (460 parameters), 50 SGD steps; s = 40 outer, s_i = 80 core measurements in
# blocks of 8: 5 + 10 = 15 blocks per step.
TINY = {"hidden_widths": [6], "num_data": 300, "log_at_steps": [0, 50], "training_config": {"num_steps": 50},
        "sketch_config": {"num_measurements": 40, "num_inner": 80, "block_size": 8}, "ks": [3, 10]}


def run_stage(runs: Path, store: Path, **updates):
    observer = FileStorageObserver(str(runs))
    ex.observers.append(observer)
    try:
        return ex.run(config_updates={**TINY, "store_dir": str(store), **updates})
    finally:
        ex.observers.remove(observer)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hessian_sketch")
    run = run_stage(root / "runs", root / "store", stage="train")
    assert run.status == "COMPLETED"
    return root


def fresh_store(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained store (parameters only), for a test that writes blocks."""
    shutil.copytree(trained / "store", tmp_path / "store")
    return tmp_path / "store"


def test_train_saves_the_parameters_at_each_step_as_artifacts(trained):
    run_dir = trained / "runs" / "1"
    assert {"params_step0.pt", "params_step50.pt"} <= {p.name for p in run_dir.iterdir()}
    store = SketchStore(trained / "store")
    spec = {"data_name": "digits", "num_data": 300, "data_seed": 0, "hidden_widths": [6], "model_dim": 460}
    w0, h0 = store.load_params(0, spec)
    w50, h50 = store.load_params(50, spec)
    assert w0.shape == (460,) and h0 != h50 and not torch.equal(w0, w50)
    result = json.loads((run_dir / "run.json").read_text())["result"]
    assert result["model_hashes"] == {"0": h0, "50": h50}


def test_measure_resumes_redoes_a_damaged_block_and_refuses_another_steps(trained, tmp_path):
    store_dir = fresh_store(trained, tmp_path)
    store = SketchStore(store_dir)
    first = run_stage(tmp_path / "runs", store_dir, stage="measure", step=0, blocks=[0, 7]).result
    assert (first["computed"], first["skipped"], first["redone"]) == ([0, 7], [], [])
    mtime = store.block_path(0, 0).stat().st_mtime_ns
    raw = store.block_path(0, 7).read_bytes()
    store.block_path(0, 7).write_bytes(raw[: len(raw) // 2])  # cut off
    again = run_stage(tmp_path / "runs", store_dir, stage="measure", step=0, blocks=[0, 7, 8]).result
    assert (again["computed"], again["skipped"], again["redone"]) == ([7, 8], [0], [7])
    assert store.block_path(0, 0).stat().st_mtime_ns == mtime  # a complete block is never rewritten
    # block 0 of step 0 put where block 0 of step 50 belongs: refused, and nothing of step 50 computed
    store.block_path(50, 0).parent.mkdir(parents=True)
    shutil.copy(store.block_path(0, 0), store.block_path(50, 0))
    with pytest.raises(ValueError, match=r"block_00000.h5 is a block of another sketch: .*model_hash .*step 0 "
                                         r"\(expected 50\)"):
        run_stage(tmp_path / "runs", store_dir, stage="measure", step=50, blocks=[1, 0])
    assert not store.block_path(50, 1).exists()


def test_solve_names_the_missing_blocks_then_logs_the_masks_metrics(trained, tmp_path):
    store_dir = fresh_store(trained, tmp_path)
    run_stage(tmp_path / "runs", store_dir, stage="measure", step=0)
    run_stage(tmp_path / "runs", store_dir, stage="measure", step=50, blocks=list(range(12)))
    with pytest.raises(ValueError, match=r"blocks missing in .*: step 50: blocks \[12, 13, 14\]\. Run their"):
        run_stage(tmp_path / "runs", store_dir, stage="solve")
    run_stage(tmp_path / "runs", store_dir, stage="measure", step=50, blocks=[12, 13, 14])
    run = run_stage(tmp_path / "runs", store_dir, stage="solve")
    metrics = json.loads((tmp_path / "runs" / str(run._id) / "metrics.json").read_text())
    for k in (3, 10):
        for name in ("overlap/exact", "overlap/sketch", "overlap/random", "geodesic/exact", "geodesic/sketch",
                     "sketch/eig_rel_error", "sketch/subspace_geodesic"):
            assert metrics[f"{name}/k{k}"]["steps"] == [0, 50], name
    assert metrics["overlap/random/k10"]["values"][0] == pytest.approx(10 / 460)
    per_step = run.info["per_step"]
    # 40 of 460 directions: the top eigenvalue comes out within 10% (the sketch's own error, not the pipeline's)
    for rec in per_step:
        assert rec["eigenvalues"][0] == pytest.approx(metrics["top_eigenvalue"]["values"][per_step.index(rec)],
                                                      rel=0.1)
    saved = torch.load(SketchStore(store_dir).eigenpairs_path(50), weights_only=True)
    assert saved["eigenvectors"].shape == (460, 10) and saved["eigenvalues"].tolist() == per_step[1]["eigenvalues"]
    assert saved["eigenvectors"].untyped_storage().nbytes() == 460 * 10 * 4  # the top k only, not all s


def test_bad_config_fails_clearly(trained, tmp_path):
    with pytest.raises(TypeError, match="unknown config key sketch_config.num_inners"):
        run_stage(tmp_path, trained / "store", stage="solve", sketch_config={**TINY["sketch_config"], "num_inners": 9})
    with pytest.raises(ValueError, match=r"stage=measure needs step, one of log_at_steps=\[0, 50\], got step=None"):
        run_stage(tmp_path, trained / "store", stage="measure")
    with pytest.raises(ValueError, match=r"blocks must be 'all' or a list of distinct ints in \[0, 15\)"):
        run_stage(tmp_path, trained / "store", stage="measure", step=0, blocks=[15])


def config_of(line: str) -> dict:
    argv = shlex.split(line)
    return get_config_updates(argv[argv.index("with") + 1:])[0]


@pytest.mark.slow
def test_measurements_over_slurm_array_tasks_equal_the_one_process_sketch(slurm_env, tmp_path):
    grid = dict(script=str(REPO / "expt_hessian_sketch.py"), output_dir=str(tmp_path), name="hs", num_tasks=5,
                hidden_widths="6", num_data=300, num_steps=50, log_at_steps="0,50", num_measurements=40,
                num_inner=80, block_size=8, ks="3,10")
    (train_line,) = make_commands(Grid(stage="train", **grid))
    measure_lines = make_commands(Grid(stage="measure", **grid))
    (solve_line,) = make_commands(Grid(stage="solve", **grid))
    assert len(measure_lines) == 10  # 5 array tasks per step, 3 blocks each
    sweep.write_commands(measure_lines, tmp_path / "commands.txt")
    runs = tmp_path / "hs"

    config = config_of(train_line)
    run_stage(runs, Path(config.pop("store_dir")), **config)
    job = submit(tmp_path, slurm_env, "--mem", "1G", "--time", "00:10:00", "--partition", slurm_cluster.PARTITION)
    wait_for(job, tmp_path, slurm_env)
    assert set(show_tasks(job, tmp_path, slurm_env).values()) == {"COMPLETED"}
    computed = {0: [], 50: []}
    for run_json in runs.glob("[0-9]*/run.json"):
        record = json.loads(run_json.read_text())
        if record["result"]["stage"] == "measure":
            computed[record["result"]["step"]].append(record["result"]["computed"])
    for step, by_task in computed.items():
        assert len(by_task) == 5 and sorted(sum(by_task, [])) == list(range(15)), (step, by_task)

    config = config_of(solve_line)
    store = SketchStore(config.pop("store_dir"))
    run_stage(runs, store.root, **config)
    # the one-process reference: the same model, data and parameters, all measurements in this process
    net, xy, spec = setup(torch.device("cpu"), data_name="digits", num_data=300, hidden_widths=[6], seed=0)
    for step in (0, 50):
        w, _ = store.load_params(step, spec)
        H = hessian_at(net, xy, w)
        ref_vals, ref_vecs = cv.top_eigs_sketched(H, 10, num_measurements=40, seed=sketch_seed(0, step), block=8,
                                                  recovery="oversampled", num_inner=80)
        merged = torch.load(store.eigenpairs_path(step), weights_only=True)
        eig_err = float(((merged["eigenvalues"].double() - ref_vals.double()).abs() / ref_vals.double().abs()).max())
        angle = float(cv.principal_angles(merged["eigenvectors"], ref_vecs).max())
        print(f"step {step}: merged vs one process: max relative eigenvalue error {eig_err:.3g}, "
              f"largest principal angle {angle:.3g} rad")
        assert eig_err <= 1e-6 and angle <= 1e-5
    assert set(sweep_status(tmp_path, slurm_env).values()) == {"completed"}
