"""λ̂ of a deep linear network at the paper's largest scale on one GPU, with every target figure.

Furman & Lau (2024, §4) validate λ̂ against Aoyagi's λ on deep linear networks of up to 1e8
parameters. This script runs that check, by default at 4 layers of width 5000 (d = 1.0e8), rank
500, n = 1e6 realisable samples made on the fly on the GPU (``models.dln.SyntheticDLNData``),
batch 500, float32, and prints each figure against its target:

* λ̂ within 5% of Aoyagi's λ, quarters flat (spread ≤ ``FLAT``) and split-R̂ ≤ 1.05, with
  ``epsilon="auto"``'s calibration included in a total wall time of ≤ 10 minutes;
* calibration ≤ 15% of that run's time (``LLCResult.calibration_seconds`` where ``sgld`` records
  it, else ``sgld.calibrate_epsilon`` timed on its own, exactly as ``estimate_llc`` would call it);
* one SGLD chain ≤ 1.12× a plain training step (forward, backward, ``torch.optim.SGD`` step on
  the same data), timed side by side in alternating rounds;
* peak GPU memory, and the largest d that fits one 80 GB GPU from the measured bytes/parameter.

Run it through ``benchmarks/gpu_scale.sh`` (which sets the working directory), e.g.::

    bash benchmarks/gpu_scale.sh                          # the paper's scale; needs a GPU
    SCALE=tiny bash benchmarks/gpu_scale.sh               # a ~1 minute check of the script on a CPU
    STEPS=16000 CHAINS=4 EPSILON=auto bash benchmarks/gpu_scale.sh

Knobs (environment): SCALE (paper | tiny), WIDTH, LAYERS, RANK, N, STEPS ("auto", the default, or a
number), MAX_STEPS (budget of STEPS=auto), BURNIN (default 0 with auto, else half of STEPS), CHAINS,
BATCH, EPSILON (a number or "auto"), SEED, TIMING_STEPS (per round of the speed
comparison), DEVICE (default cuda when available), JSON (also write every figure to this file).
"""

import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.dln import DLN, SyntheticDLNData, make_true_params, true_lambda  # noqa: E402
from sgld import LLCResult, calibrate_epsilon, default_nbeta, estimate_llc  # noqa: E402

TARGET_REL_ERROR = 0.05  # |λ̂ − λ| / λ
TARGET_RHAT = 1.05
FLAT = 0.10  # quarters flat: (max − min) of the four quarters' λ̂ ≤ FLAT · λ̂
TARGET_WALL_S = 600.0
TARGET_CALIBRATION_SHARE = 0.15
TARGET_CHAIN_OVER_TRAINING = 1.12
GPU_BYTES = 80e9  # "80 GB" (an H100 80GB exposes 79.6 GiB = 85.5e9 bytes: this is the cautious reading)
ROUNDS = 3  # alternating rounds of the speed comparison; the median round counts

# The estimator's recommended settings, as benchmarks/dln_accuracy.py runs them: epsilon and num_steps "auto"
# (the stopping rule with the step-size monitor, MAX_STEPS per chain), 4 chains, batch 500.
PAPER = dict(WIDTH=5000, LAYERS=4, RANK=500, N=1_000_000, MAX_STEPS=64_000, CHAINS=4, BATCH=500, TIMING_STEPS=100)
TINY = dict(WIDTH=8, LAYERS=4, RANK=2, N=10_000, MAX_STEPS=64_000, CHAINS=4, BATCH=500, TIMING_STEPS=300)


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over samples and outputs (as ``experiment.mse_loss``)."""
    return (output - target).square().mean()


def settings() -> dict:
    """The run's settings from the environment, over the SCALE preset."""
    scale = os.environ.get("SCALE", "paper")
    if scale not in ("paper", "tiny"):
        sys.exit(f"SCALE must be 'paper' or 'tiny', got {scale!r}")
    preset = PAPER if scale == "paper" else TINY
    cfg = {key: int(float(os.environ.get(key, default))) for key, default in preset.items()}
    cfg["STEPS"] = os.environ.get("STEPS", "auto")
    cfg["STEPS"] = cfg["STEPS"] if cfg["STEPS"] == "auto" else int(float(cfg["STEPS"]))  # "auto" where sgld has it
    cfg["BURNIN"] = int(os.environ.get("BURNIN", 0 if cfg["STEPS"] == "auto" else cfg["STEPS"] // 2))
    eps = os.environ.get("EPSILON", "auto")
    cfg["EPSILON"] = eps if eps == "auto" else float(eps)
    cfg["SEED"] = int(os.environ.get("SEED", 0))
    cfg["SCALE"] = scale
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg["DEVICE"] = torch.device(os.environ.get("DEVICE", default_device))
    if cfg["DEVICE"].type == "cpu" and scale == "paper":
        sys.exit("no GPU found: the paper-scale run needs one (SCALE=tiny checks the script on the CPU)")
    return cfg


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated by tensors since ``reset_peak``; on a CPU, the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def training_steps(model: DLN, data: SyntheticDLNData, batch: int, steps: int, seed: int) -> float:
    """Seconds per plain training step: batch from the data, forward, backward, SGD step."""
    device = data.device
    student = DLN(model.input_dim, model.layer_widths).to(device).set_matrices(model.matrices())
    opt = torch.optim.SGD(student.parameters(), lr=1e-12)  # tiny: the point stays where the chains start
    gen = torch.Generator(device=device).manual_seed(seed)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = data.get_batch(torch.randint(len(data), (batch,), generator=gen, device=device))
        loss = mse_loss(student(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def chain_steps(model: DLN, data: SyntheticDLNData, cfg: dict, steps: int, chains: int, mala_every: int,
                epsilon: float, nbeta: float) -> float:
    """Seconds per step of ``chains`` SGLD chains (``estimate_llc``'s own sampling time)."""
    with warnings.catch_warnings():  # these short runs only time the step: their λ̂ means nothing
        warnings.simplefilter("ignore")
        res = estimate_llc(model, mse_loss, data, epsilon=epsilon, num_steps=steps, num_chains=chains,
                           batch_size=cfg["BATCH"], nbeta=nbeta, seed=cfg["SEED"], mala_every=mala_every,
                           device=data.device)
    return res.wall_time / steps


def compare_speed(model: DLN, teacher: torch.Tensor, cfg: dict, nbeta: float, epsilon: float) -> dict:
    """A plain training step against one SGLD chain (and against CHAINS chains), side by side.

    The three are timed in alternating rounds (after a warm-up of each) so that clock changes
    and other load hit all alike; each figure is the median round. A small data set of the same
    shape stands in for the n samples: a batch costs the same whatever n is, and ``estimate_llc``'s
    L_n(w*) pass (not part of its sampling time) stays short.
    """
    device, steps = cfg["DEVICE"], cfg["TIMING_STEPS"]
    data = SyntheticDLNData(teacher, 20 * cfg["BATCH"], seed=cfg["SEED"] + 1)
    runs = {
        "training_step_s": lambda k: training_steps(model, data, cfg["BATCH"], k, cfg["SEED"]),
        "chain_step_s": lambda k: chain_steps(model, data, cfg, k, 1, 50, epsilon, nbeta),
        "chain_step_no_mala_s": lambda k: chain_steps(model, data, cfg, k, 1, 0, epsilon, nbeta),
    }
    for run in runs.values():
        run(max(2, steps // 10))  # warm-up: kernels chosen, caches filled
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(ROUNDS):
        for key, run in runs.items():
            times[key].append(run(steps))
    out = {key: statistics.median(v) for key, v in times.items()}
    reset_peak(device)
    out["chains_step_s"] = chain_steps(model, data, cfg, steps, cfg["CHAINS"], 50, epsilon, nbeta)
    out["chains_sampling_peak_bytes"] = peak_bytes(device)
    out["rounds"] = times
    return out


def main_run(model: DLN, data: SyntheticDLNData, cfg: dict) -> tuple[LLCResult, float, float | None]:
    """The estimate itself; returns (result, total seconds, calibration seconds or None)."""
    kw = dict(gamma=1.0, num_steps=cfg["STEPS"], num_burnin_steps=cfg["BURNIN"], num_chains=cfg["CHAINS"],
              batch_size=cfg["BATCH"], seed=cfg["SEED"], device=cfg["DEVICE"], progress=True,
              max_steps=cfg["MAX_STEPS"])
    records_calibration = "calibration_seconds" in {f.name for f in dataclasses.fields(LLCResult)}
    sync(cfg["DEVICE"])
    start = time.perf_counter()
    if cfg["EPSILON"] == "auto" and not records_calibration:
        # This version of sgld does not time its calibration: call it as estimate_llc would, timed on its own.
        cal = calibrate_epsilon(model, mse_loss, data, gamma=1.0, nbeta=default_nbeta(len(data)),
                                batch_size=cfg["BATCH"], seed=cfg["SEED"], device=cfg["DEVICE"])
        calibration = time.perf_counter() - start
        res = estimate_llc(model, mse_loss, data, epsilon=cal["epsilon"], **kw)
        res = dataclasses.replace(res, epsilon_calibration=cal)
    else:
        res = estimate_llc(model, mse_loss, data, epsilon=cfg["EPSILON"], **kw)
        calibration = getattr(res, "calibration_seconds", None) if cfg["EPSILON"] == "auto" else 0.0
    sync(cfg["DEVICE"])
    return res, time.perf_counter() - start, calibration


def verdict(ok: bool | None) -> str:
    """PASS, FAIL, or "-" for a figure that is reported rather than judged."""
    return "-" if ok is None else "PASS" if ok else "FAIL"


def main() -> None:
    cfg = settings()
    device = cfg["DEVICE"]
    if device.type == "cpu":
        torch.set_num_threads(1)  # the tiny check is overhead-bound; on a shared CPU more threads only contend
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    width, layers, rank = cfg["WIDTH"], cfg["LAYERS"], cfg["RANK"]

    start = time.perf_counter()
    matrices = make_true_params(width, [width] * layers, "low_rank", rank=rank,
                                generator=torch.Generator().manual_seed(cfg["SEED"]), device=device)
    with torch.device(device):  # no CPU init of 1e8 parameters that are overwritten at once
        model = DLN(width, [width] * layers)
    model.set_matrices(matrices)
    del matrices
    with torch.no_grad():
        teacher = model.product()
    data = SyntheticDLNData(teacher, cfg["N"], seed=cfg["SEED"])
    d = sum(p.numel() for p in model.parameters())
    lam, mult = true_lambda(rank, width, [width] * layers)
    nbeta = default_nbeta(cfg["N"])
    sync(device)
    setup = time.perf_counter() - start
    print(f"DLN {layers} x {width}, d = {d:.3g}, rank {rank}, n = {cfg['N']:.3g}, batch {cfg['BATCH']}, "
          f"{cfg['CHAINS']} chains, {cfg['STEPS']} steps ({cfg['BURNIN']} burn-in), epsilon {cfg['EPSILON']}, "
          f"float32, torch {torch.__version__}, device {name}; teacher and data in {setup:.1f} s", flush=True)

    speed_eps = cfg["EPSILON"] if cfg["EPSILON"] != "auto" else 1e-9  # the step's cost does not depend on ε
    speed = compare_speed(model, teacher, cfg, nbeta, speed_eps)
    ratio = speed["chain_step_s"] / speed["training_step_s"]
    print(f"speed (median of {ROUNDS} alternating rounds of {cfg['TIMING_STEPS']} steps): plain training step "
          f"{speed['training_step_s'] * 1e3:.3f} ms, one SGLD chain {speed['chain_step_s'] * 1e3:.3f} ms "
          f"(mala_every=50; {speed['chain_step_no_mala_s'] * 1e3:.3f} ms with mala_every=0), {cfg['CHAINS']} "
          f"chains together {speed['chains_step_s'] * 1e3:.3f} ms per step", flush=True)

    reset_peak(device)
    res, total, calibration = main_run(model, data, cfg)
    peak = peak_bytes(device)
    print(res)

    rel = (res.lambdahat - lam) / lam
    quarters = res.lambdahat_quarters
    spread = (max(quarters) - min(quarters)) / abs(res.lambdahat) if quarters and res.lambdahat else math.nan
    share = calibration / total if calibration is not None else math.nan
    per_param = max(peak, speed["chains_sampling_peak_bytes"]) / d
    d_max = GPU_BYTES / per_param
    memory = "peak GPU memory" if device.type == "cuda" else "peak RSS (CPU: the Python runtime included)"
    rows = [
        ("lambdahat vs Aoyagi's lambda", f"{res.lambdahat:.6g} vs {lam:g} (m = {mult}): {rel:+.2%}",
         f"|error| <= {TARGET_REL_ERROR:.0%}", abs(rel) <= TARGET_REL_ERROR),
        ("quarters flat", f"{[float(f'{q:.4g}') for q in quarters]}, spread {spread:.1%} of lambdahat",
         f"spread <= {FLAT:.0%}", spread <= FLAT),
        ("split R-hat", f"{res.rhat:.3f}, diverged {res.divergence_step}", f"<= {TARGET_RHAT}",
         res.rhat <= TARGET_RHAT and not res.diverged),
        ("total wall time (calibration included)",
         f"{total:.1f} s (sampling {res.wall_time:.1f} s, epsilon {res.epsilon:.3g})",
         f"<= {TARGET_WALL_S:.0f} s", total <= TARGET_WALL_S),
        ("calibration share", f"{share:.1%} ({calibration if calibration is not None else math.nan:.1f} s, " + (
            "LLCResult.calibration_seconds)" if hasattr(res, "calibration_seconds") else "timed apart)"),
         f"<= {TARGET_CALIBRATION_SHARE:.0%}", share <= TARGET_CALIBRATION_SHARE),
        ("one chain / plain training step", f"{ratio:.3f}x ({speed['chain_step_s'] * 1e3:.3f} / "
         f"{speed['training_step_s'] * 1e3:.3f} ms)", f"<= {TARGET_CHAIN_OVER_TRAINING}",
         ratio <= TARGET_CHAIN_OVER_TRAINING),
        (memory, f"{peak / 2**30:.2f} GiB in the run, {speed['chains_sampling_peak_bytes'] / 2**30:.2f} GiB "
         f"sampling {cfg['CHAINS']} chains alone", "printed", None),
        ("largest d on one 80 GB GPU", f"{d_max:.3g} ({per_param:.1f} bytes/parameter at {cfg['CHAINS']} chains, "
         f"from the larger peak / d)", "stated", None),
    ]
    print(f"\n{'figure':44} {'measured':72} {'target':16} verdict")
    for label, value, target, ok in rows:
        print(f"{label:44} {value:72} {target:16} {verdict(ok)}")

    if os.environ.get("JSON"):
        record = dict(settings={k: str(v) for k, v in cfg.items()}, device_name=name, d=d, true_lambda=lam,
                      setup_s=setup, total_s=total, calibration_s=calibration, peak_bytes=peak,
                      bytes_per_parameter=per_param, largest_d_80gb=d_max, speed=speed, result=res.to_dict())
        path = Path(os.environ["JSON"])
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(record, f, indent=1, default=str)
        Path(f.name).replace(path)  # complete or absent, never half-written


if __name__ == "__main__":
    main()
