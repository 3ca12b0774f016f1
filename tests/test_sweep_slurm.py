"""A sweep of expt_dln.py on a real single-node SLURM cluster, through sweep.py and job.slurm.

The `slurm_env` fixture (tests/conftest.py) starts the cluster with tests/slurm_cluster.py;
`make slurm` installs slurm-wlm and munge first. Without them the test skips naming that
command, or fails under CI=true; a cluster that fails to start is an error. Run with `-s` to
see the squeue and job-state lines of the submitted sweep.
"""

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster

import sweep

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 300  # for one array job; the four tiny runs take about 20 s on two cores

# Five tiny runs. The third has a step size that expt_dln.py rejects inside the run, so Sacred
# records it as FAILED; the fifth has a config key that Sacred rejects before a run starts.
TINY = (
    "num_training_data=200 input_dim=3 layer_widths='[3, 3]' sgld_config.num_steps=200 "
    "sgld_config.num_burnin_steps=100 sgld_config.num_chains=2 sgld_config.batch_size=50"
)
EXPT = f"python {REPO / 'expt_dln.py'} -F runs with {TINY}"
LINES = [
    f"{EXPT} sgld_config.epsilon=1e-4 seed=0",
    f"{EXPT} sgld_config.epsilon=1e-4 seed=1",
    f"{EXPT} sgld_config.epsilon=-1e-4 seed=2",
    f"{EXPT} sgld_config.epsilon=1e-4 seed=3",
    f"{EXPT} sgld_config.epsilon=1e-4 no_such_key=1 seed=4",
]
FAILED_RUN, NO_RUN = 3, 5


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def submit(folder: Path, env: dict[str, str], *args: str) -> str:
    result = run([sys.executable, str(REPO / "sweep.py"), "slurm", "commands.txt", *args], folder, env)
    print(result.stdout, result.stderr, sep="")
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"submitted job (\d+)", result.stdout).group(1)


def wait_for(job: str, folder: Path, env: dict[str, str]) -> None:
    deadline, shown = time.monotonic() + WAIT_S, False
    while time.monotonic() < deadline:
        queue = run(["squeue", "-r", "-j", job], folder, env)
        if queue.returncode != 0 or len(queue.stdout.splitlines()) < 2:  # gone from the queue
            return
        if not shown and " R " in queue.stdout:
            print(f"$ squeue -r -j {job}\n{queue.stdout}")
            shown = True
        time.sleep(1)
    run(["scancel", job], folder, env)
    logs = "".join(f"\n--- {p}\n{p.read_text()[-1500:]}" for p in sorted(folder.glob("outputs/slurm_logs/*.err")))
    pytest.fail(f"job {job} still queued after {WAIT_S} s{logs}")


def show_tasks(job: str, folder: Path, env: dict[str, str]) -> dict[int, str]:
    """Print what sacct says (accounting is off here) and return {array index: state} from scontrol."""
    sacct = run(["sacct", "-X", "-j", job, "--format=JobID,JobName,State,ExitCode"], folder, env)
    print("$ sacct -X -j", job, "\n" + (sacct.stdout + sacct.stderr).strip())
    shown = run(["scontrol", "-o", "show", "job", job], folder, env)
    assert shown.returncode == 0, shown.stderr
    tasks = {}
    for row in shown.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in row.split() if "=" in f)
        tasks[int(fields["ArrayTaskId"])] = fields["JobState"]
        print(f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}  {fields['JobState']}  ExitCode={fields['ExitCode']}")
    return tasks


def test_sweep_runs_on_slurm_and_retries_only_the_failed_lines(slurm_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "commands.txt").write_text("".join(line + "\n" for line in LINES))
    keys = {c.lineno: c.key for c in sweep.read_commands(tmp_path / "commands.txt")}
    expected = {i: "FAILED" if i in (FAILED_RUN, NO_RUN) else "COMPLETED" for i in keys}

    job = submit(tmp_path, slurm_env, "--max-concurrent", "2", "--mem", "1G", "--time", "00:10:00",
                 "--partition", slurm_cluster.PARTITION)
    wait_for(job, tmp_path, slurm_env)
    assert show_tasks(job, tmp_path, slurm_env) == expected

    runs = {}
    for run_dir in (tmp_path / "runs").glob("[0-9]*"):
        record = json.loads((run_dir / "run.json").read_text())
        meta = record["meta"]
        runs[sweep.run_key(record["experiment"]["mainfile"], meta["named_configs"], meta["config_updates"])] = (
            record, run_dir)
    assert runs.keys() == {keys[i] for i in keys if i != NO_RUN}
    assert runs[keys[FAILED_RUN]][0]["status"] == "FAILED"
    assert "epsilon" in runs[keys[FAILED_RUN]][0]["fail_trace"][-1]
    for lineno in (1, 2, 4):
        record, run_dir = runs[keys[lineno]]
        assert record["status"] == "COMPLETED"
        info = json.loads((run_dir / "info.json").read_text())
        # 200 steps do not converge, but λ̂ must lie in the range every LLC lies in: (0, d/2].
        assert math.isfinite(info["lambdahat"]) and 0 < info["lambdahat"] <= info["model_dim"] / 2, info
        print(f"line {lineno}: {keys[lineno]} COMPLETED, lambdahat = {info['lambdahat']:.3f} "
              f"± {info['lambdahat_std']:.3f} (true lambda {info['true_lambda']}, d = {info['model_dim']})")

    status = sweep_status(tmp_path, slurm_env)
    assert status == {i: "failed" if i in (FAILED_RUN, NO_RUN) else "completed" for i in keys}
    # Without job.slurm's exit-code record, the array task's state still tells that line 5 failed.
    (tmp_path / "outputs/sweep_logs" / f"{keys[NO_RUN]}.log").unlink()
    assert sweep_status(tmp_path, slurm_env)[NO_RUN] == "failed"

    retry = submit(tmp_path, slurm_env, "--retry-failed", "--mem", "1G")
    submissions = (tmp_path / "outputs/slurm_logs/submissions.jsonl").read_text().splitlines()
    assert [json.loads(line)["lines"] for line in submissions] == [[1, 2, 3, 4, 5], [FAILED_RUN, NO_RUN]]
    wait_for(retry, tmp_path, slurm_env)
    assert show_tasks(retry, tmp_path, slurm_env) == {1: "FAILED", 2: "FAILED"}  # still broken, as written
    assert len(list((tmp_path / "runs").glob("[0-9]*"))) == len(runs) + 1


def sweep_status(folder: Path, env: dict[str, str]) -> dict[int, str]:
    result = run([sys.executable, str(REPO / "sweep.py"), "status", "commands.txt"], folder, env)
    print("$ python sweep.py status commands.txt\n" + result.stdout)
    assert result.returncode == 0, result.stderr
    rows = [r.split() for r in result.stdout.splitlines() if r.strip()[:1].isdigit()]
    return {int(r[0]): " ".join(r[1:3]) if r[1] == "not" else r[1] for r in rows}
