"""A throwaway single-node SLURM cluster on localhost, for tests and for trying `job.slurm` by hand.

`install()` (run by `make slurm`, once per machine) installs Debian's `slurm-wlm` and `munge`
with apt-get when their programs are missing; it is the only step that changes the system, and
the tests never run it. `start(root)` writes a munge key and a `slurm.conf` (one node with this
machine's CPUs and memory, one partition) under `root`, and starts `munged` as user munge and
`slurmctld` and `slurmd` as root, all in the foreground of their own sessions, so that their
process ids are known. `stop(root)` ends exactly those processes. Nothing outside `root` is
written; client commands find the cluster through `SLURM_CONF`.

The configuration avoids what a container lacks: no cgroups (`proctrack/linuxproc`, `task/none`),
no accounting daemon (`accounting_storage/none`, so `sacct` reports that accounting is disabled).

    python tests/slurm_cluster.py install               # what `make slurm` runs (root, apt-get)
    python tests/slurm_cluster.py start /tmp/slurm-ci   # prints `export SLURM_CONF=...`
    python tests/slurm_cluster.py stop /tmp/slurm-ci

Requires root, since slurmd runs jobs as their submitting user and munged runs as user munge.
"""

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["PARTITION", "install", "missing", "start", "stop"]

PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")  # started in this order, stopped in reverse
PACKAGES = ("slurm-wlm", "munge")
PROGRAMS = (*DAEMONS, "sbatch", "squeue", "scontrol", "sinfo")


def missing() -> str | None:
    """Return why a cluster cannot be started here, or None if it can.

    Returns:
        A reason that names the command to fix it, or None when the programs are installed and
        this process is root.
    """
    absent = [p for p in PROGRAMS if shutil.which(p) is None]
    if absent:
        return f"{', '.join(absent)} not installed; run `make slurm` (as root) to install slurm-wlm and munge"
    if os.geteuid() != 0:
        return "not running as root (munged and slurmd need root)"
    return None


def install() -> None:
    """Install slurm-wlm and munge with apt-get unless their programs are already on PATH (idempotent).

    Raises:
        RuntimeError: Not root, no apt-get, or apt-get failed; the message holds the end of its output.
    """
    if all(shutil.which(p) for p in PROGRAMS):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("installing slurm-wlm and munge needs root and apt-get (Debian/Ubuntu); "
                           "install them with your system's package manager instead")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> str:
    """CPUs and memory as slurmd itself detects them, e.g. "CPUs=2 RealMemory=21694".

    slurmd drains a node whose slurm.conf claims more than it finds, so take its own count and
    leave a tenth of the memory aside.
    """
    found = dict(f.split("=", 1) for f in subprocess.check_output(["slurmd", "-C"], text=True).split() if "=" in f)
    return f"CPUs={found['CPUs']} RealMemory={int(int(found['RealMemory']) * 0.9)}"


def _write_config(root: Path) -> Path:
    munge_dir = root / "munge"
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=ci",
                "SlurmctldHost=localhost",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={munge_dir / 'munge.socket'}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                "MpiDefault=none",
                "SwitchType=switch/none",
                "SchedulerType=sched/backfill",
                "ReturnToService=2",
                "MinJobAge=600",
                "SlurmctldTimeout=30",
                "SlurmdTimeout=30",
                f"NodeName=localhost NodeAddr=127.0.0.1 {_node_hardware()} State=UNKNOWN",
                f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    return conf


def _spawn(root: Path, name: str, argv: list[str], user: str | None = None) -> None:
    log = open(root / "log" / f"{name}.out", "ab")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # outlives a `start` command run from a shell
        user=user,
        env=dict(os.environ, SLURM_CONF=str(root / "slurm.conf")),
    )
    log.close()
    (root / f"{name}.popen.pid").write_text(str(proc.pid))


def _wait_for(what: str, check, root: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        dead = [n for n in DAEMONS if (root / f"{n}.popen.pid").exists() and not _alive(_pid(root, n))]
        if dead:
            _fail(f"{', '.join(dead)} exited while waiting for {what}", root)
        time.sleep(0.5)
    _fail(f"timed out after {timeout:.0f} s waiting for {what}", root)


def _fail(message: str, root: Path) -> None:
    logs = [root / "log" / f"{n}.out" for n in DAEMONS] + [root / "munge" / "munged.log"]
    logs += [root / "log" / "slurmctld.log", root / "log" / "slurmd.log"]
    tails = "".join(f"\n--- {p}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    stop(root)
    raise RuntimeError(message + tails)


def _pid(root: Path, name: str) -> int:
    return int((root / f"{name}.popen.pid").read_text())


def _node_idle(conf: Path) -> bool:
    proc = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%t"], env=dict(os.environ, SLURM_CONF=str(conf)),
        capture_output=True, text=True,
    )
    return proc.returncode == 0 and proc.stdout.strip() in ("idle", "mix", "alloc")


def start(root: Path) -> Path:
    """Start munged, slurmctld and slurmd with their state under `root` (installed by `install`).

    Args:
        root: An empty or missing folder outside any folder that user munge cannot enter.

    Returns:
        The slurm.conf path; point `SLURM_CONF` at it for sbatch, squeue and friends.

    Raises:
        RuntimeError: SLURM is missing (see `missing`), or a daemon did not come up; the message
            holds the ends of their logs.
    """
    reason = missing()
    if reason:
        raise RuntimeError(f"cannot start a SLURM cluster: {reason}")
    root = Path(root).resolve()
    for d in ("state", "spool", "log", "munge"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # munged refuses keys and sockets in folders that others may write or it cannot own.
    for p in [root, *root.parents]:
        if p.stat().st_mode & 0o001 == 0:
            raise RuntimeError(f"user munge cannot enter {p}; put the cluster folder elsewhere")
    munge = pwd.getpwnam("munge")
    munge_dir = root / "munge"
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    for p in (munge_dir, key):
        os.chown(p, munge.pw_uid, munge.pw_gid)
    munge_dir.chmod(0o755)  # clients need to reach the socket
    key.chmod(0o600)
    conf = _write_config(root)

    _spawn(root, "munged", [
        "munged", "--foreground", f"--socket={munge_dir / 'munge.socket'}",
        f"--key-file={key}", f"--pid-file={munge_dir / 'munged.pid'}",
        f"--seed-file={munge_dir / 'munged.seed'}", f"--log-file={munge_dir / 'munged.log'}",
    ], user="munge")
    _wait_for("the munge socket", (munge_dir / "munge.socket").exists, root)
    _spawn(root, "slurmctld", ["slurmctld", "-D", "-f", str(conf)])
    _spawn(root, "slurmd", ["slurmd", "-D", "-f", str(conf), "-N", "localhost"])
    _wait_for("the node to become idle", lambda: _node_idle(conf), root)
    return conf


def stop(root: Path) -> None:
    """Stop the daemons that `start(root)` started, by their recorded process ids.

    Args:
        root: The folder given to `start`.
    """
    root = Path(root).resolve()
    for name in reversed(DAEMONS):
        pid_file = root / f"{name}.popen.pid"
        if not pid_file.exists():
            continue
        pid = _pid(root, name)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid_file.unlink()
            continue
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        pid_file.unlink()


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reaps it when it is our child
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: `install`, `start ROOT` or `stop ROOT`.

    Args:
        argv: Arguments without the program name; defaults to sys.argv[1:].
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install", "start", "stop"])
    parser.add_argument("root", type=Path, nargs="?", help="folder for the cluster's config, state and logs")
    args = parser.parse_args(argv)
    if args.action == "install":
        try:
            install()
        except RuntimeError as err:
            sys.exit(str(err))
        return
    if args.root is None:
        parser.error(f"{args.action} needs ROOT, the cluster's folder")
    if args.action == "start":
        reason = missing()
        if reason:
            sys.exit(f"cannot start a SLURM cluster here: {reason}")
        print(f"export SLURM_CONF={start(args.root)}")
    else:
        stop(args.root)


if __name__ == "__main__":
    main()
