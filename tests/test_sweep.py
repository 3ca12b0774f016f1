"""Tests for sweep.py: run keys, status from file and Mongo observers, and the local runner.

The runner is driven through its command line, as a user would: Ctrl-C on expt_dln.py itself, the
rest on a stand-in Sacred experiment that sleeps and fails on demand in every way a line can fail.
tests/test_sweep_slurm.py runs expt_dln.py on SLURM.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import mongomock
import mongomock.gridfs
import pytest
from sacred.observers import MongoObserver

import sweep

REPO = Path(__file__).resolve().parents[1]
CAPTURE = {"--capture": "sys"}  # Sacred's default, "fd", fights with pytest's capture

STAND_IN = '''
"""Stand-in experiment: returns x, sleeps `sleep` seconds, fails at runtime when x < 0."""
import time
from sacred import Experiment

ex = Experiment("stand_in")


@ex.config
def config():
    x = 1.0  # the result
    sleep = 0.0  # seconds
    sub = {"a": 1}


@ex.named_config
def big():
    x = 10.0


@ex.main
def run(x, sleep, sub, _run):
    if x < 0:
        raise ValueError(f"x must be >= 0, got {x}")
    time.sleep(sleep)
    _run.info["lambdahat"] = x
    return x


if __name__ == "__main__":
    ex.run_commandline()
'''


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding stand_in.py; sweep.py's relative outputs/ land here."""
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_commands(folder: Path, lines: list[str], name: str = "commands.txt") -> Path:
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def sweep_cli(folder: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "sweep.py"), *args],
        cwd=folder, capture_output=True, text=True, timeout=timeout,
    )


def stored_runs(runs: Path) -> dict[str, list[dict]]:
    """Run records in a FileStorageObserver folder, by run key, oldest first."""
    by_key: dict[str, list[dict]] = {}
    for path in sorted(runs.glob("*/run.json"), key=lambda p: int(p.parent.name)):
        record = json.loads(path.read_text())
        by_key.setdefault(record_key(record), []).append(record)
    return by_key


def record_key(record: dict) -> str:
    """The run key of a stored run.json record, from what Sacred recorded of its command line."""
    meta = record["meta"]
    return sweep.run_key(record["experiment"]["mainfile"], meta["named_configs"], meta["config_updates"])


def statuses(commands: Path) -> dict[int, str]:
    return {s.command.lineno: s.status for s in sweep.line_statuses(sweep.read_commands(commands), commands)}


def test_key_of_stored_run_matches_its_command_line(folder: Path) -> None:
    cmd = "python stand_in.py -F runs with big 'sub={\"a\": 3}' x=2e-6 seed=1"
    subprocess.run(cmd.replace("python", sys.executable, 1), shell=True, cwd=folder, check=True,
                   capture_output=True)
    (record,) = [json.loads(p.read_text()) for p in (folder / "runs").glob("*/run.json")]

    key = sweep.parse_command(cmd).key
    assert record_key(record) == key
    # The same run spelled differently has the same key; another value or named config does not.
    assert sweep.parse_command("python ./stand_in.py -F other with big seed=1 x=0.000002 sub.a=3").key == key
    assert sweep.parse_command("python stand_in.py -F runs with big sub.a=3 x=3e-6 seed=1").key != key
    assert sweep.parse_command("python stand_in.py -F runs with sub.a=3 x=2e-6 seed=1").key != key


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("echo hello", r"no experiment script \(\*\.py\)"),
        ("python stand_in.py with x=1", "no -F DIR or -m"),
        ("python stand_in.py -F runs --bogus with x=1", "Sacred cannot parse"),
        ("python stand_in.py -F runs with x='1", "cannot split it"),
    ],
)
def test_bad_lines_are_refused_with_their_line_number(folder: Path, line: str, message: str) -> None:
    commands = write_commands(folder, ["python stand_in.py -F runs with x=1", line])
    with pytest.raises(ValueError, match=f"line 2: .*{message}"):
        sweep.read_commands(commands)


def test_bad_commands_files_are_refused(folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match="'missing.txt' not found"):
        sweep.read_commands("missing.txt")
    with pytest.raises(ValueError, match="holds no commands"):
        sweep.read_commands(write_commands(folder, ["# only a comment", ""]))
    dup = write_commands(folder, ["python stand_in.py -F a with x=1 seed=0", "python stand_in.py -F b with seed=0 x=1"])
    with pytest.raises(ValueError, match="lines 1 and 2 of .* are the same run"):
        sweep.read_commands(dup)
    result = sweep_cli(folder, "local", "missing.txt")
    assert result.returncode == 2
    assert "sweep.py: error: commands file 'missing.txt' not found" in result.stderr


@pytest.mark.slow
def test_the_same_lines_into_a_fresh_folder_run_again(folder: Path) -> None:
    # Logs are shared by every sweep (outputs/sweep_logs/<key>.log) and the key leaves the observer
    # out: a line's state must come from its own observer, not from a log of a run stored elsewhere.
    lines = ["python stand_in.py -F {} with x=1.0 seed=1", "python stand_in.py -F {} with no_such_key=3 seed=4"]
    first = write_commands(folder, [line.format("runs_a") for line in lines])
    assert sweep_cli(folder, "local", str(first), "--workers", "1").returncode == 1
    assert statuses(first) == {1: "completed", 2: "failed"}

    again = write_commands(folder, [line.format("runs_b") for line in lines], name="again.txt")
    assert statuses(again) == {1: "not started", 2: "not started"}
    result = sweep_cli(folder, "local", str(again), "--workers", "1")
    assert "starting 2 lines" in result.stdout, result.stdout + result.stderr
    assert [r[0]["status"] for r in stored_runs(folder / "runs_b").values()] == ["COMPLETED"]
    assert statuses(again) == {1: "completed", 2: "failed"}

    # A run deleted from its folder is not started, whatever its log says.
    shutil.rmtree(folder / "runs_b")
    assert statuses(again) == {1: "not started", 2: "failed"}


@pytest.mark.slow
def test_local_runs_in_parallel_resumes_and_retries_only_failed(folder: Path) -> None:
    commands = write_commands(folder, [
        "python stand_in.py -F runs with x=1.0 sleep=1.0 seed=1",
        "python stand_in.py -F runs with x=2.0 sleep=1.0 seed=2",
        "# a comment, and a blank line",
        "",
        "python stand_in.py -F runs with x=-1.0 seed=3",  # fails inside the run: Sacred says FAILED
        "python stand_in.py -F runs with no_such_key=3 seed=4",  # fails before a run starts
        "python stand_in.py -F runs with x=3.0 seed=5",
    ])
    keys = {c.lineno: c.key for c in sweep.read_commands(commands)}

    first = sweep_cli(folder, "local", str(commands), "--workers", "2")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "summary: 3 exited 0, 2 exited 1" in first.stdout
    assert "non-zero exit on lines [5, 6]" in first.stdout
    assert statuses(commands) == {1: "completed", 2: "completed", 5: "failed", 6: "failed", 7: "completed"}
    for lineno, key in keys.items():
        log = (folder / "outputs/sweep_logs" / f"{key}.log").read_text()
        assert log.startswith(f"# line {lineno} of ")
        assert log.endswith(f"# exit code: {1 if lineno in (5, 6) else 0}\n")
    runs = stored_runs(folder / "runs")
    assert sorted(r[0]["result"] for r in runs.values() if r[0]["status"] == "COMPLETED") == [1.0, 2.0, 3.0]
    assert keys[6] not in runs  # Sacred refused the config before starting a run
    # Two workers: the two 1-second runs overlapped.
    a, b = (runs[keys[i]][0] for i in (1, 2))
    assert a["start_time"] < b["stop_time"] and b["start_time"] < a["stop_time"]

    def log_times() -> list[int]:
        return [(folder / "outputs/sweep_logs" / f"{keys[i]}.log").stat().st_mtime_ns for i in (1, 2, 7)]

    completed_logs = log_times()
    resume = sweep_cli(folder, "local", str(commands), "--workers", "2")
    assert resume.returncode == 0, resume.stdout + resume.stderr
    assert "2 failed or interrupted lines are skipped; --retry-failed starts them again" in resume.stdout
    assert "starting 0 lines" in resume.stdout
    assert stored_runs(folder / "runs").keys() == runs.keys()

    retry = sweep_cli(folder, "local", str(commands), "--workers", "2", "--retry-failed")
    assert retry.returncode == 1
    assert "starting 2 lines" in retry.stdout
    assert "summary: 2 exited 1" in retry.stdout
    after = stored_runs(folder / "runs")
    assert {k: len(v) for k, v in after.items()} == {k: 1 + (k == keys[5]) for k in runs}
    assert log_times() == completed_logs  # completed lines were not run again


@pytest.mark.slow
def test_ctrl_c_stops_children_and_sacred_marks_them_interrupted(folder: Path) -> None:
    # expt_dln.py itself, with far more SGLD steps than it will get to make.
    endless = f"python {REPO / 'expt_dln.py'} -F runs with sgld_config.num_steps=10000000 sgld_config.num_chains=1"
    commands = write_commands(folder, [f"{endless} seed={i}" for i in range(3)])
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "sweep.py"), "local", str(commands), "--workers", "2"],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 180
    while sum(r[0]["status"] == "RUNNING" for r in stored_runs(folder / "runs").values()) < 2:
        assert time.monotonic() < deadline, "the two runs did not start"
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    assert len(processes_in(folder)) >= 3  # sweep.py and its two commands
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)

    assert proc.returncode == 130, out
    assert "stopping 2 running commands" in out
    runs = stored_runs(folder / "runs")
    assert [r[0]["status"] for r in runs.values()] == ["INTERRUPTED", "INTERRUPTED"]
    assert all(r[0]["stop_time"] for r in runs.values())
    assert sorted(statuses(commands).values()) == ["interrupted", "interrupted", "not started"]
    for key in runs:
        assert "# exit code: " in (folder / "outputs/sweep_logs" / f"{key}.log").read_text().splitlines()[-1]
    assert not processes_in(folder), "a child of sweep.py outlived it"


def processes_in(folder: Path) -> list[int]:
    """Ids of the processes, other than this one, whose working folder is `folder`."""
    pids = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if cwd.readlink() == folder and int(cwd.parent.name) != os.getpid():
                pids.append(int(cwd.parent.name))
        except OSError:  # ended meanwhile, or not ours to read
            pass
    return pids


@pytest.mark.slow
def test_running_run_without_heartbeat_counts_as_interrupted(folder: Path) -> None:
    commands = write_commands(folder, ["python stand_in.py -F runs with seed=1"])
    assert sweep_cli(folder, "local", str(commands)).returncode == 0
    (run_json,) = (folder / "runs").glob("*/run.json")
    record = json.loads(run_json.read_text())

    for age, expected in [(timedelta(seconds=20), "running"), (timedelta(hours=1), "interrupted")]:
        record.update(status="RUNNING", heartbeat=(datetime.utcnow() - age).isoformat())
        run_json.write_text(json.dumps(record))
        assert statuses(commands) == {1: expected}
    retry = sweep_cli(folder, "local", str(commands), "--retry-failed")
    assert "starting 1 lines" in retry.stdout
    assert statuses(commands) == {1: "completed"}


def test_status_reads_a_mongo_observer(folder: Path) -> None:
    spec = importlib.util.spec_from_file_location("stand_in", folder / "stand_in.py")
    stand_in = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stand_in)
    commands = write_commands(folder, [
        "python stand_in.py -m localhost:27017:sweeps with x=1.0 seed=1",
        "python stand_in.py -m localhost:27017:sweeps with x=-1.0 seed=2",
        "python stand_in.py -m localhost:27017:sweeps with x=1.0 seed=3",
    ])
    mongomock.gridfs.enable_gridfs_integration()  # Sacred stores sources with gridfs
    with mongomock.patch(servers=(("localhost", 27017),)):  # every pymongo.MongoClient, sweep.py's too
        stand_in.ex.observers.append(MongoObserver(url="localhost:27017", db_name="sweeps"))
        stand_in.ex.run(config_updates={"x": 1.0, "seed": 1}, options=CAPTURE)
        with pytest.raises(ValueError, match="x must be >= 0"):
            stand_in.ex.run(config_updates={"x": -1.0, "seed": 2}, options=CAPTURE)
        assert statuses(commands) == {1: "completed", 2: "failed", 3: "not started"}
