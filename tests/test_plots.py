"""plots.py: every figure from real runs where the experiment exists, else from made-up frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

import plots
import results


def _texts(fig: Figure) -> str:
    # every label, title and legend entry of a figure, joined
    parts = []
    for ax in fig.axes:
        parts += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
        if ax.get_legend():
            parts += [t.get_text() for t in ax.get_legend().get_texts()]
    for legend in fig.legends:
        parts += [t.get_text() for t in legend.get_texts()]
    return " | ".join(parts)


def _points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


def test_llc_vs_true_from_real_runs(sacred_runs):
    runs = results.load_runs(sacred_runs.dir, status="COMPLETED")  # one has no readable λ̂
    fig = plots.llc_vs_true(runs)

    ax, hist, colorbar = fig.axes
    drawn = (runs["lambdahat"] > 0).sum()
    assert drawn == len(sacred_runs.completed)
    assert _points(ax) == drawn
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_title() == f"{drawn} runs (1 without a finite λ̂ left out)"
    assert sum(p.get_height() for p in hist.patches) == drawn
    assert colorbar.get_ylabel() == "number of parameters $d$"
    assert r"$\hat\lambda$ = $\lambda$" in _texts(fig)
    assert "relative error" in hist.get_xlabel()


def test_llc_vs_true_at_the_trained_parameter(sacred_runs):
    runs = results.load_runs(sacred_runs.dir, status="COMPLETED", do_training=True)
    fig = plots.llc_vs_true(runs, estimate="trained_param_info.lambdahat")

    assert _points(fig.axes[0]) == 1
    assert fig.axes[0].get_ylabel().endswith("at the trained parameter")


def test_llc_vs_true_relative_error_is_what_the_runs_say():
    runs = pd.DataFrame({"true_lambda": [10.0, 20.0], "lambdahat": [11.0, 16.0]})  # +10%, −20%
    fig = plots.llc_vs_true(runs)

    assert fig.axes[1].get_title() == "median \N{MINUS SIGN}5.0%, mean |error| 15.0%"
    assert len(fig.axes) == 2  # no colour bar without model_dim


def test_llc_over_training_from_real_metrics(sacred_runs):
    metrics = results.load_metrics(sacred_runs.curve_dir)
    curve = plots.training_curve(metrics)
    fig = plots.llc_over_training(curve, window=3)

    assert {"step", "lambdahat", "train_loss"} <= set(curve.columns)
    ax, twin = fig.axes
    assert twin.get_yscale() == "log" and ax.get_yscale() == "linear"
    loss_line = twin.get_lines()[0]
    assert len(loss_line.get_xdata()) == curve["train_loss"].notna().sum()
    assert len(ax.get_lines()[-1].get_xdata()) == curve["lambdahat"].notna().sum()
    assert "running mean of 3" in _texts(fig)


def test_one_run_figures_refuse_a_mix_of_runs(sacred_runs):
    metrics = results.load_metrics(sacred_runs.dir, status="COMPLETED")
    with pytest.raises(ValueError, match="one run; select one"):
        plots.training_curve(metrics)


def test_training_curve_names_the_metrics_it_found(sacred_runs):
    metrics = results.load_metrics(sacred_runs.dir, run_id=sacred_runs.completed[0])
    with pytest.raises(ValueError, match=r"no metric among .*'sgld/loss/chain0'"):
        plots.training_curve(metrics)


@pytest.mark.parametrize(
    ("figure", "frame", "columns"),
    [
        (plots.llc_vs_true, pd.DataFrame({"lambdahat": [1.0]}), "true_lambda"),
        (plots.llc_over_training, pd.DataFrame({"step": [1]}), "lambdahat"),
        (plots.rescaling_invariance, pd.DataFrame({"lambdahat": [1.0]}), "scale"),
        (plots.mala_vs_sgld, pd.DataFrame({"n": [1]}), "sampler"),
        (plots.saddle_to_saddle, pd.DataFrame({"step": [1]}), "train_loss"),
        (plots.llc_vs_hessian_rank, pd.DataFrame({"lambdahat": [1.0]}), "hessian_rank"),
    ],
)
def test_a_missing_column_is_named(figure, frame, columns):
    with pytest.raises(ValueError, match=f"needs columns .*'{columns}'"):
        figure(frame)


def test_rescaling_invariance():
    alpha = np.logspace(-1, 1, 5)
    runs = pd.DataFrame({"scale": np.tile(alpha, 2), "lambdahat": np.r_[[5.1] * 5, [8.2] * 5],
                         "lambdahat_std": 0.2, "true_lambda": np.repeat([5.0, 8.0], 5),
                         "label": np.repeat(["small", "large"], 5)})
    fig = plots.rescaling_invariance(runs)

    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_ls() == "--") == [5, 8]
    assert {"small", "large", r"true $\lambda$"} <= set(_texts(fig).split(" | "))


def test_mala_vs_sgld_averages_seeds():
    runs = pd.DataFrame({"n": [100, 100, 1000, 1000] * 2, "sampler": ["sgld"] * 4 + ["mala"] * 4,
                         "lambdahat": [1, 3, 2, 2, 2, 2, 2, 2.0],
                         "wall_time_s": [1, 1, 10, 10, 5, 5, 50, 50.0]})
    fig = plots.mala_vs_sgld(runs)

    ax_llc, ax_time = fig.axes
    sgld = ax_llc.get_lines()[1]  # series are drawn in sampler order: mala, then sgld
    assert list(sgld.get_ydata()) == [2, 2]
    assert ax_time.get_yscale() == "log" and "wall time [s]" == ax_time.get_ylabel()
    assert {"MALA", "SGLD"} <= set(_texts(fig).split(" | "))


def test_saddle_to_saddle():
    steps = np.arange(1, 1001)
    curve = pd.DataFrame({"step": steps, "train_loss": np.where(steps < 300, 1.0, 0.1),
                          "lambdahat": np.where(steps % 100 == 0, 2.0, np.nan),
                          "true_lambda": np.where(steps < 300, 1.0, 2.0)})
    fig = plots.saddle_to_saddle(curve)

    ax_loss, ax_llc = fig.axes
    assert ax_loss.get_yscale() == "log" and ax_llc.get_xscale() == "log"
    assert r"$\lambda$ of the current rank" in _texts(fig)


def test_llc_vs_hessian_rank():
    runs = pd.DataFrame({"hessian_rank": [2, 4, 6], "lambdahat": [1.1, 1.9, 3.0]})
    fig = plots.llc_vs_hessian_rank(runs)

    (ax,) = fig.axes
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == list(line.get_ydata()) == pytest.approx([1 / 1.5, 4.5])  # λ̂ = rank/2
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert "rank(Hess)" in ax.get_xlabel()


def test_mask_overlap_vs_step():
    rows = [(f"overlap/{kind}/k{k}", t, v) for k in (5, 20) for t in (0, 100)
            for kind, v in (("exact", 0.1 * k / 5), ("sketch", 0.09 * k / 5), ("random", k / 1000))]
    metrics = pd.DataFrame(rows, columns=["metric", "step", "value"]).assign(run_id=1, source="x")
    fig = plots.mask_overlap_vs_step(metrics)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 6 and ax.get_yscale() == "log"
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([0.1, 0.1])  # k = 5, exact
    # the distributed sketch beyond d = 20,000 logs no exact overlap: sketched and random lines only
    (ax,) = plots.mask_overlap_vs_step(metrics[~metrics.metric.str.contains("exact")]).axes
    assert len(ax.get_lines()) == 4 and list(ax.get_lines()[0].get_ydata()) == pytest.approx([0.09, 0.09])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["k = 5", "k = 20", "sketched", "random, k/d"]
    with pytest.raises(ValueError, match="no metric overlap/exact/k<k> or overlap/sketch/k<k>"):
        plots.mask_overlap_vs_step(metrics[metrics.metric.str.contains("random")])


@pytest.mark.parametrize("figure", ["llc_vs_true", "llc_over_training"])
def test_command_line_writes_png_and_pdf(sacred_runs, tmp_path, figure, capsys):
    argv = [figure, "--out", str(tmp_path / "figures"), "--runs"]
    if figure == "llc_over_training":
        argv += [str(sacred_runs.curve_dir), "--run-id", str(sacred_runs.curve_run)]
    else:
        argv += [str(sacred_runs.dir)]
    paths = plots.main(argv)

    assert [p.name for p in paths] == [f"{figure}.png", f"{figure}.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert capsys.readouterr().out.split() == [str(p) for p in paths]


def test_command_line_filters_and_errors(sacred_runs, tmp_path):
    out = tmp_path / "figures"
    plots.main(["llc_vs_true", "--runs", str(sacred_runs.dir), "--out", str(out),
                "--where", "sgld_config.epsilon=3e-5"])
    assert (out / "llc_vs_true.png").exists()
    with pytest.raises(SystemExit, match="llc_vs_true: no run has a finite positive"):
        plots.main(["llc_vs_true", "--runs", str(sacred_runs.dir), "--out", str(out),
                    "--where", "sgld_config.epsilon=3"])
    with pytest.raises(SystemExit, match="does not exist"):
        plots.main(["llc_vs_true", "--runs", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match=r"llc_over_training draws one run; pass --run-id, one of \[1, 2"):
        plots.main(["llc_over_training", "--runs", str(sacred_runs.dir), "--out", str(out)])


def test_llc_by_block_over_training():
    rows = [(f"llc/{g}/{stat}", t, v * (t + 1) if stat == "mean" else 0.1) for g, v in (("fc1", 2.0), ("fc2", 1.0))
            for t in (0, 10, 20) for stat in ("mean", "std")]
    rows += [("llc/mean", t, 2.5 * (t + 1), ) for t in (0, 10, 20)] + [("train/loss", 0, 1.0)]
    metrics = pd.DataFrame(rows, columns=["metric", "step", "value"]).assign(run_id=1, source="x")
    fig = plots.llc_by_block_over_training(metrics)
    (ax,) = fig.axes
    assert "fc1" in _texts(fig) and "whole network" in _texts(fig) and "sum of the groups" in _texts(fig)
    total = [line for line in ax.get_lines() if line.get_linestyle() == ":"][0]
    assert list(total.get_ydata()) == pytest.approx([3.0, 33.0, 63.0])
    with pytest.raises(ValueError, match="no metric llc/<group>/mean"):
        plots.llc_by_block_over_training(metrics[~metrics.metric.str.contains("fc")])
