"""Run devinterp 1.3.2's LLC estimator on a problem saved by bench_llc.py; print one JSON line.

Runs under benchmarks/.venv-devinterp (bash benchmarks/setup_devinterp.sh), never under the
project's venv, and needs only torch and devinterp:

    benchmarks/.venv-devinterp/bin/python benchmarks/devinterp_driver.py problem.pt

The problem file holds the DLN's layer matrices, the data (x, y) and the settings. The model is the
same bias-free chain of ``nn.Linear`` layers that bench_llc.py samples, the data are fed through a
``DataLoader`` drawing minibatches with replacement (as ``estimate_llc`` does), and devinterp's SGLD step
w ← w − lr/2 (nbeta ∇L_m + localization (w − w*)) + N(0, lr) is ours with lr = ε, nbeta = nβ,
localization = γ. Only the call to ``estimate_learning_coeff_with_summary`` is timed.
"""

import json
import sys
import time
import warnings

import torch
from devinterp.optim.sgld import SGLD
from devinterp.slt.sampler import estimate_learning_coeff_with_summary
from devinterp.utils import make_evaluate
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset


def main(path: str) -> None:
    problem = torch.load(path)
    s = problem["settings"]
    torch.set_num_threads(s["threads"])
    warnings.simplefilter("ignore")  # devinterp warns about nbeta, seeds and burn-in on every call
    layers = []
    for m in problem["matrices"]:
        layer = nn.Linear(m.shape[1], m.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(m)
        layers.append(layer)
    model = nn.Sequential(*layers)
    # Minibatches drawn with replacement, as estimate_llc draws them, so that both chains have the
    # same law; a shuffled DataLoader (sampling without replacement) has slightly less gradient noise.
    dataset = TensorDataset(problem["x"], problem["y"])
    sampler = RandomSampler(dataset, replacement=True, num_samples=len(dataset))
    loader = DataLoader(dataset, batch_size=s["batch_size"], sampler=sampler)
    start = time.perf_counter()
    out = estimate_learning_coeff_with_summary(
        model,
        loader,
        evaluate=make_evaluate(nn.functional.mse_loss),
        sampling_method=SGLD,
        optimizer_kwargs=dict(lr=s["epsilon"], nbeta=s["nbeta"], localization=s["gamma"]),
        num_chains=s["num_chains"],
        num_draws=s["num_steps"],
        num_burnin_steps=0,
        num_steps_bw_draws=1,
        init_loss=s["init_loss"],
        seed=s["seed"],
        device="cpu",
        verbose=False,
    )
    wall = time.perf_counter() - start
    per_chain = [out[f"llc-chain/{i}"] for i in range(s["num_chains"])]
    print(json.dumps(dict(wall_time=wall, lambdahat=out["llc/mean"], lambdahat_per_chain=per_chain)))


if __name__ == "__main__":
    main(sys.argv[1])
