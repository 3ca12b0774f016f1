"""Run a file of Sacred commands, one per line, locally in parallel or as a SLURM array job.

    python gen_commands_expt_dln.py outputs/dln_commands.txt
    python sweep.py local outputs/dln_commands.txt --workers 4
    python sweep.py slurm outputs/dln_commands.txt --partition gpu --gpus 1 --time 02:00:00
    python sweep.py status outputs/dln_commands.txt
    python sweep.py slurm outputs/dln_commands.txt --retry-failed

A line is identified by its run key, `<script>-<hash>`: a hash of the script's file name, its named
configs and its config updates, parsed with Sacred's own command-line parser. Sacred records the
same three things with every run (`experiment.mainfile`, `meta.named_configs`,
`meta.config_updates`), so `status` computes the key of each stored run the same way and finds a
line's runs in the observer the line names (`-F DIR` or `-m [host:port:]db`), without any help from
the experiment. Reordering the file, adding lines or moving the observer folder keeps the keys; two
lines with the same key are refused. The latest run with a line's key gives its status:

    completed    the run is COMPLETED
    failed       the run FAILED, or the command exited non-zero before Sacred started a run
                 (its sweep log says so), or its SLURM array task failed before a run started
    interrupted  INTERRUPTED or TIMEOUT, or still RUNNING although its process is gone (its SLURM
                 task ended or its heartbeat is older than 5 minutes: killed, out of memory)
    running      RUNNING with a live process, or its SLURM array task is running
    not started  no run yet, or a new attempt waits in the SLURM queue (the detail says so)

`local` and `slurm` start the lines that are not started; `--retry-failed` also starts the failed and
interrupted ones. Logs, relative to the folder sweep.py runs in: `outputs/sweep_logs/<key>.log` (one
per line: header, output, `# exit code: N`) and `outputs/slurm_logs/` (SLURM output and a record of
every submission).
"""

import argparse
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from docopt import DocoptExit, docopt
from tqdm import tqdm

import results

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # sacred imports the deprecated pkg_resources
    from sacred.arg_parser import format_usage, get_config_updates
    from sacred.experiment import gather_command_line_options
    from sacred.observers.mongo import parse_mongo_db_arg

__all__ = [
    "STATUSES",
    "Command",
    "LineStatus",
    "line_statuses",
    "main",
    "parse_command",
    "read_commands",
    "run_key",
    "run_local",
    "select_lines",
    "submit_slurm",
    "config_word",
    "grid_main",
    "observer_flag",
    "write_commands",
]

STATUSES = ("completed", "failed", "interrupted", "running", "not started")
SWEEP_LOG_DIR = Path("outputs/sweep_logs")
SLURM_LOG_DIR = Path("outputs/slurm_logs")
SUBMISSIONS = SLURM_LOG_DIR / "submissions.jsonl"
JOB_SCRIPT = Path(__file__).resolve().parent / "job.slurm"
# Sacred's heartbeat comes every 10 s: a RUNNING run silent for longer was killed (SIGKILL, out of
# memory, time limit); sooner when its SLURM task has ended (and it is not a later, local attempt).
STALE_HEARTBEAT = timedelta(minutes=5)
TASK_GONE_HEARTBEAT = timedelta(seconds=30)
STOP_GRACE_S = 60.0  # how long Ctrl-C waits for Sacred to record INTERRUPTED
SLURM_ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
_EXIT_TRAILER = re.compile(r"^# exit code: (-?\d+)")


@dataclass(frozen=True)
class Command:
    """One line of a commands file.

    Attributes:
        lineno: 1-based line number in the file.
        text: The command as written.
        observer: ("file", DIR) or ("mongo", [host:port:]db), as given to Sacred.
        key: The run key: `run_key` of its script, named configs and config updates.

    """

    lineno: int
    text: str
    observer: tuple[str, str]
    key: str


@dataclass(frozen=True)
class LineStatus:
    """What is known about one line's runs.

    Attributes:
        command: The line.
        status: One of STATUSES.
        detail: Where the status comes from, e.g. "run 3 in outputs/dln".
        queued: True while a SLURM array task for the line is pending or running.

    """

    command: Command
    status: str
    detail: str
    queued: bool = False


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def run_key(script: str, named_configs: list[str] | tuple[str, ...], config_updates: dict) -> str:
    """Return the stable key of a run: script stem and a hash of its named configs and updates.

    Nested and dotted updates (`sub={'a': 1}` and `sub.a=1`) give the same key, tuples and lists too.

    Args:
        script: The experiment script's path or file name; only the file name counts.
        named_configs: Named configs in the order given.
        config_updates: Config updates, nested or flat.

    Returns:
        A string such as "expt_dln-3f2a9c0d1b7e", usable as a file name.

    >>> run_key("expt_dln.py", [], {"sgld_config": {"epsilon": 1e-6}, "seed": 0})
    'expt_dln-f695288bc524'
    >>> run_key("/x/expt_dln.py", (), {"seed": 0, "sgld_config.epsilon": 1e-6})
    'expt_dln-f695288bc524'

    """
    name = Path(script).name
    blob = json.dumps(
        {"script": name, "named_configs": list(named_configs), "config_updates": _flatten(config_updates)},
        sort_keys=True,
        default=repr,
    )
    return f"{Path(name).stem}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


@functools.cache
def _sacred_usage() -> str:
    return format_usage("dummy", "", {}, gather_command_line_options())


def parse_command(text: str, lineno: int = 0) -> Command:
    """Parse one command line the way Sacred parses its own command line.

    Args:
        text: e.g. "python expt_dln.py -F outputs/dln with sgld_config.epsilon=1e-6 seed=0".
        lineno: The line number, for messages and `Command.lineno`.

    Returns:
        The parsed command with its run key.

    Raises:
        ValueError: The line names no `*.py` script, Sacred would reject its arguments, or it has
            no observer that `status` can read (`-F DIR` or `-m [host:port:]db`).

    """
    where = f"line {lineno}: {text!r}"
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise ValueError(f"{where}: cannot split it like a shell would ({e})") from None
    scripts = [i for i, t in enumerate(tokens) if t.endswith(".py")]
    if not scripts:
        raise ValueError(f"{where}: no experiment script (*.py); write `python expt_dln.py -F DIR with ...`")
    script, argv = tokens[scripts[0]], tokens[scripts[0] + 1 :]
    try:
        args = docopt(_sacred_usage(), argv, default_help=False)
    except DocoptExit:
        raise ValueError(f"{where}: Sacred cannot parse the arguments after {script}") from None
    if args["--file_storage"]:
        observer = ("file", args["--file_storage"])
    elif args["--mongo_db"]:
        observer = ("mongo", args["--mongo_db"])
    else:
        raise ValueError(
            f"{where}: no -F DIR or -m [host:port:]db observer, so its runs cannot be found; "
            "add one (e.g. -F outputs/dln)"
        )
    updates, named = get_config_updates(args["UPDATE"])
    return Command(lineno, text, observer, run_key(script, named, updates))


def read_commands(path: str | Path) -> list[Command]:
    """Read a commands file: one command per line; blank lines and `#` comments are skipped.

    Args:
        path: The file, e.g. written by gen_commands_expt_dln.py.

    Returns:
        The commands in file order.

    Raises:
        FileNotFoundError: There is no such file.
        ValueError: It holds no command, a line cannot be parsed, or two lines are the same run.

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"commands file {str(path)!r} not found; write one with gen_commands_*.py")
    commands = [
        parse_command(line.strip(), i)
        for i, line in enumerate(path.read_text().splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not commands:
        raise ValueError(f"commands file {str(path)!r} holds no commands; write one command per line")
    first: dict[str, int] = {}
    for c in commands:
        if c.key in first:
            raise ValueError(
                f"lines {first[c.key]} and {c.lineno} of {path} are the same run ({c.key}); "
                "remove one or give them different seeds (seed=...)"
            )
        first[c.key] = c.lineno
    return commands


def config_word(key: str, value: object) -> str:
    """``key=value`` for the shell and Sacred: strings and lists single-quoted (``layer_widths='[3, 4]'``).

    Every ``gen_commands_*.py`` writes its config updates with this, so that the same value is the
    same word in every sweep file.

    Args:
        key: The config key, e.g. ``sgld_config.epsilon``.
        value: Its value; strings and lists are quoted, everything else written as ``repr`` does.

    Returns:
        The ``key=value`` word of the command line.

    Raises:
        ValueError: If a string or list value contains a single quote.

    Example:
        >>> config_word("layer_widths", [3, 4]), config_word("sgld_config.epsilon", 1e-05)
        ("layer_widths='[3, 4]'", 'sgld_config.epsilon=1e-05')
    """
    if isinstance(value, (str, list)):
        text = str(value)
        if "'" in text:
            raise ValueError(f"{key} must not contain a single quote, got {text!r}")
        return f"{key}='{text}'"
    return f"{key}={value!r}"


def observer_flag(name: str, output_dir: str = "outputs", mongo_db: str | None = None) -> str:
    """The observer of a sweep's commands: ``-m HOST:PORT:DB`` when given, else ``-F OUTPUT_DIR/NAME/``.

    Returns:
        The observer flag and its argument, e.g. ``-F outputs/dln_sweep/``.

    Example:
        >>> observer_flag("dln_sweep"), observer_flag("x", mongo_db="localhost:27017:db")
        ('-F outputs/dln_sweep/', '-m localhost:27017:db')
    """
    return f"-m {mongo_db}" if mongo_db else f"-F {output_dir}/{name}/"


def write_commands(commands: list[str], out: str | Path | None, *, overwrite: bool = True, note: str = "") -> None:
    """Write a sweep, one command per line, whole or not at all; print it when ``out`` is None.

    A commands file cut short would silently drop runs, so the text goes to ``OUT.tmp`` first and is
    renamed over ``out`` only once complete. Every ``gen_commands_*.py`` writes through this.

    Args:
        commands: The command lines.
        out: File to write (its folder is created), or None for standard output.
        overwrite: Replace an existing file; False raises instead.
        note: What to report on standard error (default: the number of commands).

    Raises:
        FileExistsError: If ``out`` exists and ``overwrite`` is False.
    """
    text = "".join(c + "\n" for c in commands)
    note = note or f"{len(commands)} commands"
    if out is None:
        sys.stdout.write(text)
        print(note, file=sys.stderr)
        return
    path = Path(out)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    print(f"wrote {note} to {path}", file=sys.stderr)


def _flag_bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def grid_main(grid_cls: type, make_commands: Callable, argv: list[str] | None, description: str | None,
              types: dict[str, Callable] | None = None) -> list[str]:
    """The command line of a ``gen_commands_*.py``: one ``--flag`` per grid field, then write the sweep.

    Each field of the ``grid_cls`` dataclass becomes ``--<field>`` with the field's default and type
    (booleans read "1"/"true"/"yes"; a None default reads a string unless ``types`` names a type).

    Args:
        grid_cls: The generator's grid dataclass (every field has a default).
        make_commands: Its pure ``make_commands(grid) -> list[str]``.
        argv: Command-line arguments without the program name; default ``sys.argv[1:]``.
        description: The generator's docstring, for ``--help``.
        types: Flag types that the defaults do not tell, by field name.

    Returns:
        The commands, also written to OUT (or printed without it) by ``write_commands``.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", help="file to write, one command per line (default: print)")
    defaults = grid_cls()
    for f in fields(grid_cls):
        default = getattr(defaults, f.name)
        kind = (types or {}).get(f.name) or (_flag_bool if isinstance(default, bool)
                                             else type(default) if default is not None else str)
        parser.add_argument(f"--{f.name}", type=kind, default=default, help=f"default {default}")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    commands = make_commands(grid_cls(**args))
    write_commands(commands, out)
    return commands


# ---- reading runs back from observers ------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    key: str
    status: str  # Sacred's: COMPLETED, FAILED, INTERRUPTED, TIMEOUT, RUNNING, QUEUED
    start_time: datetime | None
    heartbeat: datetime | None
    where: str


def _as_time(value) -> datetime | None:
    return None if pd.isna(value) else pd.Timestamp(value).to_pydatetime().replace(tzinfo=None)


def _observer_runs(observer: tuple[str, str]) -> list[_Run]:
    """The runs in a line's observer, read by results.py (the project's one reader of Sacred runs).

    Returns:
        One ``_Run`` per run in the observer, keyed by ``run_key`` of its main file, named configs and updates.

    Raises:
        RuntimeError: If the observer's runs cannot be read (no connection, no permission, bad data).
    """
    kind, where = observer
    if kind == "file":
        source, label = where, f"in {where}"
    else:
        kw = parse_mongo_db_arg(where)
        url = kw.get("url", "localhost:27017")
        source = f"{url if '://' in url else 'mongodb://' + url}/{kw.get('db_name', 'sacred')}"
        label = f"in mongo {where}"
    try:
        index = results.run_index(source)
    except (ConnectionError, ValueError, PermissionError) as e:
        raise RuntimeError(f"cannot read the runs of observer {where}: {e}") from e
    return [
        _Run(
            key=run_key(r.mainfile or "", r.named_configs, r.config_updates),
            status=r.status,
            start_time=_as_time(r.start_time),
            heartbeat=_as_time(r.heartbeat),
            where=f"run {r.run_id} {label}",
        )
        for r in index.itertuples()
    ]


def _log_exit_code(command: Command) -> int | None:
    """The exit code in the line's sweep log, if that log is of a run into the line's own observer.

    Logs are named by run key, which leaves the observer out (so moving a folder keeps the keys):
    a log written when the same line stored its runs elsewhere says nothing about this observer.

    Returns:
        The exit code in the log's last line; None if there is no log, it is of another observer, or
        its last line is not an exit trailer.
    """
    log = SWEEP_LOG_DIR / f"{command.key}.log"
    if not log.exists():
        return None
    text = log.read_bytes().decode(errors="replace").splitlines()
    try:
        logged = parse_command(text[1][2:], command.lineno) if len(text) > 1 and text[1].startswith("# ") else None
    except ValueError:
        logged = None
    if logged is None or _same_observer(logged.observer, command.observer) is False:
        return None
    match = _EXIT_TRAILER.match(text[-1]) if text else None
    return int(match.group(1)) if match else None


def _same_observer(a: tuple[str, str], b: tuple[str, str]) -> bool:
    if a[0] != b[0]:
        return False
    return Path(a[1]).resolve() == Path(b[1]).resolve() if a[0] == "file" else a[1] == b[1]


# ---- SLURM submissions and the states of their array tasks --------------------------------------


def _submissions(commands_file: Path) -> list[dict]:
    if not SUBMISSIONS.exists():
        return []
    records = [json.loads(line) for line in SUBMISSIONS.read_text().splitlines() if line.strip()]
    return [r for r in records if r["commands"] == str(commands_file.resolve())]


def _task_ids(spec: str) -> list[int]:
    """Expand an array task spec such as "4", "[4-6%2]" or "1,3-5".

    >>> _task_ids("[1,3-5%2]")
    [1, 3, 4, 5]

    Returns:
        The task ids, in the order given (the ``%`` limit dropped).
    """
    ids = []
    for part in spec.strip("[]").split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        ids.extend(range(int(lo), int(hi or lo) + 1))
    return ids


def _slurm_task_states(job_ids: list[str]) -> dict[tuple[str, int], str]:
    """Map (array job id, task id) to its SLURM state, from sacct, else from scontrol.

    sacct needs SLURM accounting; for jobs it does not know, scontrol still knows those that ended
    less than MinJobAge (5 min by default) ago. Tasks neither knows are left out.

    Returns:
        ``{(job id, task id): state}``, e.g. ``("123", 4): "CANCELLED"``.
    """
    if not job_ids or not shutil.which("scontrol"):
        return {}
    states = {}
    proc = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "--format=JobID,State"],
        capture_output=True, text=True,
    )
    for row in proc.stdout.splitlines() if proc.returncode == 0 else []:
        job_task, _, state = row.partition("|")
        job, _, spec = job_task.partition("_")
        if spec:
            states.update({(job, t): state.split()[0] for t in _task_ids(spec)})  # "CANCELLED by 0"
    for job in set(job_ids) - {job for job, _ in states}:
        proc = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
        for row in proc.stdout.splitlines() if proc.returncode == 0 else []:
            fields = dict(f.split("=", 1) for f in row.split() if "=" in f)
            if "ArrayTaskId" in fields:
                states.update({(job, t): fields["JobState"] for t in _task_ids(fields["ArrayTaskId"])})
    return states


def _slurm_key_states(commands_file: Path) -> dict[str, tuple[str, str]]:
    """Map run key to (SLURM state, "job_task") of its latest submitted array task.

    Returns:
        ``{run key: (state, "job_task")}`` for the keys whose task SLURM still knows.
    """
    records = _submissions(commands_file)
    states = _slurm_task_states(sorted({r["job_id"] for r in records}))
    latest = {}
    for r in records:
        for task, key in enumerate(r["keys"], start=1):
            if (r["job_id"], task) in states:
                latest[key] = (states[r["job_id"], task], f"{r['job_id']}_{task}")
    return latest


# ---- status ---------------------------------------------------------------------------------------


def line_statuses(commands: list[Command], commands_file: Path) -> list[LineStatus]:
    """Find each line's latest run in its observer and say where it stands.

    Args:
        commands: From `read_commands`.
        commands_file: The file they came from, whose SLURM submissions are consulted too.

    Returns:
        One LineStatus per command, in order.

    """
    runs: dict[str, _Run] = {}
    for observer in dict.fromkeys(c.observer for c in commands):
        for run in _observer_runs(observer):
            old = runs.get(run.key)
            if old is None or (run.start_time or datetime.min) >= (old.start_time or datetime.min):
                runs[run.key] = run
    slurm = _slurm_key_states(commands_file)
    now = datetime.now(UTC).replace(tzinfo=None)  # Sacred writes naive UTC times
    out = []
    for c in commands:
        run = runs.get(c.key)
        task_state, task = slurm.get(c.key, (None, ""))
        queued = task_state in SLURM_ACTIVE
        exit_code = _log_exit_code(c)
        if queued:  # a new attempt is on its way, whatever became of earlier ones
            running = task_state == "RUNNING" or (run is not None and run.status == "RUNNING")
            status, detail = ("running" if running else "not started"), f"SLURM task {task} {task_state}"
        elif run is not None and run.status != "QUEUED":
            status, detail = _status_of_run(run, now, task_state, task)
        elif exit_code:
            # A negative code is a signal, 130 is bash's report of SIGINT: stopped, not broken.
            status = "interrupted" if exit_code < 0 or exit_code == 130 else "failed"
            detail = f"exit code {exit_code} before a run started; see {SWEEP_LOG_DIR / c.key}.log"
        elif task_state is not None and task_state != "COMPLETED":
            status, detail = "failed", f"SLURM task {task} {task_state} before a run started"
        elif exit_code == 0:  # the observer decides: its run was moved or deleted, so run it again
            status, detail = "not started", f"exited 0 before, but {c.observer[1]} holds no run with key {c.key}"
        else:
            status, detail = "not started", ""
        out.append(LineStatus(c, status, detail, queued))
    return out


def _status_of_run(run: _Run, now: datetime, task_state: str | None, task: str) -> tuple[str, str]:
    if run.status == "COMPLETED":
        return "completed", run.where
    if run.status == "FAILED":
        return "failed", run.where
    if run.status == "RUNNING":
        silent = now - (run.heartbeat or run.start_time or now)
        if task_state is not None and task_state not in SLURM_ACTIVE and silent > TASK_GONE_HEARTBEAT:
            return "interrupted", f"{run.where}: RUNNING, but SLURM task {task} is {task_state}"
        if silent > STALE_HEARTBEAT:
            return "interrupted", f"{run.where}: RUNNING, but no heartbeat since {now - silent:%Y-%m-%d %H:%M} UTC"
        return "running", run.where
    return "interrupted", f"{run.where}: {run.status}"


def select_lines(statuses: list[LineStatus], retry_failed: bool) -> list[Command]:
    """Pick the lines to start: not started ones, plus failed and interrupted ones if retrying.

    Lines that are queued in SLURM, running or completed are never picked.

    Args:
        statuses: From `line_statuses`.
        retry_failed: Also pick failed and interrupted lines.

    Returns:
        The commands to start, in file order.

    """
    wanted = {"not started", "failed", "interrupted"} if retry_failed else {"not started"}
    return [s.command for s in statuses if s.status in wanted and not s.queued]


def _report_selection(statuses: list[LineStatus], todo: list[Command], retry_failed: bool, verb: str) -> None:
    counts = Counter(s.status for s in statuses)
    print(f"{len(statuses)} lines: " + ", ".join(f"{counts[k]} {k}" for k in STATUSES if counts[k]))
    queued = sum(s.queued for s in statuses)
    if queued:
        print(f"{queued} lines are queued or running in SLURM and are left alone")
    again = counts["failed"] + counts["interrupted"]
    if again and not retry_failed:
        print(f"{again} failed or interrupted lines are skipped; --retry-failed starts them again")
    print(f"{verb} {len(todo)} lines")


def print_status(commands_file: Path) -> int:
    """Print one row per line (line, status, key, detail) and a count per status.

    Args:
        commands_file: The commands file.

    Returns:
        The exit code: 0.

    """
    statuses = line_statuses(read_commands(commands_file), commands_file)
    width = max(len(s.command.key) for s in statuses)
    for s in statuses:
        print(f"{s.command.lineno:5d}  {s.status:<11}  {s.command.key:<{width}}  {s.detail}")
    counts = Counter(s.status for s in statuses)
    print("total: " + ", ".join(f"{counts[k]} {k}" for k in STATUSES if counts[k]))
    return 0


# ---- local runner ---------------------------------------------------------------------------------


def _with_python(text: str, python: str | None) -> str:
    """Replace a leading `python` or `python3` word by the given interpreter (as job.slurm does).

    >>> _with_python("python expt_dln.py -F out", "/venv/bin/python")
    '/venv/bin/python expt_dln.py -F out'

    Returns:
        ``text`` with its first word replaced, or unchanged if ``python`` is None or the word is not a python.
    """
    first, _, rest = text.partition(" ")
    return f"{shlex.quote(python)} {rest}" if python and first in ("python", "python3") else text


def run_local(commands_file: Path, workers: int, retry_failed: bool, python: str | None) -> int:
    """Run the selected lines, `workers` at a time, each in its own process group, logging each.

    Ctrl-C (or SIGTERM) sends SIGINT to every running command's process group, so Sacred records
    the runs as INTERRUPTED, and waits for them to finish writing; a second Ctrl-C kills them.

    Args:
        commands_file: The commands file.
        workers: How many commands run at once.
        retry_failed: Also rerun failed and interrupted lines.
        python: Interpreter that replaces a leading `python` word, or None to keep it.

    Returns:
        The exit code: 0 if every started command exited 0, 1 if one failed, 130 if interrupted.

    Raises:
        ValueError: workers < 1.

    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    statuses = line_statuses(read_commands(commands_file), commands_file)
    todo = select_lines(statuses, retry_failed)
    _report_selection(statuses, todo, retry_failed, "starting")
    if not todo:
        return 0
    SWEEP_LOG_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # One thread per worker unless the user chose: torch would otherwise start one per core in each.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // min(workers, len(todo)))))

    pending, running, exit_codes = deque(todo), {}, {}
    bar = tqdm(total=len(todo), unit="run", dynamic_ncols=True)

    def start(c: Command) -> None:
        log = open(SWEEP_LOG_DIR / f"{c.key}.log", "w")
        log.write(f"# line {c.lineno} of {commands_file}\n# {c.text}\n# started {datetime.now():%Y-%m-%d %H:%M:%S}\n")
        log.flush()
        proc = subprocess.Popen(
            ["bash", "-c", _with_python(c.text, python)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group: Ctrl-C reaches it only through us
        )
        running[proc] = (c, log)

    def reap(block: bool) -> None:
        for proc in list(running):
            if (proc.wait() if block else proc.poll()) is None:
                continue
            c, log = running.pop(proc)
            log.write(f"\n# exit code: {proc.returncode}\n")
            log.close()
            exit_codes[c.lineno] = proc.returncode
            if proc.returncode != 0:
                bar.write(f"line {c.lineno} exited {proc.returncode}: see {log.name}")
            bar.update()

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    interrupted = False
    try:
        while pending or running:
            while pending and len(running) < workers:
                start(pending.popleft())
            reap(block=False)
            time.sleep(0.1)
    except KeyboardInterrupt:
        interrupted = True
        bar.write(f"stopping {len(running)} running commands (Ctrl-C again to kill them)")
        _signal_all(running, signal.SIGINT)
        try:
            deadline = time.monotonic() + STOP_GRACE_S
            while running and time.monotonic() < deadline:
                reap(block=False)
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        _signal_all(running, signal.SIGKILL)
        reap(block=True)
    finally:
        bar.close()
    return _summarize(exit_codes, len(todo), interrupted)


def _signal_all(running: dict, sig: int) -> None:
    for proc in running:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def _summarize(exit_codes: dict[int, int], total: int, interrupted: bool) -> int:
    counts = Counter(exit_codes.values())
    parts = [f"{n} exited {code}" for code, n in sorted(counts.items())]
    if total > len(exit_codes):
        parts.append(f"{total - len(exit_codes)} not started")
    print("summary: " + ", ".join(parts))
    failed = sorted(lineno for lineno, code in exit_codes.items() if code != 0)
    if failed:
        print(f"non-zero exit on lines {failed}; logs in {SWEEP_LOG_DIR}/")
    return 130 if interrupted else (1 if failed else 0)


# ---- SLURM submission -----------------------------------------------------------------------------


def submit_slurm(
    commands_file: Path,
    *,
    retry_failed: bool = False,
    max_concurrent: int | None = None,
    sbatch_options: list[str] = (),
    python: str = sys.executable,
    job_script: Path = JOB_SCRIPT,
    dry_run: bool = False,
) -> int:
    """Submit the selected lines as one SLURM array job of job.slurm, `--array=1-N[%K]`.

    A lines file maps array index i to the i-th selected line; the job id, lines and keys are
    appended to outputs/slurm_logs/submissions.jsonl, where `status` finds the array tasks again.

    Args:
        commands_file: The commands file.
        retry_failed: Also submit failed and interrupted lines.
        max_concurrent: K, the most array tasks running at once; None for no cap.
        sbatch_options: More sbatch options, e.g. ["--partition=gpu", "--gpus=1"].
        python: Interpreter that replaces a leading `python` word in each command.
        job_script: The array job script.
        dry_run: Print the sbatch command instead of running it.

    Returns:
        The exit code: 0 once submitted, or when there is nothing to submit.

    Raises:
        ValueError: max_concurrent < 1.
        RuntimeError: sbatch is missing or refused the job.

    """
    if max_concurrent is not None and max_concurrent < 1:
        raise ValueError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    statuses = line_statuses(read_commands(commands_file), commands_file)
    todo = select_lines(statuses, retry_failed)
    _report_selection(statuses, todo, retry_failed, "submitting")
    if not todo:
        return 0
    given, commands_file = commands_file, Path(commands_file).resolve()
    lines_file = (SLURM_LOG_DIR / f"{commands_file.stem}_{datetime.now():%Y%m%d-%H%M%S-%f}.lines").resolve()
    array = f"1-{len(todo)}" + (f"%{max_concurrent}" if max_concurrent else "")
    argv = [
        "sbatch", "--parsable", f"--array={array}", f"--job-name=sweep-{commands_file.stem}",
        f"--output={SLURM_LOG_DIR}/slurm_%A_%a.out", f"--error={SLURM_LOG_DIR}/slurm_%A_%a.err",
        *sbatch_options, str(job_script), str(commands_file), str(lines_file),
    ]
    lines = [c.lineno for c in todo]
    if dry_run:
        print(f"SWEEP_PYTHON={shlex.quote(python)} {shlex.join(argv)}")
        print(f"array index -> line: {dict(enumerate(lines, start=1))}")
        return 0
    if shutil.which("sbatch") is None:
        raise RuntimeError("sbatch not found on PATH: run `sweep.py slurm` on a SLURM login node")
    SLURM_LOG_DIR.mkdir(parents=True, exist_ok=True)
    lines_file.write_text("".join(f"{c.lineno} {c.key}\n" for c in todo))
    env = dict(os.environ, SWEEP_PYTHON=python, SWEEP_LOG_DIR=str(SWEEP_LOG_DIR.resolve()))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines_file.unlink()
        raise RuntimeError(f"sbatch refused the job (exit {proc.returncode}): {proc.stderr.strip()}")
    job_id = proc.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"
    record = {"job_id": job_id, "commands": str(commands_file), "lines": lines, "keys": [c.key for c in todo],
              "lines_file": str(lines_file), "submitted": datetime.now().isoformat(timespec="seconds")}
    with open(SUBMISSIONS, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"submitted job {job_id}: array {array}, lines {lines}")
    print(f"logs: {SLURM_LOG_DIR}/slurm_{job_id}_<index>.out and .err; progress: python sweep.py status {given}")
    return 0


# ---- command line ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run a file of Sacred commands locally or as a SLURM array job, and report their status.",
        epilog="Run it from the folder the commands' relative paths start from (the repository root).",
    )
    sub = parser.add_subparsers(dest="action", required=True)

    local = sub.add_parser("local", help="run the commands here, in parallel")
    slurm = sub.add_parser("slurm", help="submit the commands as a SLURM array job running job.slurm")
    status = sub.add_parser("status", help="print each line's status")
    for p in (local, slurm, status):
        p.add_argument("commands_file", type=Path, help="one command per line, e.g. from gen_commands_expt_dln.py")
    for p in (local, slurm):
        p.add_argument("--retry-failed", action="store_true", help="also start failed and interrupted lines")
        p.add_argument("--python", default=sys.executable,
                       help="interpreter that replaces a leading `python` in each command (default: %(default)s)")
    local.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                       help="commands run at once (default: half the CPUs, %(default)s)")
    slurm.add_argument("--max-concurrent", type=int, metavar="K", help="run at most K array tasks at once (%%K)")
    slurm.add_argument("--partition", help="sbatch --partition (default: the cluster's default partition)")
    slurm.add_argument("--time", help="sbatch --time, e.g. 02:00:00 (default: job.slurm's, 01:00:00)")
    slurm.add_argument("--mem", help="sbatch --mem, e.g. 8G (default: job.slurm's, 4G)")
    slurm.add_argument("--gpus", help="sbatch --gpus, e.g. 1 (default: none)")
    slurm.add_argument("--cpus-per-task", type=int, help="sbatch --cpus-per-task (default: job.slurm's, 1)")
    slurm.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                       help="extra sbatch option, repeatable, e.g. --sbatch-arg=--account=myproject")
    slurm.add_argument("--job-script", type=Path, default=JOB_SCRIPT, help="default: %(default)s")
    slurm.add_argument("--dry-run", action="store_true", help="print the sbatch command instead of running it")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring.

    Args:
        argv: Arguments without the program name; defaults to sys.argv[1:].

    Returns:
        The exit code.

    """
    args = _parser().parse_args(argv)
    try:
        if args.action == "local":
            return run_local(args.commands_file, args.workers, args.retry_failed, args.python)
        if args.action == "slurm":
            options = {"partition": args.partition, "time": args.time, "mem": args.mem, "gpus": args.gpus,
                       "cpus-per-task": args.cpus_per_task}
            return submit_slurm(
                args.commands_file, retry_failed=args.retry_failed, max_concurrent=args.max_concurrent,
                sbatch_options=[f"--{k}={v}" for k, v in options.items() if v is not None] + args.sbatch_arg,
                python=args.python, job_script=args.job_script, dry_run=args.dry_run,
            )
        return print_status(args.commands_file)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
