r"""SGLD against full-batch MALA: the same λ̂ at a fraction of the cost (Furman & Lau 2024, MALA study).

A ReLU network with biases (input 10, widths [20, 20, 10] by default, entries N(0, 1/fan_in),
``models.mlp.random_mlp``) is the true parameter w*; n inputs are uniform on
[−``input_bound``, ``input_bound``]^d and the targets are its outputs (realisable). One run
estimates λ̂(w*) with one ``sampler``: ``sgld`` (``sgld.estimate_llc``, minibatches of m) or
``mala`` (``sgld.mala_estimate_llc``: full-batch Metropolis-adjusted Langevin, no step-size bias,
a pass over the data per step), at the same ε, γ, nβ = n/log n, steps and chains. The same
``seed`` gives the same network and data for both samplers. A sweep over n = 10² … 10⁵ is
``gen_commands_expt_mala_vs_sgld.py``.

    python expt_mala_vs_sgld.py -F outputs/mala_vs_sgld with sampler=mala num_training_data=1000
    python expt_mala_vs_sgld.py -F outputs/mala_vs_sgld with sampler=sgld num_training_data=1000 \
        sgld_config.num_steps=2000

Recorded in the run's info: every field of ``LLCResult.to_dict()`` (``lambdahat``, ``wall_time``,
``mala_acceptance``: for MALA its realised acceptance rate, for SGLD the mean Metropolis acceptance
probability of its proposals), ``sampler``, ``n``, ``wall_time_s`` and ``model_dim``. The loss
traces go to Sacred metrics (``sgld/loss/chain<c>``) and to the artifact ``loss_traces.npz``.
"""

import math

import torch

from experiment import (
    Experiment,
    SGLDConfig,
    check_common,
    default_observer,
    device_info,
    generators,
    int_seed,
    is_int,
    is_number,
    log_traces,
    model_dim,
    mse_loss,
    parse,
    progress,
    require,
    resolve_device,
    save_artifacts,
    sgld_kwargs,
)
from models.mlp import MLP, random_mlp, teacher_data
from sgld import LLCResult, estimate_llc, mala_estimate_llc

__all__ = ["SAMPLERS", "ex"]

SAMPLERS = ("sgld", "mala")

ex = Experiment("mala_vs_sgld")


@ex.config
def config():
    """The reference study's network at one training-set size n and one sampler."""
    expt_name = None  # run name; the default observer stores runs in outputs/<expt_name or 'mala_vs_sgld'>/
    input_dim = 10  # d, input dimension
    layer_widths = [20, 20, 10]  # hidden widths, then the output dimension
    num_training_data = 1000  # n
    input_bound = 1.0  # inputs uniform on [-input_bound, input_bound]^d
    itemp = 1 / math.log(num_training_data)  # β; nβ = n · itemp
    sampler = "sgld"  # sgld (minibatch, no accept/reject) | mala (full batch, Metropolis-adjusted)
    sgld_config = {
        "epsilon": 1e-5,  # ε, step size of both samplers
        "gamma": 1.0,  # γ, localization
        "num_steps": 10_000,  # steps per chain, burn-in included
        "num_chains": 5,  # independent chains (the reference study's 5 runs)
        "batch_size": 32,  # m, SGLD minibatch size (MALA uses all n)
        "num_burnin_steps": 0,  # leading steps left out of λ̂
    }
    mala_eval_batch_size = 4096  # MALA: samples per forward pass when summing over the data
    device = "auto"  # auto | cpu | cuda | cuda:<index>
    seed = 0  # root of all randomness: network, data, chains
    verbose = False  # progress bar off a terminal too


@ex.capture
def check_setup(sgld: SGLDConfig, expt_name, input_dim, layer_widths, num_training_data, input_bound, itemp,
                sampler, mala_eval_batch_size) -> None:
    """Validate the top-level config before any work.

    Raises:
        ValueError: Naming the first bad key, its value and the accepted range.
    """
    check_common(expt_name, itemp=itemp, num_train=num_training_data, batch_sizes={"sgld_config": sgld.batch_size})
    require(is_int(input_dim) and input_dim >= 1, f"input_dim must be an int >= 1, got {input_dim!r}")
    require(isinstance(layer_widths, list) and len(layer_widths) >= 2 and all(is_int(h) and h >= 1
                                                                              for h in layer_widths),
            f"layer_widths must list >= 1 hidden widths then the output dim, e.g. '[20, 20, 10]', got {layer_widths!r}")
    require(is_int(num_training_data) and num_training_data >= 2,
            f"num_training_data must be an int >= 2, got {num_training_data!r}")
    require(is_number(input_bound) and input_bound > 0, f"input_bound must be > 0, got {input_bound!r}")
    require(sampler in SAMPLERS, f"unknown sampler {sampler!r}; choose from {list(SAMPLERS)}")
    require(is_int(mala_eval_batch_size) and mala_eval_batch_size >= 1,
            f"mala_eval_batch_size must be an int >= 1, got {mala_eval_batch_size!r}")
    require(sgld.epsilon != "auto", "sgld_config.epsilon must be a number here: both samplers use the same ε")




@ex.capture
def estimate(model: MLP, data, sgld: SGLDConfig, seed: int, device: torch.device, sampler, num_training_data,
             itemp, mala_eval_batch_size, verbose) -> LLCResult:
    """λ̂ at w* with the chosen sampler, at the same ε, γ, nβ, steps and chains.

    Returns:
        The estimator's ``LLCResult``.
    """
    nbeta = num_training_data * itemp
    if sampler == "sgld":
        return estimate_llc(model, mse_loss, data, **sgld_kwargs(sgld), nbeta=nbeta, seed=seed, device=device,
                            progress=progress(verbose))
    return mala_estimate_llc(model, mse_loss, data, epsilon=sgld.epsilon, gamma=sgld.gamma,
                             num_steps=sgld.num_steps, num_chains=sgld.num_chains, nbeta=nbeta, seed=seed,
                             num_burnin_steps=sgld.num_burnin_steps, eval_batch_size=mala_eval_batch_size,
                             device=device)


@ex.main
def run(_run, sgld_config, input_dim, layer_widths, num_training_data, input_bound, sampler, device, seed) -> dict:
    """True network → data → λ̂ with SGLD or MALA → records.

    Returns:
        ``{"lambdahat", "lambdahat_std", "wall_time_s", "mala_acceptance", "sampler"}``.
    """
    sgld = parse(SGLDConfig, "sgld_config", sgld_config)
    check_setup(sgld)
    dev = resolve_device(device)
    g_teacher, g_data, g_chains = generators(seed, 3)
    teacher = random_mlp(input_dim, layer_widths[:-1], layer_widths[-1], g_teacher).to(dev)
    x, y = teacher_data(teacher.cpu(), num_training_data, input_dim, input_bound, g_data)
    result = estimate(teacher.to(dev), (x.to(dev), y.to(dev)), sgld, int_seed(g_chains), dev)
    _run.info.update(result.to_dict())
    _run.info.update(sampler=sampler, wall_time_s=result.wall_time,
                     model_dim=model_dim(teacher), **device_info(dev))
    log_traces(_run, result)
    save_artifacts(_run, arrays={"loss_traces.npz": {"loss_trace": result.loss_trace}})
    print(f"{sampler} at n = {num_training_data}: {result}; {result.wall_time:.1f} s")
    return dict(lambdahat=result.lambdahat, lambdahat_std=result.lambdahat_std, wall_time_s=result.wall_time,
                mala_acceptance=result.mala_acceptance, sampler=sampler)


observe_by_default = default_observer(ex, "mala_vs_sgld")


if __name__ == "__main__":
    ex.option_hook(observe_by_default)
    ex.run_commandline()
