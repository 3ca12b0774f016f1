"""results.py against what Sacred's file and Mongo observers really write."""

from __future__ import annotations

import json
import shutil

import mongomock
import numpy as np
import pandas as pd
import pymongo
import pytest

import results

RUN_TIMES = ["start_time", "stop_time", "heartbeat", "duration_s"]


def test_one_row_per_run_with_flat_config_and_info(sacred_runs):
    runs = results.load_runs(sacred_runs.dir)

    real = [*sacred_runs.completed, sacred_runs.failed]
    assert runs["run_id"].tolist() == [*real, *sorted(sacred_runs.damaged.values())]
    assert list(runs.columns[: len(results.RUN_COLUMNS)]) == list(results.RUN_COLUMNS)
    assert (runs["source"] == str(sacred_runs.dir)).all()
    assert (runs["experiment"][runs["run_id"].isin(real)] == "dln_lambdahat").all()
    done = runs[runs["run_id"].isin(sacred_runs.completed)]
    assert (done["status"] == "COMPLETED").all()
    assert (done["duration_s"] > 0).all()
    assert done["load_error"].isna().all()
    # config, flattened to dotted names
    assert done["sgld_config.epsilon"].tolist() == [1e-4, 1e-4, 1e-4, 3e-5, 1e-4]
    assert done["layer_widths"].iloc[1] == [5, 6, 3]
    assert done["true_param_config.method"].eq("low_rank").all()
    # info: numpy arrays decoded, nested dicts flattened, Mongo's metric links gone
    first = done.iloc[0]
    assert isinstance(first["lambdahat"], float) and len(first["lambdahat_per_chain"]) == 2
    assert first["lambdahat"] == pytest.approx(np.mean(first["lambdahat_per_chain"]))
    assert first["model_dim"] == 3 * 4 + 4 * 4 and first["true_rank"] == 1
    trained = runs.set_index("run_id").loc[sacred_runs.trained]
    assert np.isfinite(trained["trained_param_info.lambdahat"])
    assert trained["trained_param_info.final_training_loss"] > 0
    assert "metrics" not in runs.columns
    # info's seed (the estimator's) would shadow the config's: it is kept as info.seed
    assert (runs["seed"] == 0).all() and runs.loc[0, "info.seed"] != 0


def test_failed_run_keeps_the_last_line_of_its_traceback(sacred_runs):
    runs = results.load_runs(sacred_runs.dir, status="FAILED")

    assert runs["run_id"].tolist() == [sacred_runs.failed]
    assert runs["fail_message"].iloc[0] == (
        "ValueError: sgld_config.epsilon must be a number > 0 or 'auto', got -1e-06")
    assert runs.loc[runs.index[0], "sgld_config.epsilon"] == -1e-6
    assert np.isnan(runs["lambdahat"].iloc[0])


def test_running_interrupted_and_half_written_runs_load_and_are_marked(sacred_runs):
    runs = results.load_runs(sacred_runs.dir).set_index("run_id")
    damaged = {what: runs.loc[run_id] for what, run_id in sacred_runs.damaged.items()}

    assert damaged["running"]["status"] == "RUNNING"
    assert pd.isna(damaged["running"]["stop_time"]) and np.isnan(damaged["running"]["duration_s"])
    assert damaged["interrupted"]["status"] == "INTERRUPTED"
    truncated = damaged["info_truncated"]
    assert truncated["status"] == "COMPLETED"
    assert truncated["load_error"].startswith("info.json unreadable")
    assert np.isnan(truncated["lambdahat"])
    missing = damaged["run_json_missing"]
    assert missing["status"] == "UNKNOWN" and missing["load_error"] == "run.json missing"
    assert missing["sgld_config.epsilon"] == 1e-4  # what could be read still is
    assert missing["lambdahat"] == runs.loc[sacred_runs.completed[0], "lambdahat"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"status": "COMPLETED"}, 6),  # with the copy whose info.json is cut short
        ({"status": ["COMPLETED", "FAILED"], "load_error": None}, 6),
        ({"experiment": "dln_lambdahat", "status": "FAILED"}, 1),
        ({"experiment": "llc_curve"}, 0),
        ({"sgld_config.epsilon": 3e-5}, 1),
        ({"sgld_config__epsilon": 3e-5}, 1),
        ({"sgld_config.epsilon": 3.00000000001e-5}, 1),
        ({"layer_widths": [[4, 4], [5, 6, 3]], "status": "COMPLETED", "load_error": None}, 3),
        ({"model_dim": lambda d: d > 100}, 1),
        ({"do_training": True}, 1),
        ({"sgld_config.epsilon": 3e-3}, 0),
    ],
)
def test_filters_select_runs(sacred_runs, filters, expected):
    assert len(results.load_runs(sacred_runs.dir, **filters)) == expected


def test_a_filter_on_a_column_no_run_has_names_the_nearest(sacred_runs):
    with pytest.raises(ValueError, match=r"'sgld_config__epsilo'.*'sgld_config.epsilon'"):
        results.load_runs(sacred_runs.dir, sgld_config__epsilo=3e-5)


def test_mongo_holds_the_same_runs_as_the_files(sacred_runs):
    real = [*sacred_runs.completed, sacred_runs.failed]
    files = results.load_runs(sacred_runs.dir, run_id=real)
    mongo = results.load_runs(sacred_runs.mongo)

    assert (mongo["source"] == "mongodb:sacred").all()
    assert sorted(mongo.columns) == sorted(files.columns)
    same = [c for c in files.columns if c not in ["source", *RUN_TIMES]]
    pd.testing.assert_frame_equal(mongo[same], files[same], check_dtype=False)
    # Mongo keeps times to the millisecond
    assert (mongo["duration_s"] - files["duration_s"]).abs().max() < 2e-3


def test_mongo_url_is_parsed_and_its_password_never_shown(sacred_runs, monkeypatch):
    seen = []

    def client(url, **kwargs):
        seen.append(url)
        return sacred_runs.mongo.client

    monkeypatch.setattr(pymongo, "MongoClient", client)
    runs = results.load_runs("mongodb://me:secret@localhost:27017/sacred", status="COMPLETED")

    assert seen == ["mongodb://me:secret@localhost:27017/sacred"]
    assert runs["run_id"].tolist() == sacred_runs.completed
    assert (runs["source"] == "mongodb://localhost:27017/sacred").all()


def test_metrics_in_long_form_from_files_and_mongo(sacred_runs):
    files = results.load_metrics(sacred_runs.dir, run_id=sacred_runs.trained)
    mongo = results.load_metrics(sacred_runs.mongo, run_id=sacred_runs.trained)

    assert list(files.columns) == list(results.METRIC_COLUMNS)
    loss = files[files["metric"] == "train/loss"]
    assert loss["step"].tolist() == list(range(300))  # training_config.num_steps
    assert (loss["value"] > 0).all()
    assert (files["run_id"] == sacred_runs.trained).all()
    traces = {f"{at}sgld/loss/chain{c}" for at in ("", "trained/") for c in (0, 1)}
    assert set(files["metric"]) == {"train/loss", *traces}
    key = ["metric", "step"]
    pd.testing.assert_frame_equal(
        mongo.sort_values(key)[[*key, "value"]].reset_index(drop=True),
        files.sort_values(key)[[*key, "value"]].reset_index(drop=True),
    )


def test_metrics_follow_the_run_filters(sacred_runs):
    metrics = results.load_metrics(sacred_runs.dir, status="COMPLETED", load_error=None)

    assert set(metrics["run_id"]) == set(sacred_runs.completed)


def test_an_unreadable_metrics_file_is_skipped_with_a_warning(sacred_runs, tmp_path):
    for run_id in sacred_runs.completed[:2]:
        shutil.copytree(sacred_runs.dir / str(run_id), tmp_path / str(run_id))
    (tmp_path / str(sacred_runs.completed[0]) / "metrics.json").write_text('{"llc/mean": {"ste')

    with pytest.warns(UserWarning, match="metrics.json unreadable"):
        metrics = results.load_metrics(tmp_path)
    assert set(metrics["run_id"]) == {sacred_runs.completed[1]}


def test_one_run_folder_and_several_sources(sacred_runs):
    one = results.load_runs(sacred_runs.dir / str(sacred_runs.trained))
    both = results.load_runs(sacred_runs.dir, sacred_runs.mongo, status="FAILED")

    assert one["run_id"].tolist() == [sacred_runs.trained]
    assert both["source"].tolist() == [str(sacred_runs.dir), "mongodb:sacred"]


def test_an_empty_folder_gives_an_empty_frame_and_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="no Sacred runs in") as warned:
        runs = results.load_runs(tmp_path)
        filtered = results.load_runs(tmp_path, status="COMPLETED")
        metrics = results.load_metrics(tmp_path)

    assert len(warned) == 3 and all(w.filename == __file__ for w in warned)
    assert runs.empty and list(runs.columns) == list(results.RUN_COLUMNS)
    assert filtered.empty and metrics.empty


def test_a_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="outputs/dnl' does not exist.*FileStorageObserver"):
        results.load_runs(tmp_path / "outputs" / "dnl")


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        ("mongodb://localhost:27017", ValueError, "names no database.*mongodb://host:port/dbname"),
        ("mongodb://", ValueError, "bad MongoDB URL"),
        (42, TypeError, "pass a runs folder"),
    ],
)
def test_bad_sources_are_one_clear_error(source, error, match):
    with pytest.raises(error, match=match):
        results.load_runs(source)


def test_a_file_is_not_a_runs_folder(sacred_runs):
    with pytest.raises(ValueError, match="is a file; pass the runs folder"):
        results.load_runs(sacred_runs.dir / str(sacred_runs.trained) / "run.json")


def test_no_source_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        results.load_runs()


def test_a_database_without_runs_names_the_right_one():
    db = mongomock.MongoClient()["not_sacred"]
    db["other"].insert_one({"x": 1})
    with pytest.raises(ValueError, match=r"no 'runs' collection.*db_name.*\['other'\]"):
        results.load_runs(db)


@pytest.mark.slow
def test_an_unreachable_server_is_one_clear_error():
    # nothing listens on port 1: pymongo gives up after results' 3 s server-selection timeout
    with pytest.raises(ConnectionError, match="cannot read MongoDB mongodb://localhost:1/sacred"):
        results.load_runs("mongodb://localhost:1/sacred")


def test_numpy_values_written_by_sacred_decode_to_python(tmp_path):
    d = tmp_path / "1"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"status": "COMPLETED", "experiment": {"name": "x"}}))
    (d / "config.json").write_text(json.dumps({"widths": {"py/tuple": [2, 3]}}))
    (d / "info.json").write_text(json.dumps({
        "a": {"py/object": "numpy.float32", "dtype": "float32", "value": 0.5},
        "b": {"py/object": "numpy.ndarray", "dtype": "int64", "values": [[1, 2], [3, 4]]},
    }))

    row = results.load_runs(tmp_path).iloc[0]
    assert row["widths"] == [2, 3] and row["a"] == 0.5 and row["b"] == [[1, 2], [3, 4]]
