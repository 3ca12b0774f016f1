"""Same seed, same numbers: a fixed set of small estimator calls, saved once and compared bit for bit later.

For refactors that must not change a single bit (issue 17: ``sgld.py`` split into the ``sgld/``
package). Every call runs on small models from ``models/`` with fixed seeds, one thread, on the CPU;
``--save`` writes every number it produced (loss traces, λ̂ per chain, ε, MALA acceptance, R̂, ESS,
the calibration record and the stopping rule's rounds, the SGLD optimizer's parameters) to an .npz,
and ``--compare`` recomputes them and says, per call, whether every array is bit-identical to the
saved one (same dtype, shape and bytes; wall times are left out). Exact comparison is right here and
only here: the same computation on the same machine (STYLE.md, item 22). Each call takes a few
seconds at most on one core (about 8 s in all).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/same_numbers.py --save /tmp/same_before.npz
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/same_numbers.py --compare /tmp/same_before.npz
"""

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.dln import DLN, SyntheticDLNData, make_true_params  # noqa: E402
from models.toy import (  # noqa: E402
    MinimallySingular,
    PolynomialRegression,
    ReducedRankRegression,
    rrr_data,
    toy_data,
)
from sgld import SGLD, RMSPropPreconditioner, calibrate_epsilon, estimate_llc, mala_estimate_llc  # noqa: E402

# Timings differ run to run; everything else must not.
TIMINGS = {"wall_time", "calibration_seconds"}


def _rrr(noise_std: float = 0.5, n: int = 2000):
    model = ReducedRankRegression(4, 2, 3, 1, generator=torch.Generator().manual_seed(0))
    return model, rrr_data(model, n, noise_std=noise_std, seed=1)


def _dln():
    g = torch.Generator().manual_seed(0)
    model = DLN(3, [4, 3]).set_matrices(make_true_params(3, [4, 3], "low_rank", rank=1, generator=g))
    return model, SyntheticDLNData(model.product(), 1000, seed=1)


def _mse(output, target):
    return ((output - target) ** 2).mean()


def _fixed_epsilon():
    model = MinimallySingular(d=20, r=2)
    return estimate_llc(model, model.loss_fn, toy_data(2000), epsilon=2e-4, num_steps=400, num_chains=4,
                        batch_size=64, num_burnin_steps=50, mala_every=10, seed=0)


def _fixed_epsilon_dln_grouped():
    # The batched nn.Linear path, get_batch data, chains in groups of 2, control variate.
    model, data = _dln()
    return estimate_llc(model, _mse, data, epsilon=1e-5, num_steps=300, num_chains=4, batch_size=50,
                        chain_batch_size=2, control_variate=True, mala_every=7, seed=3)


def _fixed_epsilon_full_data_trace():
    model, data = _rrr()
    return estimate_llc(model, model.loss_fn, data, epsilon=1e-4, num_steps=200, num_chains=2, batch_size=100,
                        loss_trace_minibatch=False, seed=1)


def _auto_epsilon():
    model, data = _rrr()
    return estimate_llc(model, model.loss_fn, data, epsilon="auto", num_steps=600, num_burnin_steps=100,
                        num_chains=4, batch_size=100, seed=0)


def _auto_epsilon_dln():
    model, data = _dln()
    return estimate_llc(model, _mse, data, epsilon="auto", num_steps=400, num_chains=2, batch_size=50, seed=2)


def _noisy_targets(n: int = 1000):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)


def _auto_epsilon_fallbacks():
    # Hessian 0 at w* with γ = 0 (the unit-curvature guess, then backoffs), and a NaN gradient at w*.
    flat = PolynomialRegression((2, 2))
    nan = PolynomialRegression((0, 1, 2))
    kw = dict(epsilon="auto", num_steps=400, num_chains=2, batch_size=100, seed=0)
    return {"flat": estimate_llc(flat, flat.loss_fn, _noisy_targets(), gamma=0.0, **kw).to_dict(),
            "nan": estimate_llc(nan, nan.loss_fn, _noisy_targets(), **kw).to_dict()}


def _preconditioner_dict():
    model, data = _rrr()
    p = {"A.weight": 2.0, "B.weight": torch.linspace(0.5, 1.5, model.B.weight.numel()).view_as(model.B.weight)}
    return estimate_llc(model, model.loss_fn, data, epsilon=1e-4, num_steps=300, num_chains=3, batch_size=100,
                        mala_every=5, preconditioner=p, seed=4)


def _preconditioner_rmsprop():
    model = MinimallySingular(d=20, r=2)
    return estimate_llc(model, model.loss_fn, toy_data(2000), epsilon=4e-4, num_steps=400, num_chains=4,
                        batch_size=64, mala_every=10, preconditioner="rmsprop", seed=0)


def _preconditioner_rmsprop_grouped():
    model, data = _dln()
    return estimate_llc(model, _mse, data, epsilon=2e-5, num_steps=200, num_chains=3, batch_size=50,
                        chain_batch_size=1, preconditioner=RMSPropPreconditioner(decay=0.99, damping=0.2), seed=5)


def _full_batch():
    model, data = _rrr(n=500)
    return estimate_llc(model, model.loss_fn, data, epsilon=1e-4, num_steps=300, num_chains=2, batch_size=None,
                        mala_every=10, seed=0)


def _full_batch_auto():
    model = MinimallySingular(d=50, r=4)
    return estimate_llc(model, model.loss_fn, toy_data(1000), epsilon="auto", num_steps=400, batch_size="full",
                        seed=0)


def _auto_steps():
    model = MinimallySingular(d=30, r=6)
    return estimate_llc(model, model.loss_fn, toy_data(5000), epsilon=5e-5, num_steps="auto", max_steps=4000,
                        num_chains=4, batch_size=100, seed=0)


def _auto_steps_auto_epsilon():
    model, data = _rrr()
    return estimate_llc(model, model.loss_fn, data, epsilon="auto", num_steps="auto", max_steps=2000,
                        num_chains=2, batch_size=100, seed=1)


def _divergent():
    model = MinimallySingular(d=10, r=2)
    return estimate_llc(model, model.loss_fn, toy_data(1000), epsilon=0.07, num_steps=200, num_chains=2,
                        batch_size=10, seed=0)


def _mala():
    model, data = _rrr(noise_std=0.0, n=500)
    return mala_estimate_llc(model, model.loss_fn, data, epsilon=1e-3, num_steps=300, num_burnin_steps=50,
                             num_chains=3, seed=1)


def _calibrate():
    model, data = _rrr(noise_std=1.0)
    return calibrate_epsilon(model, model.loss_fn, data, batch_size=100, pilot_steps=200, pilot_chains=3, seed=2)


def _calibrate_strict(min_acceptance: float) -> Callable[[], dict[str, Any]]:
    # 0.9995: the pilot passes and the larger ε after it fails (a cap); 0.999999: every backoff fails.
    def call() -> dict[str, Any]:
        model, data = _rrr(noise_std=1.0)
        return calibrate_epsilon(model, model.loss_fn, data, batch_size=100, pilot_steps=100, pilot_chains=2,
                                 min_acceptance=min_acceptance, max_backoffs=2, seed=0)

    return call


def _sgld_optimizer():
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x, y = torch.randn(50, 3, generator=g), torch.randn(50, 2, generator=g)
    opt = SGLD([{"params": [model.weight], "preconditioner": 0.5}, {"params": [model.bias]}], epsilon=1e-2,
               nbeta=10.0, gamma=3.0, generator=torch.Generator().manual_seed(1))
    for _ in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return {name: p.detach().numpy().copy() for name, p in model.named_parameters()}


CALLS: dict[str, Callable[[], Any]] = {
    "fixed epsilon": _fixed_epsilon,
    "fixed epsilon, DLN, chain groups, control variate": _fixed_epsilon_dln_grouped,
    "fixed epsilon, full-data trace": _fixed_epsilon_full_data_trace,
    "epsilon auto": _auto_epsilon,
    "epsilon auto, DLN": _auto_epsilon_dln,
    "epsilon auto, singular points": _auto_epsilon_fallbacks,
    "preconditioner dict": _preconditioner_dict,
    "preconditioner rmsprop": _preconditioner_rmsprop,
    "preconditioner rmsprop, chain by chain": _preconditioner_rmsprop_grouped,
    "full batch": _full_batch,
    "full batch, epsilon auto": _full_batch_auto,
    "num_steps auto": _auto_steps,
    "num_steps auto, epsilon auto": _auto_steps_auto_epsilon,
    "divergent chains": _divergent,
    "mala_estimate_llc": _mala,
    "calibrate_epsilon": _calibrate,
    "calibrate_epsilon, a check fails after the pilot": _calibrate_strict(0.9995),
    "calibrate_epsilon, backoffs exhausted": _calibrate_strict(0.999999),
    "SGLD optimizer": _sgld_optimizer,
}


def _flatten(value: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    """Every number, string and array in ``value`` as arrays keyed by their path."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in TIMINGS:
                _flatten(v, f"{prefix}/{k}", out)
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) or v is None for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}/{i}", out)
    elif value is None:
        out[prefix] = np.array("None")
    elif isinstance(value, torch.Tensor):
        out[prefix] = value.detach().cpu().numpy()
    else:
        out[prefix] = np.asarray(value)


def _numbers(name: str, result: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if hasattr(result, "to_dict"):  # an LLCResult
        _flatten(result.to_dict(), name, out)
        out[f"{name}/loss_trace"] = np.asarray(result.loss_trace)
        out[f"{name}/lambdahat_per_chain"] = np.asarray(result.lambdahat_per_chain)
    else:
        _flatten(result, name, out)
    return out


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "US" or b.dtype.kind in "US":
        return a.dtype.kind == b.dtype.kind and np.array_equal(a, b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def run_all() -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Make every call of ``CALLS``.

    Returns:
        Per call, its numbers by key; and per call, its wall time in seconds.
    """
    torch.set_num_threads(1)
    numbers, seconds = {}, {}
    for name, call in CALLS.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the divergent call warns by design, short traces warn of R-hat
            result = call()
        seconds[name] = time.perf_counter() - start
        numbers[name] = _numbers(name, result)
    return numbers, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path, help="write every number to this .npz")
    group.add_argument("--compare", type=Path, help="recompute and compare bit for bit with this .npz")
    args = parser.parse_args()
    numbers, seconds = run_all()
    flat = {k: v for per_call in numbers.values() for k, v in per_call.items()}
    if args.save:
        np.savez(args.save, **flat)
        for name, per_call in numbers.items():
            print(f"{name:55s} {len(per_call):4d} arrays  {seconds[name]:5.1f} s")
        print(f"saved {len(flat)} arrays to {args.save}")
        return 0
    saved = dict(np.load(args.compare))
    all_same = True
    print("| call | arrays | bit-identical | seconds |\n| --- | --- | --- | --- |")
    for name, per_call in numbers.items():
        before = {k: v for k, v in saved.items() if k.split("/")[0] == name}
        differ = sorted(set(before) ^ set(per_call)) + sorted(
            k for k in set(before) & set(per_call) if not _identical(before[k], per_call[k])
        )
        same = not differ and bool(per_call)
        all_same &= same
        note = "" if same else f" (differ: {', '.join(differ[:5])}{' …' if len(differ) > 5 else ''})"
        print(f"| {name} | {len(per_call)} | {'yes' if same else 'NO'}{note} | {seconds[name]:.1f} |")
    print("all bit-identical" if all_same else "NOT all bit-identical")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
