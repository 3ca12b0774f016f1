r"""The paper's figures, drawn from DataFrames of runs.

Each figure is one function that takes a DataFrame (from ``results.load_runs`` or
``results.load_metrics``, or built by hand) and returns a ``matplotlib.figure.Figure``; the
docstring lists the columns it reads. Figures are built without ``pyplot``, so a notebook shows a
figure once, where it is returned, and nothing here changes global matplotlib state.

=========================  =============================================  ======================
figure                     shows                                          data
=========================  =============================================  ======================
``llc_vs_true``            λ̂ against the true λ of DLNs, and the          ``load_runs``
                           relative error (Furman & Lau 2024, Fig. 1)
``llc_over_training``      λ̂ and the training loss over training          ``load_metrics``
``rescaling_invariance``   λ̂ against the DLN rescaling factor α           ``load_runs``
``mala_vs_sgld``           λ̂ and wall time of MALA and SGLD against n     ``load_runs``
``saddle_to_saddle``       loss plateaus and λ̂ steps of a DLN trained     ``load_metrics``
                           from a small initialisation
``llc_vs_hessian_rank``    λ̂ against rank(Hess)/2, log-log                ``load_runs`` or
                                                                          ``load_metrics``
``mask_overlap_vs_step``   top-k eigenspace vs top-k mask overlap over    ``load_metrics``
                           training, per k
``llc_curves_by_           λ̂ and test loss over training, one colour per   ``training_curves``
temperature``              SGD temperature η/B, seeds averaged
``llc_by_block_over_       restricted λ̂ of each parameter group (layer,   ``load_metrics``
training``                 block) over training, beside the whole network
=========================  =============================================  ======================

From the command line, writing ``OUT/FIGURE.png`` and ``OUT/FIGURE.pdf``::

    python plots.py llc_vs_true --runs outputs/dln --out figures/
    python plots.py llc_over_training --runs outputs/dln_training --run-id 3 --out figures/
    python plots.py llc_vs_true --runs mongodb://localhost:27017/sacred --where model=dln
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

import results

__all__ = [
    "FIGURES",
    "SADDLE_METRICS",
    "TRAINING_METRICS",
    "llc_vs_true",
    "llc_over_training",
    "rescaling_invariance",
    "mala_vs_sgld",
    "saddle_to_saddle",
    "llc_vs_hessian_rank",
    "llc_curves_by_temperature",
    "mask_overlap_vs_step",
    "llc_by_block_over_training",
    "training_curve",
    "training_curves",
    "main",
]

TRAINING_METRICS: dict[str, str] = {"llc/mean": "lambdahat", "train/loss": "train_loss"}
"""Sacred metric name → column of the frame that ``training_curve`` builds."""

SADDLE_METRICS: dict[str, str] = {
    **TRAINING_METRICS, "llc/std": "lambdahat_std", "test/loss": "test_loss", "true/lambda": "true_lambda",
    "rank/product": "rank",
}
"""The metrics of ``expt_dln_saddle_dynamics.py`` that ``saddle_to_saddle`` draws, as ``training_curve`` names."""

# One look for every figure: applied while a figure is drawn, never globally.
_STYLE = {
    "figure.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.markersize": 5,
}
_LAMBDAHAT = r"$\hat\lambda$"
_LAMBDA = r"$\lambda$"


def llc_vs_true(runs: pd.DataFrame, *, estimate: str = "lambdahat") -> Figure:
    r"""λ̂ against the true λ of deep linear networks, and the relative error (paper Fig. 1).

    Left: λ̂ against λ on log-log axes with the line λ̂ = λ, error bars of one standard deviation
    over chains, points coloured by parameter count on a log scale. Right: the distribution of
    the relative error (λ̂ − λ)/λ. Runs without a finite positive λ̂ (failed, diverged) are left
    out and counted in the title of the left panel.

    Args:
        runs: One row per run with columns ``true_lambda`` (λ) and ``estimate`` (λ̂); optional
            ``<estimate>_std`` (error bars) and ``model_dim`` (colour).
        estimate: The column of λ̂: ``"lambdahat"`` at the true parameter w*, or
            ``"trained_param_info.lambdahat"`` at the parameter that ``expt_dln.py`` trained.

    Returns:
        The figure.

    Raises:
        ValueError: If a column is missing or no run has a finite positive λ̂ and λ.
    """
    _require(runs, ["true_lambda", estimate], "llc_vs_true")
    ok = _finite_positive(runs[estimate]) & _finite_positive(runs["true_lambda"])
    data = runs[ok]
    if data.empty:
        raise ValueError(f"llc_vs_true: no run has a finite positive {estimate} and true_lambda")
    lam, lhat = data["true_lambda"].to_numpy(float), data[estimate].to_numpy(float)
    rel = (lhat - lam) / lam

    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(10, 4.4), layout="constrained")
        ax, hist = fig.subplots(1, 2, width_ratios=[1.25, 1])

        lo, hi = min(lam.min(), lhat.min()) / 1.6, max(lam.max(), lhat.max()) * 1.6
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label=rf"{_LAMBDAHAT} = {_LAMBDA}", zorder=1)
        if f"{estimate}_std" in data:
            std = data[f"{estimate}_std"].to_numpy(float)
            # on a log axis a bar cannot reach zero: clip the lower bar just above it
            yerr = np.vstack([np.minimum(std, 0.95 * lhat), std])
            ax.errorbar(lam, lhat, yerr=yerr, fmt="none", ecolor="0.55", elinewidth=1,
                        capsize=2, zorder=2)
        scatter_kw = dict(s=36, edgecolor="k", linewidth=0.5, zorder=3)
        if "model_dim" in data and data["model_dim"].notna().all():
            dim = data["model_dim"].to_numpy(float)
            vmin, vmax = dim.min(), dim.max()
            norm = LogNorm(vmin / 1.5, vmax * 1.5) if vmin == vmax else LogNorm(vmin, vmax)
            pts = ax.scatter(lam, lhat, c=dim, cmap="viridis", norm=norm, **scatter_kw)
            bar = fig.colorbar(pts, ax=ax, label="number of parameters $d$", pad=0.02)
            _plain_log_ticks(bar.ax.yaxis, norm.vmin, norm.vmax)
        else:
            ax.scatter(lam, lhat, color="C0", **scatter_kw)
        at = "" if estimate == "lambdahat" else " at the trained parameter"
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), aspect="equal",
               xlabel=rf"true learning coefficient {_LAMBDA}",
               ylabel=rf"estimated LLC {_LAMBDAHAT}{at}")
        for axis in (ax.xaxis, ax.yaxis):
            _plain_log_ticks(axis, lo, hi)
        left_out = len(runs) - len(data)
        ax.set_title(f"{len(data)} run{'s' * (len(data) != 1)}"
                     + (f" ({left_out} without a finite λ̂ left out)" if left_out else ""))
        ax.legend(handles=[
            Line2D([], [], color="k", ls="--", lw=1, label=rf"{_LAMBDAHAT} = {_LAMBDA}"),
            Line2D([], [], color="0.55", marker="o", mfc="w", mec="k", lw=1,
                   label=r"run, $\pm 1$ std over chains"),
        ], loc="upper left")

        bins = np.histogram_bin_edges(rel, bins="auto") if len(rel) > 1 else 10
        if np.size(bins) < 11:  # "auto" lumps a small sweep into a few wide bars
            bins = 10
        hist.hist(rel, bins=bins, color="C0", alpha=0.8, edgecolor="white")
        med = float(np.median(rel))
        hist.axvline(0, color="k", ls="--", lw=1, label="exact")
        hist.axvline(med, color="C3", lw=1.5, label="median")
        hist.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        hist.set(xlabel=rf"relative error ({_LAMBDAHAT} $-$ {_LAMBDA}) / {_LAMBDA}",
                 ylabel="runs",
                 title=_minus(f"median {med:+.1%}, mean |error| {np.mean(np.abs(rel)):.1%}"))
        hist.yaxis.get_major_locator().set_params(integer=True)
        hist.legend(loc="best")
    return fig


def llc_over_training(curve: pd.DataFrame, *, window: int = 5) -> Figure:
    r"""λ̂ over training with the training loss on a twin log axis.

    Args:
        curve: One training run, one row per step, with columns ``step``, ``lambdahat`` (λ̂,
            NaN at steps where it was not estimated) and ``train_loss`` (NaN where not logged);
            optional ``lambdahat_std`` (error bars) and ``test_loss`` (a dashed line beside the
            training loss). ``training_curve`` builds it from ``load_metrics``.
        window: Number of λ̂ estimates in the centred running mean.

    Returns:
        The figure.

    Raises:
        ValueError: If a column is missing, the frame mixes runs, or it has no λ̂.
    """
    _require(curve, ["step", "lambdahat", "train_loss"], "llc_over_training")
    _one_run(curve, "llc_over_training")
    llc = curve.dropna(subset=["lambdahat"]).sort_values("step")
    loss = curve.dropna(subset=["train_loss"]).sort_values("step")
    if llc.empty:
        raise ValueError("llc_over_training: no step has a lambdahat")

    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(7, 4.2), layout="constrained")
        ax = fig.subplots()
        twin = ax.twinx()
        twin.grid(False)
        twin.spines["right"].set_visible(True)
        handles = _draw_llc(ax, llc, window)
        handles += twin.plot(loss["step"], loss["train_loss"], color="0.4", lw=1.2,
                             label="training loss $L_n$")
        if "test_loss" in curve and curve["test_loss"].notna().any():
            test = curve.dropna(subset=["test_loss"]).sort_values("step")
            handles += twin.plot(test["step"], test["test_loss"], color="C3", lw=1.2, ls="--", label="test loss")
        twin.set(yscale="log", ylabel="loss $L_n(w_t)$" if "test_loss" in curve else "training loss $L_n(w_t)$")
        ax.set(xlabel="training step $t$", ylabel=rf"estimated LLC {_LAMBDAHAT}$(w_t)$")
        ax.set_zorder(twin.get_zorder() + 1)  # λ̂ points above the loss line
        ax.patch.set_visible(False)
        fig.legend(handles=handles, loc="outside upper center", ncols=len(handles))
    return fig


def rescaling_invariance(runs: pd.DataFrame) -> Figure:
    r"""λ̂ of a DLN against the factor α of the rescaling W₁ → αW₁, W₂ → W₂/α.

    The function computed by the network, and so its λ, does not change under the rescaling; a
    good estimator's λ̂ does not either.

    Args:
        runs: One row per run with columns ``scale`` (α) and ``lambdahat`` (λ̂); optional
            ``lambdahat_std`` (error bars), ``true_lambda`` (a horizontal line per value) and
            ``label`` (one series per value, e.g. the network).

    Returns:
        The figure.

    Raises:
        ValueError: If a column is missing.
    """
    _require(runs, ["scale", "lambdahat"], "rescaling_invariance")
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(6, 4.2), layout="constrained")
        ax = fig.subplots()
        for i, (label, group) in enumerate(_series(runs)):
            group = group.sort_values("scale")
            ax.errorbar(group["scale"], group["lambdahat"], yerr=_std(group), marker="o",
                        capsize=2, color=f"C{i}", label=label)
            for lam in _unique(group, "true_lambda"):
                ax.axhline(lam, color=f"C{i}", ls="--", lw=1)
        _legend_true_lambda(ax, runs)
        ax.set(xscale="log", xlabel=r"rescaling factor $\alpha$",
               ylabel=rf"estimated LLC {_LAMBDAHAT}", ylim=(0, None),
               title=r"$\hat\lambda$ under $W_1 \to \alpha W_1,\ W_2 \to W_2/\alpha$")
    return fig


def mala_vs_sgld(runs: pd.DataFrame) -> Figure:
    r"""λ̂ and wall time of the MALA and SGLD estimators against the training-set size n.

    Runs with the same sampler and n (different seeds) are averaged; the error bars are the
    standard deviation over those runs, or ``lambdahat_std`` where there is one run.

    Args:
        runs: One row per run with columns ``n``, ``sampler`` (e.g. ``"sgld"``, ``"mala"``),
            ``lambdahat`` and ``wall_time_s``; optional ``lambdahat_std`` and ``true_lambda``.

    Returns:
        The figure.

    Raises:
        ValueError: If a column is missing.
    """
    _require(runs, ["n", "sampler", "lambdahat", "wall_time_s"], "mala_vs_sgld")
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(10, 4.2), layout="constrained")
        ax_llc, ax_time = fig.subplots(1, 2)
        for i, (sampler, group) in enumerate(runs.groupby("sampler", sort=True)):
            stats = _mean_std(group, "n", "lambdahat")
            ax_llc.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o",
                            capsize=2, color=f"C{i}", label=str(sampler).upper())
            t = _mean_std(group, "n", "wall_time_s")
            ax_time.errorbar(t.index, t["mean"], yerr=t["std"], marker="o", capsize=2,
                             color=f"C{i}", label=str(sampler).upper())
        for lam in _unique(runs, "true_lambda"):
            ax_llc.axhline(lam, color="k", ls="--", lw=1)
        _legend_true_lambda(ax_llc, runs)
        ax_llc.set(xscale="log", xlabel="training-set size $n$",
                   ylabel=rf"estimated LLC {_LAMBDAHAT}", title="estimate")
        ax_time.set(xscale="log", yscale="log", xlabel="training-set size $n$",
                    ylabel="wall time [s]", title="cost")
        ax_time.legend()
    return fig


def saddle_to_saddle(curve: pd.DataFrame) -> Figure:
    r"""Saddle-to-saddle training of a DLN: loss plateaus above, λ̂ steps below.

    From a small initialisation a DLN learns its target one singular value at a time; the loss
    drops between plateaus and λ̂ jumps to the λ of a matrix of the next rank.

    Args:
        curve: One training run, one row per step, with columns ``step``, ``train_loss`` and
            ``lambdahat`` (NaN where not logged); optional ``lambdahat_std`` and
            ``true_lambda`` (λ of the rank the network has reached, drawn as a staircase).

    Returns:
        The figure.

    Raises:
        ValueError: If a column is missing, the frame mixes runs, or it has no λ̂.
    """
    _require(curve, ["step", "lambdahat", "train_loss"], "saddle_to_saddle")
    _one_run(curve, "saddle_to_saddle")
    curve = curve[curve["step"] > 0]  # a log step axis has no 0
    llc = curve.dropna(subset=["lambdahat"]).sort_values("step")
    loss = curve.dropna(subset=["train_loss"]).sort_values("step")
    if llc.empty:
        raise ValueError("saddle_to_saddle: no step > 0 has a lambdahat")
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(7, 5.5), layout="constrained")
        ax_loss, ax_llc = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.2])
        ax_loss.plot(loss["step"], loss["train_loss"], color="0.3", lw=1.2)
        ax_loss.set(xscale="log", yscale="log", ylabel="training loss $L_n(w_t)$")
        handles = _draw_llc(ax_llc, llc, window=1, mean=False)
        if "true_lambda" in curve and curve["true_lambda"].notna().any():
            steps = curve.dropna(subset=["true_lambda"]).sort_values("step")
            handles += ax_llc.step(steps["step"], steps["true_lambda"], where="post", color="k",
                                   ls="--", lw=1, label=rf"{_LAMBDA} of the current rank")
        ax_llc.set(xscale="log", xlabel="training step $t$",
                   ylabel=rf"estimated LLC {_LAMBDAHAT}$(w_t)$")
        ax_llc.legend(handles=handles, loc="upper left")
    return fig


def llc_vs_hessian_rank(runs: pd.DataFrame) -> Figure:
    r"""λ̂ against rank(Hess)/2, the λ of a minimally singular model, log-log with the line y = x.

    Where the loss is locally a sum of r squares, λ = r/2 with r the rank of the Hessian at w*;
    points on the line λ̂ = rank(Hess)/2 agree with that (``expt_min_singular.py`` logs both per r).

    Args:
        runs: One row per point with columns ``hessian_rank`` (r) and ``lambdahat`` (λ̂); optional
            ``lambdahat_std`` (error bars) and ``label`` (one series per value).

    Returns:
        The figure.

    Raises:
        ValueError: If a column is missing or no row has both values positive.
    """
    _require(runs, ["hessian_rank", "lambdahat"], "llc_vs_hessian_rank")
    data = runs[_finite_positive(runs["hessian_rank"]) & _finite_positive(runs["lambdahat"])]
    if data.empty:
        raise ValueError("llc_vs_hessian_rank: no run has both hessian_rank and lambdahat > 0")
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(5.2, 4.8), layout="constrained")
        ax = fig.subplots()
        half = data["hessian_rank"].to_numpy(float) / 2
        lo = min(half.min(), data["lambdahat"].min()) / 1.5
        hi = max(half.max(), data["lambdahat"].max()) * 1.5
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label=rf"{_LAMBDAHAT} = rank(Hess)/2")
        for i, (label, group) in enumerate(_series(data)):
            ax.errorbar(group["hessian_rank"] / 2, group["lambdahat"], yerr=_std(group),
                        fmt="o", capsize=2, color=f"C{i}", label=label)
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), aspect="equal",
               xlabel=r"rank(Hess)$\,/\,2$ at $w^*$", ylabel=rf"estimated LLC {_LAMBDAHAT}")
        ax.legend(loc="upper left")
    return fig


def mask_overlap_vs_step(metrics: pd.DataFrame) -> Figure:
    r"""Overlap ‖M Q‖²_F / k of the top-k Hessian eigenspace with the top-k magnitude mask, over training.

    One colour per k: the exact eigenspace (solid), the sketched one (dashed) and a random
    subspace's expectation k/d (dotted), as ``expt_hessian_masks.py`` and the solve stage of
    ``expt_hessian_sketch.py`` log them (the latter without the exact one beyond d = 20,000).

    Args:
        metrics: One run's ``results.load_metrics`` rows with metrics ``overlap/exact/k<k>`` or
            ``overlap/sketch/k<k>`` or both, and optionally ``overlap/random/k<k>``.

    Returns:
        The figure.

    Raises:
        ValueError: If the metrics mix runs or hold neither ``overlap/exact/k<k>`` nor ``overlap/sketch/k<k>``.
    """
    _require(metrics, ["metric", "step", "value"], "mask_overlap_vs_step")
    _one_run(metrics, "mask_overlap_vs_step")
    parts = metrics["metric"].str.extract(r"^overlap/(exact|sketch|random)/k(\d+)$")
    data = metrics.assign(kind=parts[0], k=pd.to_numeric(parts[1])).dropna(subset=["kind"])
    if not data["kind"].isin(["exact", "sketch"]).any():
        raise ValueError("mask_overlap_vs_step: no metric overlap/exact/k<k> or overlap/sketch/k<k> in these metrics")
    styles = {"exact": ("-", "o", "exact"), "sketch": ("--", "x", "sketched"), "random": (":", None, "random, k/d")}
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(6.4, 4.4), layout="constrained")
        ax = fig.subplots()
        for i, (k, group) in enumerate(data.groupby("k", sort=True)):
            labelled = False
            for kind, (ls, marker, _) in styles.items():
                g = group[group["kind"] == kind].sort_values("step")
                if not g.empty:
                    ax.plot(g["step"], g["value"], ls=ls, marker=marker, color=f"C{i}",
                            label=None if labelled else f"k = {int(k)}")
                    labelled = True
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="0.3", ls=ls, marker=m, label=text) for kind, (ls, m, text) in styles.items()
                    if (data["kind"] == kind).any()]
        ax.set(yscale="log", xlabel="training step $t$",
               ylabel=r"overlap $\Vert M Q\Vert_F^2 / k$ (top-$k$ mask, top-$k$ eigenspace)")
        ax.legend(handles=handles, loc="best", ncols=2)
    return fig


def llc_by_block_over_training(metrics: pd.DataFrame) -> Figure:
    r"""Restricted λ̂ of each parameter group over training, beside the whole network's λ̂.

    One colour per group (``expt_llc_curve.py``'s ``llc_restrict``), with the chains' std as error
    bars; the whole network's λ̂ in black and the sum of the groups' λ̂ dotted (a group's λ̂ holds
    the others at w_t, so the sum need not equal the whole).

    Args:
        metrics: One run's ``results.load_metrics`` rows with metrics ``llc/<group>/mean`` (and
            optionally ``llc/<group>/std``, ``llc/mean``, ``llc/std``).

    Returns:
        The figure.

    Raises:
        ValueError: If the metrics mix runs or hold no ``llc/<group>/mean``.
    """
    _require(metrics, ["metric", "step", "value"], "llc_by_block_over_training")
    _one_run(metrics, "llc_by_block_over_training")
    parts = metrics["metric"].str.extract(r"^llc/(?:(.+)/)?(mean|std)$")
    data = metrics.assign(group=parts[0].fillna(""), stat=parts[1]).dropna(subset=["stat"])
    wide = data.pivot_table(index=["group", "step"], columns="stat", values="value", aggfunc="mean").reset_index()
    groups = [g for g in dict.fromkeys(data.loc[data["group"] != "", "group"])]
    if not groups:
        raise ValueError("llc_by_block_over_training: no metric llc/<group>/mean in these metrics (set llc_restrict)")
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(7, 4.4), layout="constrained")
        ax = fig.subplots()
        for i, group in enumerate(groups):
            g = wide[wide["group"] == group].sort_values("step")
            ax.errorbar(g["step"], g["mean"], yerr=g["std"] if "std" in g else None, color=f"C{i}", marker="o",
                        ms=3, lw=1.2, capsize=2, label=group)
        total = wide[wide["group"] != ""].groupby("step")["mean"].sum(min_count=len(groups)).dropna()
        ax.plot(total.index, total.values, color="0.5", ls=":", lw=1.4, label="sum of the groups")
        whole = wide[wide["group"] == ""].sort_values("step")
        if not whole.empty:
            ax.errorbar(whole["step"], whole["mean"], yerr=whole["std"] if "std" in whole else None, color="k",
                        marker="s", ms=3, lw=1.4, capsize=2, label="whole network")
        ax.axhline(0, color="0.6", lw=0.8)
        _clip_first_step(ax, wide)
        ax.set(xlabel="training step $t$", ylabel=rf"estimated LLC {_LAMBDAHAT}$(w_t)$, group alone")
        ax.legend(loc="best", ncols=2)
    return fig


def _clip_first_step(ax: Axes, wide: pd.DataFrame) -> None:
    # λ̂ at the first checkpoint (the initialisation, no minimum) can be far below the rest: keep the
    # axis on the later points and say so, rather than squash them.
    first = wide["step"].min()
    later = wide.loc[wide["step"] > first, "mean"].dropna()
    if later.empty:
        return
    lo, hi = float(later.min()), float(later.max())
    pad = 0.15 * max(hi - lo, 1.0)
    lo, hi = min(lo, 0.0) - pad, hi + pad
    off = wide.loc[(wide["step"] == first) & ~wide["mean"].between(lo, hi), "mean"].dropna()
    if not off.empty:
        ax.set_ylim(lo, hi)
        ax.annotate(f"t = {first:g}: {_minus(f'{off.min():.0f}')} to {_minus(f'{off.max():.0f}')}, off scale",
                    xy=(0.99, 0.02), xycoords="axes fraction", ha="right", fontsize=8, color="0.4")


def training_curve(
    metrics: pd.DataFrame, names: dict[str, str] | None = None
) -> pd.DataFrame:
    """Turn one run's metrics (long form) into the frame ``llc_over_training`` reads.

    Args:
        metrics: ``results.load_metrics`` output for one run.
        names: Metric name → column; defaults to ``TRAINING_METRICS``.

    Returns:
        One row per step, a column per named metric (NaN where it was not logged at a step).

    Raises:
        ValueError: If the metrics mix runs or hold none of the named metrics.
    """
    names = TRAINING_METRICS if names is None else names
    _one_run(metrics, "training_curve")
    picked = metrics[metrics["metric"].isin(list(names))]
    if picked.empty:
        have = sorted(metrics["metric"].unique()) if len(metrics) else []
        raise ValueError(f"no metric among {sorted(names)} in these runs (they log {have})")
    wide = picked.pivot_table(index="step", columns="metric", values="value", aggfunc="mean")
    wide = wide.rename(columns=names).reset_index()
    wide.columns.name = None
    for col in names.values():
        if col not in wide:
            wide[col] = np.nan
    return wide


def training_curves(metrics: pd.DataFrame, runs: pd.DataFrame, columns: dict[str, str],
                    names: dict[str, str] | None = None) -> pd.DataFrame:
    """``training_curve`` of every run, with run columns (e.g. the SGD temperature) alongside.

    Args:
        metrics: ``results.load_metrics`` output for any number of runs.
        runs: ``results.load_runs`` output for the same runs.
        columns: Column of ``runs`` → its name in the result, e.g. ``{"sgd_temperature": "temperature"}``.
        names: Metric name → column; defaults to ``TRAINING_METRICS``.

    Returns:
        One row per run and step: ``source``, ``run_id``, the metric columns and the run columns.

    Raises:
        ValueError: If a column of ``columns`` is missing from ``runs``, or no run has the metrics.
    """
    _require(runs, list(columns), "training_curves")
    info = runs.set_index(["source", "run_id"])[list(columns)].rename(columns=columns)
    frames = []
    for (source, run_id), group in metrics.groupby(["source", "run_id"], sort=False):
        if (source, run_id) not in info.index:
            continue
        curve = training_curve(group.drop(columns=["source", "run_id"]), names)
        curve.insert(0, "run_id", run_id)
        curve.insert(0, "source", source)
        for col, value in info.loc[(source, run_id)].items():
            curve[col] = value
        frames.append(curve)
    if not frames:
        raise ValueError("training_curves: none of these runs logged the metrics")
    return pd.concat(frames, ignore_index=True)


def llc_curves_by_temperature(curves: pd.DataFrame) -> Figure:
    r"""λ̂ and the test loss over training, one colour per SGD temperature T = η/B (Sclocchi et al. 2023).

    Thin lines are single runs (seeds); thick lines their mean at each step.

    Args:
        curves: One row per run and step with columns ``run_id``, ``step``, ``temperature``,
            ``lambdahat`` (NaN where not estimated); optional ``test_loss`` (a second panel) and
            ``source``. ``training_curves`` builds it from ``load_metrics`` and ``load_runs``.

    Returns:
        The figure.

    Raises:
        ValueError: If a column is missing or no step has a λ̂.
    """
    _require(curves, ["run_id", "step", "temperature", "lambdahat"], "llc_curves_by_temperature")
    llc = curves.dropna(subset=["lambdahat"])
    if llc.empty:
        raise ValueError("llc_curves_by_temperature: no step has a lambdahat")
    temps = sorted(llc["temperature"].unique())
    panels = [("lambdahat", rf"estimated LLC {_LAMBDAHAT}$(w_t)$")]
    if "test_loss" in curves and curves["test_loss"].notna().any():
        panels.append(("test_loss", "test loss"))
    run_key = [c for c in ("source", "run_id") if c in curves]
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(5.2 * len(panels) + 1.2, 4.2), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
        norm = LogNorm(min(temps) / 1.5, max(temps) * 1.5) if len(temps) == 1 else LogNorm(min(temps), max(temps))
        cmap = mpl.colormaps["viridis"]
        for ax, (col, label) in zip(axes, panels, strict=True):
            data = curves.dropna(subset=[col])
            for temp in temps:
                group = data[data["temperature"] == temp]
                color = cmap(norm(temp))
                for _, run in group.groupby(run_key):
                    ax.plot(run["step"], run[col], color=color, lw=0.7, alpha=0.45)
                mean = group.groupby("step")[col].mean()
                ax.plot(mean.index, mean.to_numpy(), color=color, lw=2.2)
            ax.set(xlabel="training step $t$", ylabel=label)
        seeds = llc.groupby("temperature")[run_key].apply(lambda g: len(g.drop_duplicates()))
        axes[0].set_title(f"{len(temps)} temperatures, {int(seeds.min())}–{int(seeds.max())} runs each"
                          if seeds.min() != seeds.max() else f"{len(temps)} temperatures, {int(seeds.min())} runs each")
        bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), pad=0.02,
                           label=r"SGD temperature $T = \eta / B$")
        _plain_log_ticks(bar.ax.yaxis, norm.vmin, norm.vmax)
    return fig


def _draw_llc(ax: Axes, llc: pd.DataFrame, window: int, mean: bool = True) -> list:
    handles = [ax.errorbar(llc["step"], llc["lambdahat"], yerr=_std(llc), fmt="o", ms=4,
                           color="C0", ecolor="C0", elinewidth=0.8, alpha=0.6,
                           label=rf"{_LAMBDAHAT}")]
    if mean:
        running = llc["lambdahat"].rolling(window, center=True, min_periods=1).mean()
        handles += ax.plot(llc["step"], running, color="C0", lw=2,
                           label=rf"{_LAMBDAHAT}, running mean of {window}")
    return handles


def _plain_log_ticks(axis, lo: float, hi: float) -> None:
    # Label a log axis with plain numbers (5, 10, 20, not 5×10⁰), more of them over a short range.
    subs = (1.0,) if hi / lo >= 100 else (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _minus(f"{v:g}")))
    axis.set_minor_formatter(NullFormatter())


def _minus(text: str) -> str:
    return text.replace("-", "\N{MINUS SIGN}")  # as on the axes


def _require(df: pd.DataFrame, columns: Sequence[str], figure: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{figure} needs columns {missing}, which the frame lacks; it has "
            f"{sorted(map(str, df.columns))[:40]}. Rename or compute them first."
        )


def _one_run(df: pd.DataFrame, figure: str) -> None:
    keys = [c for c in ("source", "run_id") if c in df.columns]
    if keys and len(df.drop_duplicates(keys)) > 1:
        raise ValueError(f"{figure} draws one run; select one, e.g. metrics[metrics.run_id == 3]")


def _finite_positive(col: pd.Series) -> pd.Series:
    values = pd.to_numeric(col, errors="coerce")
    return np.isfinite(values) & (values > 0)


def _std(df: pd.DataFrame) -> np.ndarray | None:
    return df["lambdahat_std"].to_numpy(float) if "lambdahat_std" in df else None


def _series(df: pd.DataFrame) -> list[tuple[object, pd.DataFrame]]:
    if "label" in df:
        return list(df.groupby("label", sort=True))
    return [(None, df)]


def _unique(df: pd.DataFrame, col: str) -> list[float]:
    return sorted(df[col].dropna().unique()) if col in df else []


def _legend_true_lambda(ax: Axes, runs: pd.DataFrame) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if _unique(runs, "true_lambda"):
        handles.append(Line2D([], [], color="k", ls="--", lw=1, label=rf"true {_LAMBDA}"))
    if handles:
        ax.legend(handles=handles)


def _mean_std(df: pd.DataFrame, by: str, col: str) -> pd.DataFrame:
    g = df.groupby(by)[col]
    stats = pd.DataFrame({"mean": g.mean(), "std": g.std(), "count": g.size()})
    if col == "lambdahat" and "lambdahat_std" in df:
        single = stats["count"] == 1
        stats.loc[single, "std"] = df.groupby(by)["lambdahat_std"].first()[single]
    return stats.fillna({"std": 0.0})


# The command line: how each figure gets its frame from the sources.
def _runs_frame(sources: Sequence[str], filters: dict, args: argparse.Namespace) -> pd.DataFrame:
    runs = results.load_runs(*sources, **{"status": "COMPLETED", **filters})
    if "wall_time_s" not in runs:  # the estimator's own time where recorded, else the run's
        runs["wall_time_s"] = runs["wall_time"] if "wall_time" in runs else runs["duration_s"]
    return runs


def _curve_frame(sources: Sequence[str], filters: dict, args: argparse.Namespace) -> pd.DataFrame:
    metrics = results.load_metrics(*sources, **filters)
    if args.run_id is not None:
        metrics = metrics[metrics["run_id"].astype(str) == str(args.run_id)]
    ids = sorted(set(metrics["run_id"]), key=lambda i: (isinstance(i, str), str(i).zfill(20)))
    if len(ids) != 1:
        raise ValueError(f"{args.figure} draws one run; pass --run-id, one of {ids}" if ids else
                         "no metrics in these runs; pass --run-id of a run that logged them")
    return training_curve(metrics, SADDLE_METRICS if args.figure == "saddle_to_saddle" else None)


def _temperature_frame(sources: Sequence[str], filters: dict, args: argparse.Namespace) -> pd.DataFrame:
    runs = results.load_runs(*sources, **{"status": "COMPLETED", **filters})
    metrics = results.load_metrics(*sources, **{"status": "COMPLETED", **filters})
    return training_curves(metrics, runs, {"sgd_temperature": "temperature"},
                           {**TRAINING_METRICS, "test/loss": "test_loss"})
def _metrics_frame(sources: Sequence[str], filters: dict, args: argparse.Namespace) -> pd.DataFrame:
    metrics = results.load_metrics(*sources, **filters)
    if args.run_id is not None:
        metrics = metrics[metrics["run_id"].astype(str) == str(args.run_id)]
    return metrics


FIGURES: dict[str, tuple[Callable[..., Figure], Callable[..., pd.DataFrame]]] = {
    "llc_vs_true": (llc_vs_true, _runs_frame),
    "llc_over_training": (llc_over_training, _curve_frame),
    "rescaling_invariance": (rescaling_invariance, _runs_frame),
    "mala_vs_sgld": (mala_vs_sgld, _runs_frame),
    "saddle_to_saddle": (saddle_to_saddle, _curve_frame),
    "llc_vs_hessian_rank": (llc_vs_hessian_rank, _runs_frame),
    "llc_curves_by_temperature": (llc_curves_by_temperature, _temperature_frame),
    "mask_overlap_vs_step": (mask_overlap_vs_step, _metrics_frame),
    "llc_by_block_over_training": (llc_by_block_over_training, _metrics_frame),
}
"""Figure name → (drawing function, how the command line builds its frame from sources)."""


def _parse_where(items: Sequence[str]) -> dict:
    filters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--where wants KEY=VALUE, e.g. model_dim=40, not {item!r}")
        try:
            filters[key] = json.loads(value)
        except json.JSONDecodeError:
            filters[key] = value  # a bare string such as model=dln
    return filters


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Draw one figure from saved runs and write it as PNG and PDF.

    Args:
        argv: Command-line arguments; ``sys.argv[1:]`` when None.

    Returns:
        The paths written.

    Raises:
        SystemExit: With the reason, if the runs cannot be loaded or drawn.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=sorted(FIGURES))
    parser.add_argument("--runs", nargs="+", required=True, metavar="DIR_OR_URL",
                        help="run folders (FileStorageObserver) or mongodb://host:port/dbname")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    parser.add_argument("--where", nargs="*", default=[], metavar="KEY=VALUE",
                        help="keep runs whose column equals VALUE (JSON), e.g. model_dim=40")
    parser.add_argument("--run-id", help="the run to draw, for figures of one training run")
    args = parser.parse_args(argv)

    draw, frame = FIGURES[args.figure]
    try:
        fig = draw(frame(args.runs, _parse_where(args.where), args))
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        raise SystemExit(f"plots.py: {err}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [args.out / f"{args.figure}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=200)
        print(path)
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
