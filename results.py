"""Sacred runs → tidy pandas DataFrames.

Two loaders read what Sacred's observers wrote, from any mix of sources:

- a ``FileStorageObserver`` folder (``python expt_dln.py -F outputs/dln ...``): one sub-folder per
  run holding ``run.json``, ``config.json``, ``info.json``, ``metrics.json`` and ``cout.txt``;
  a single run folder works too;
- a MongoDB written by ``MongoObserver``, given as ``mongodb://host:port/dbname`` (collections
  ``runs`` and ``metrics``), or as a database object, e.g. ``pymongo.MongoClient()["sacred"]``
  or a ``mongomock`` one.

``load_runs`` gives one row per run; ``load_metrics`` gives the ``log_scalar`` series in long
form. Join the two on ``("source", "run_id")``::

    runs = load_runs("outputs/dln", status="COMPLETED")
    metrics = load_metrics("outputs/dln").merge(runs, on=["source", "run_id"])

Runs that failed, were interrupted, are still running or were half written (a missing or
truncated JSON file) load like the others: ``status`` says how the run ended (``"UNKNOWN"`` when
``run.json`` cannot be read) and ``load_error`` names each file that could not be read.

Filters keep the runs whose column equals the given value. Pass a dotted name as a dict,
``**{"sgld_config.epsilon": 1e-6}``, or write the dots as double underscores,
``sgld_config__epsilon=1e-6``. A value can be a scalar (floats compare with a relative
tolerance of 1e-9; ``None`` keeps the runs without a value, e.g. ``load_error=None``), a list,
tuple or set of accepted values, or a predicate ``lambda v: v > 1e-6``. ``experiment``,
``status`` and ``run_id`` are columns like any other.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

__all__ = ["INDEX_COLUMNS", "METRIC_COLUMNS", "RUN_COLUMNS", "load_metrics", "load_runs", "run_index"]

RUN_COLUMNS: tuple[str, ...] = (
    "run_id",  # Sacred's _id: an int, or the folder name where it is not one
    "source",  # the folder or (password-free) URL the run came from
    "experiment",  # Experiment(name)
    "status",  # COMPLETED, FAILED, INTERRUPTED, RUNNING, QUEUED, TIMEOUT, or UNKNOWN
    "host",  # host name
    "start_time",  # UTC, as Sacred records it
    "stop_time",
    "heartbeat",  # last sign of life; a RUNNING run with an old heartbeat has died
    "duration_s",  # stop_time − start_time in seconds; NaN while running
    "fail_message",  # last line of the traceback of a failed run
    "load_error",  # files that could not be read, or None
)
"""The columns every ``load_runs`` frame starts with, before the config and info columns."""

INDEX_COLUMNS: tuple[str, ...] = (
    "run_id", "source", "status", "start_time", "heartbeat",
    "mainfile",  # experiment.mainfile: the script, as Sacred records it
    "named_configs",  # meta.named_configs: the named configs given on the command line
    "config_updates",  # meta.config_updates: the command line's `with` updates, as a nested dict
)
"""The columns of a ``run_index`` frame: how each run was started, not what it found."""

METRIC_COLUMNS: tuple[str, ...] = ("source", "run_id", "metric", "step", "value", "timestamp")
"""The columns of a ``load_metrics`` frame."""

_READ_ATTEMPTS = 3  # tries to read a JSON file that a live run may be rewriting

# MongoObserver adds {"name", "id"} links to its metrics documents under info["metrics"].
_MONGO_METRIC_LINKS = "metrics"


@dataclass
class _RawRun:
    """What one source holds about one run, before it becomes a row."""

    run_id: int | str
    run: dict[str, Any]
    config: dict[str, Any]
    info: dict[str, Any]
    errors: list[str]


class _Source(Protocol):
    label: str

    def runs(self, with_meta: bool = False) -> Iterator[_RawRun]: ...

    def metrics(self, run_ids: list[int | str]) -> Iterator[tuple[int | str, str, dict]]: ...


def load_runs(*sources: str | os.PathLike | Any, **filters: Any) -> pd.DataFrame:
    """Load Sacred runs into one row per run.

    Args:
        *sources: Run folders (``FileStorageObserver``'s basedir, or one run folder),
            ``mongodb://host:port/dbname`` URLs, or MongoDB database objects.
        **filters: Column → accepted value(s) or predicate; see the module docstring.

    Returns:
        A DataFrame with the ``RUN_COLUMNS``, then the config flattened to dotted names
        (``sgld_config.epsilon``), then the info entries (numbers, strings, lists; nested
        dicts flattened to dotted names, prefixed ``info.`` where a name is already taken).
        Rows follow the order of the sources, then run id.

    Raises:
        FileNotFoundError: If a folder does not exist.
        ValueError: If a source is neither a folder nor a MongoDB URL, a URL names no
            database, or a filter names a column no run has.
        ConnectionError: If a MongoDB cannot be read.
        TypeError: If a source has an unsupported type.
    """
    frame, _ = _load(sources, filters)
    return frame


def load_metrics(*sources: str | os.PathLike | Any, **filters: Any) -> pd.DataFrame:
    """Load the metrics of Sacred runs (``_run.log_scalar``) in long form.

    A run whose ``metrics.json`` cannot be read is skipped with a warning.

    Args:
        *sources: As for ``load_runs``.
        **filters: As for ``load_runs``; they select runs, whose metrics are all returned.

    Returns:
        A DataFrame with the ``METRIC_COLUMNS``: one row per logged value, in the order of the
        sources, then run id and metric, each metric in the order it was logged.

    Raises:
        FileNotFoundError: If a folder does not exist.
        ValueError: As for ``load_runs``.
        ConnectionError: If a MongoDB cannot be read.
        TypeError: If a source has an unsupported type.
    """
    runs, opened = _load(sources, filters)
    rows: list[pd.DataFrame] = []
    for src in opened:
        ids = runs.loc[runs["source"] == src.label, "run_id"].tolist()
        for run_id, name, series in src.metrics(ids):
            steps, values = series.get("steps", []), series.get("values", [])
            stamps = series.get("timestamps") or [None] * len(steps)
            if not len(steps) == len(values) == len(stamps):
                warnings.warn(
                    f"{src.label} run {run_id}: metric {name!r} has {len(steps)} steps but "
                    f"{len(values)} values; skipped",
                    stacklevel=2,
                )
                continue
            rows.append(
                pd.DataFrame(
                    {
                        "source": src.label,
                        "run_id": run_id,
                        "metric": name,
                        "step": np.asarray(steps, dtype=np.int64),
                        "value": np.asarray(values, dtype=np.float64),
                        "timestamp": pd.to_datetime(stamps),
                    }
                )
            )
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in METRIC_COLUMNS})
    return pd.concat(rows, ignore_index=True)


def run_index(*sources: str | os.PathLike | Any) -> pd.DataFrame:
    """How each run was started: its script, named configs and config updates, and its status.

    What ``sweep.py`` needs to match runs to the command lines that started them, without reading
    configs, info or metrics. A folder that does not exist yet holds no runs.

    Args:
        *sources: As for ``load_runs``.

    Returns:
        A DataFrame with the ``INDEX_COLUMNS``, one row per run (``UNKNOWN`` status where
        ``run.json`` cannot be read).

    Raises:
        ValueError: As for ``load_runs``.
        ConnectionError: If a MongoDB cannot be read.
        TypeError: If a source has an unsupported type.
    """
    rows = []
    for source in sources:
        if isinstance(source, (str, os.PathLike)) and not re.match(r"mongodb(\+srv)?://", str(source)) \
                and not Path(source).exists():
            continue
        src = _open(source)
        for raw in src.runs(with_meta=True):
            meta = raw.run.get("meta") or {}
            rows.append({
                "run_id": raw.run_id,
                "source": src.label,
                "status": raw.run.get("status", "UNKNOWN"),
                "start_time": _time(raw.run.get("start_time")),
                "heartbeat": _time(raw.run.get("heartbeat")),
                "mainfile": (raw.run.get("experiment") or {}).get("mainfile"),
                "named_configs": list(meta.get("named_configs") or []),
                "config_updates": _decode(meta.get("config_updates") or {}),
            })
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS))


def _load(
    sources: tuple[Any, ...], filters: dict[str, Any]
) -> tuple[pd.DataFrame, list[_Source]]:
    if not sources:
        raise ValueError("pass at least one runs folder or mongodb://host:port/dbname URL")
    opened = [_open(s) for s in sources]
    rows = []
    for src in opened:
        found = [_row(src.label, raw) for raw in src.runs()]
        if not found:
            warnings.warn(f"no Sacred runs in {src.label!r}", stacklevel=3)
        rows += found
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(RUN_COLUMNS))
    for col in ("start_time", "stop_time", "heartbeat"):
        frame[col] = pd.to_datetime(frame[col])
    frame["duration_s"] = pd.to_numeric(frame["duration_s"])
    for col in ("experiment", "status", "host", "fail_message", "load_error"):
        frame[col] = frame[col].astype("str").where(frame[col].notna())  # missing stays NaN
    return _filter(frame, filters), opened


def _open(source: Any) -> _Source:
    if isinstance(source, str) and re.match(r"mongodb(\+srv)?://", source):
        return _MongoSource.from_url(source)
    if isinstance(source, (str, os.PathLike)):
        return _FileSource(Path(source))
    if hasattr(source, "list_collection_names") and hasattr(source, "name"):
        return _MongoSource(source, label=f"mongodb:{source.name}")
    raise TypeError(
        f"cannot load runs from {type(source).__name__} {source!r}; pass a runs folder, "
        "a mongodb://host:port/dbname URL, or a MongoDB database object"
    )


def _row(label: str, raw: _RawRun) -> dict[str, Any]:
    run = raw.run
    start, stop = _time(run.get("start_time")), _time(run.get("stop_time"))
    row: dict[str, Any] = {
        "run_id": raw.run_id,
        "source": label,
        "experiment": (run.get("experiment") or {}).get("name"),
        "status": run.get("status", "UNKNOWN"),
        "host": (run.get("host") or {}).get("hostname"),
        "start_time": start,
        "stop_time": stop,
        "heartbeat": _time(run.get("heartbeat")),
        "duration_s": (stop - start).total_seconds() if start and stop else math.nan,
        "fail_message": _last_line(run.get("fail_trace")),
        "load_error": "; ".join(raw.errors) or None,
    }
    row.update(_flatten(_decode(raw.config)))
    info = _decode(raw.info)
    if _is_mongo_metric_links(info.get(_MONGO_METRIC_LINKS)):
        del info[_MONGO_METRIC_LINKS]
    for key, value in _flatten(info).items():
        row[f"info.{key}" if key in row else key] = value
    return row


def _time(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        return pd.Timestamp(value)
    except (ValueError, TypeError):
        return None


def _last_line(fail_trace: list[str] | None) -> str | None:
    if not fail_trace:
        return None
    lines = "".join(fail_trace).strip().splitlines()
    return lines[-1] if lines else None


def _is_mongo_metric_links(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, dict) and set(v) == {"name", "id"} for v in value
    )


def _decode(obj: Any) -> Any:
    # Undo Sacred's jsonpickle encoding of numpy values and tuples; leave the rest as is.
    if isinstance(obj, dict):
        kind = obj.get("py/object", "")
        if isinstance(kind, str) and kind.startswith("numpy."):
            return np.asarray(_sacred_restore()(obj)).tolist()
        if set(obj) == {"py/tuple"}:
            return [_decode(v) for v in obj["py/tuple"]]
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _sacred_restore() -> Callable[[Any], Any]:
    # Sacred's own decoder for what its ``flatten`` wrote, imported only when needed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sacred 0.8.7 imports pkg_resources
        from sacred.serializer import restore
    return restore


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _filter(frame: pd.DataFrame, filters: dict[str, Any]) -> pd.DataFrame:
    for key, wanted in filters.items():
        col = key if key in frame.columns else key.replace("__", ".")
        if col not in frame.columns:
            if frame.empty:
                continue
            hint = get_close_matches(col, frame.columns.astype(str), n=3)
            raise ValueError(
                f"no run has a column {key!r} to filter on"
                + (f"; did you mean {' or '.join(map(repr, hint))}?" if hint else "")
            )
        frame = frame[frame[col].map(_matcher(wanted)).astype(bool)]
    return frame.reset_index(drop=True)


def _matcher(wanted: Any) -> Callable[[Any], bool]:
    if callable(wanted):
        return lambda v: bool(wanted(v)) if not _missing(v) else False
    if isinstance(wanted, (list, tuple, set, frozenset)):
        options = list(wanted)
        return lambda v: any(_equal(v, w) for w in options)
    return lambda v: _equal(v, wanted)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _equal(v: Any, w: Any) -> bool:
    if w is None or _missing(v):
        return w is None and _missing(v)
    if isinstance(v, bool) or isinstance(w, bool):
        return v is w or (isinstance(v, bool) and isinstance(w, bool) and v == w)
    if isinstance(v, (int, float)) and isinstance(w, (int, float)):
        return math.isclose(v, w, rel_tol=1e-9)
    return bool(v == w) if not isinstance(v, (list, np.ndarray)) else list(v) == list(w)


class _FileSource:
    """A ``FileStorageObserver`` folder, or a single run folder inside one."""

    _RUN_FILES = ("run.json", "config.json", "info.json", "metrics.json", "cout.txt")

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(
                f"runs folder {str(path)!r} does not exist; pass the folder given to "
                "FileStorageObserver (the -F argument of the experiment)"
            )
        if not path.is_dir():
            raise ValueError(
                f"{str(path)!r} is a file; pass the runs folder that holds one sub-folder per "
                "run, or a mongodb://host:port/dbname URL"
            )
        if not os.access(path, os.R_OK | os.X_OK):
            raise PermissionError(
                f"runs folder {str(path)!r} is not readable; check its permissions"
            )
        self.label = str(path)
        if (path / "run.json").exists():
            self._dirs = [path]
        else:
            self._dirs = sorted(
                (
                    p
                    for p in path.iterdir()
                    if p.is_dir()
                    and not p.name.startswith(("_", "."))
                    and (p.name.isdigit() or any((p / f).exists() for f in self._RUN_FILES))
                ),
                key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name),
            )

    @staticmethod
    def _run_id(d: Path) -> int | str:
        return int(d.name) if d.name.isdigit() else d.name

    def runs(self, with_meta: bool = False) -> Iterator[_RawRun]:  # run.json always holds meta
        for d in self._dirs:
            errors: list[str] = []
            run = self._read(d, "run.json", errors, required=True)
            config = self._read(d, "config.json", errors, required=True)
            # Sacred writes info.json only once the run has put something in _run.info.
            info = self._read(d, "info.json", errors, required=False)
            yield _RawRun(self._run_id(d), run, config, info, errors)

    @staticmethod
    def _read(d: Path, name: str, errors: list[str], *, required: bool) -> dict[str, Any]:
        path = d / name
        for attempt in range(_READ_ATTEMPTS):
            try:
                with open(path) as f:
                    data = json.load(f)
                break
            except FileNotFoundError:
                if required:
                    errors.append(f"{name} missing")
                return {}
            except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError
                # A live run rewrites run.json in place at every heartbeat: read it again first.
                if attempt == _READ_ATTEMPTS - 1:
                    errors.append(f"{name} unreadable ({err})")
                    return {}
                time.sleep(0.2)
        if not isinstance(data, dict):
            errors.append(f"{name} holds a {type(data).__name__}, not an object")
            return {}
        return data

    def metrics(self, run_ids: list[int | str]) -> Iterator[tuple[int | str, str, dict]]:
        wanted = set(run_ids)
        for d in self._dirs:
            run_id = self._run_id(d)
            if run_id not in wanted or not (d / "metrics.json").exists():
                continue
            errors: list[str] = []
            for name, series in self._read(d, "metrics.json", errors, required=False).items():
                yield run_id, name, series
            for err in errors:
                warnings.warn(f"{d}: {err}; its metrics are skipped", stacklevel=3)


class _MongoSource:
    """A database written by ``MongoObserver``: collections ``runs`` and ``metrics``."""

    # Large fields that no row needs: stdout, package versions, the environment, CLI options.
    _SKIP = {"captured_out": 0, "experiment.dependencies": 0, "host.ENV": 0, "meta": 0}

    def __init__(self, database: Any, label: str) -> None:
        self.db, self.label = database, label
        try:
            names = database.list_collection_names()
        except Exception as err:  # pymongo.errors.PyMongoError, without importing pymongo here
            # pymongo appends its timeouts and topology to the reason: keep the reason.
            reason = re.sub(r" \(configured timeouts.*?\)|, Timeout: .*", "", str(err))
            raise ConnectionError(
                f"cannot read MongoDB {label} ({reason}); check that the server is running "
                "and that host, port and credentials are right"
            ) from None
        if "runs" not in names:
            raise ValueError(
                f"MongoDB {label} has no 'runs' collection; name the database given to "
                f"MongoObserver(db_name=...) (collections here: {sorted(names)})"
            )

    @classmethod
    def from_url(cls, url: str) -> _MongoSource:
        import pymongo
        from pymongo.errors import InvalidURI
        from pymongo.uri_parser import parse_uri

        label = re.sub(r"//[^@/]*@", "//", url)  # never show a password
        try:
            db_name = parse_uri(url)["database"]
        except (InvalidURI, ValueError) as err:
            raise ValueError(
                f"bad MongoDB URL {label!r} ({err}); write mongodb://host:port/dbname"
            ) from None
        if not db_name:
            raise ValueError(
                f"MongoDB URL {label!r} names no database; write mongodb://host:port/dbname, "
                "e.g. mongodb://localhost:27017/sacred"
            )
        client = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000)
        return cls(client[db_name], label)

    def runs(self, with_meta: bool = False) -> Iterator[_RawRun]:
        skip = {k: v for k, v in self._SKIP.items() if not (with_meta and k == "meta")}
        for doc in self.db["runs"].find({}, skip).sort("_id", 1):
            run_id = doc.pop("_id")
            config, info = doc.pop("config", None), doc.pop("info", None)
            errors = [f"{k} missing" for k, v in (("config", config), ("info", info)) if v is None]
            if doc.get("status") in ("QUEUED", None) and "info" in errors:
                errors.remove("info missing")  # a queued run has no info yet
            yield _RawRun(run_id, doc, config or {}, info or {}, errors)

    def metrics(self, run_ids: list[int | str]) -> Iterator[tuple[int | str, str, dict]]:
        if not run_ids:
            return
        query = {"run_id": {"$in": list(run_ids)}}
        for doc in self.db["metrics"].find(query).sort([("run_id", 1), ("name", 1)]):
            yield doc["run_id"], doc["name"], doc
