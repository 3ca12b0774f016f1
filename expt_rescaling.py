"""λ̂ under the rescaling symmetry of a ReLU network, with and without a matching preconditioner.

A two-layer ReLU network with biases, f(x) = W₂ relu(W₁x + b₁) + b₂, computes the same function
after W₁, b₁ → αW₁, αb₁ and W₂ → W₂/α (relu(αz) = α relu(z) for α > 0), so its LLC does not
depend on α (Furman & Lau 2024, rescaling-invariance study). SGLD at a fixed ε does: in the new
coordinates the posterior is stretched by α along the first layer and squeezed along the second.
The preconditioner P = α² on (W₁, b₁), α⁻² on W₂ and 1 on b₂ undoes it exactly (with P = A² for
w ↦ Aw the chain is the image of the chain at α = 1 driven by the same noise; see ``sgld/``). This experiment measures
λ̂ at one factor α and one ``preconditioner`` (``rescaling``, ``none`` or ``rmsprop``); a sweep
over the 17 factors 10⁻⁴ … 10⁴ is ``gen_commands_expt_rescaling.py``.

The true network (``models.mlp.random_mlp``) has a built-in degeneracy: ``num_copies``
first-layer units are copies of one. The n inputs are uniform on [−``input_bound``, ``input_bound``]^d
and the targets are the true network's outputs (realisable, noise-free).

    python expt_rescaling.py -F outputs/rescaling with scale=100.0 preconditioner=rescaling
    python expt_rescaling.py -F outputs/rescaling with scale=0.01 preconditioner=none sgld_config.num_steps=2000

Recorded in the run's info: every field of ``LLCResult.to_dict()`` (including ``preconditioner``,
P per parameter tensor), ``scale``, ``preconditioner_name``, ``model_dim``. The loss traces go to
Sacred metrics (``sgld/loss/chain<c>``) and, complete, to the artifact ``loss_traces.npz``.
"""

import math

import torch

from experiment import (
    Experiment,
    SGLDConfig,
    check_common,
    default_observer,
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
    save_artifacts,
    sgld_kwargs,
)
from models.mlp import MLP, random_mlp, teacher_data
from sgld import LLCResult, estimate_llc

__all__ = ["PRECONDITIONERS", "ex", "rescale", "rescaling_preconditioner"]

PRECONDITIONERS = ("rescaling", "none", "rmsprop")

ex = Experiment("rescaling_invariance")


@ex.config
def config():
    """The reference study's smallest network (input 10, widths [20, 10]) at one factor α."""
    expt_name = None  # run name; the default observer stores runs in outputs/<expt_name or 'rescaling'>/
    input_dim = 10  # d, input dimension
    layer_widths = [20, 10]  # [hidden width, output dimension]: one hidden ReLU layer
    num_copies = 4  # first-layer units that copy unit 0 (the built-in degeneracy)
    num_training_data = 10_000  # n
    input_bound = 10.0  # inputs uniform on [-input_bound, input_bound]^d
    itemp = 1 / math.log(num_training_data)  # β; nβ = n · itemp
    scale = 1.0  # α: W₁, b₁ → αW₁, αb₁ and W₂ → W₂/α
    preconditioner = "rescaling"  # rescaling (P = α² on layer 1, α⁻² on W₂, 1 on b₂) | none | rmsprop
    sgld_config = {
        "epsilon": 1e-5,  # ε, SGLD step size
        "gamma": 0.0,  # γ, localization (0: the rescaling leaves the posterior invariant only without it)
        "num_steps": 10_000,  # SGLD steps per chain, burn-in included
        "num_chains": 5,  # independent chains (the reference study's 5 runs per factor)
        "batch_size": 500,  # m, SGLD minibatch size
        "num_burnin_steps": 0,  # leading steps left out of λ̂
    }
    seed = 0  # root of all randomness: the same seed gives the same network and data at every α
    sgld_seed = None  # seed of the chains; None: drawn from seed, so every α shares the chains' noise
    verbose = False  # progress bar off a terminal too


@ex.named_config
def medium():
    """The reference study's second network: input 20, widths [30, 20]."""
    input_dim = 20  # d
    layer_widths = [30, 20]  # [hidden, output]


@ex.named_config
def large():
    """The reference study's third network: input 30, widths [40, 30]."""
    input_dim = 30  # d
    layer_widths = [40, 30]  # [hidden, output]


def rescale(model: MLP, alpha: float) -> MLP:
    """A copy of the two-layer ``model`` with W₁, b₁ → αW₁, αb₁ and W₂ → W₂/α: the same function.

    Args:
        model: A one-hidden-layer ReLU MLP.
        alpha: α > 0.

    Returns:
        The rescaled copy.
    """
    first, second = model.net[0], model.net[2]
    out = MLP(first.in_features, [first.out_features], second.out_features)
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        out.net[0].weight.mul_(alpha)
        out.net[0].bias.mul_(alpha)
        out.net[2].weight.div_(alpha)
    return out


def rescaling_preconditioner(alpha: float) -> dict[str, float]:
    """P = α² on W₁ and b₁, α⁻² on W₂ (b₂ keeps 1): the P under which SGLD is equivariant.

    Returns:
        The factor for each rescaled parameter, by name; parameters not named keep 1.

    Example:
        >>> rescaling_preconditioner(10.0)
        {'net.0.weight': 100.0, 'net.0.bias': 100.0, 'net.2.weight': 0.01}
    """
    return {"net.0.weight": alpha**2, "net.0.bias": alpha**2, "net.2.weight": alpha**-2}


@ex.capture
def check_setup(sgld: SGLDConfig, expt_name, input_dim, layer_widths, num_copies, num_training_data, input_bound,
                itemp, scale, preconditioner, sgld_seed) -> None:
    """Validate the top-level config before any work.

    Raises:
        ValueError: Naming the first bad key, its value and the accepted range.
    """
    check_common(expt_name, itemp=itemp, num_train=num_training_data, batch_sizes={"sgld_config": sgld.batch_size})
    require(is_int(input_dim) and input_dim >= 1, f"input_dim must be an int >= 1, got {input_dim!r}")
    require(isinstance(layer_widths, list) and len(layer_widths) == 2 and all(is_int(h) and h >= 1
                                                                              for h in layer_widths),
            f"layer_widths must be [hidden width, output dim] (one hidden layer), e.g. '[20, 10]', "
            f"got {layer_widths!r}")
    require(is_int(num_copies) and 0 <= num_copies < layer_widths[0],
            f"num_copies must be an int in [0, {layer_widths[0] - 1}], got {num_copies!r}")
    require(is_int(num_training_data) and num_training_data >= 2,
            f"num_training_data must be an int >= 2, got {num_training_data!r}")
    require(is_number(input_bound) and input_bound > 0, f"input_bound must be > 0, got {input_bound!r}")
    require(is_number(scale) and scale > 0, f"scale (α) must be a number > 0, got {scale!r}")
    require(preconditioner in PRECONDITIONERS,
            f"unknown preconditioner {preconditioner!r}; choose from {list(PRECONDITIONERS)}")
    require(sgld_seed is None or (is_int(sgld_seed) and sgld_seed >= 0),
            f"sgld_seed must be None or an int >= 0, got {sgld_seed!r}")




@ex.capture
def estimate(model: MLP, data, sgld: SGLDConfig, seed: int, num_training_data, itemp, scale, preconditioner,
             verbose) -> LLCResult:
    """λ̂ at the rescaled network with the chosen preconditioner.

    Returns:
        The estimator's ``LLCResult``.
    """
    precond = {"rescaling": rescaling_preconditioner(scale), "none": None, "rmsprop": "rmsprop"}[preconditioner]
    return estimate_llc(model, mse_loss, data, **sgld_kwargs(sgld), nbeta=num_training_data * itemp, seed=seed,
                        preconditioner=precond, progress=progress(verbose))


@ex.main
def run(_run, sgld_config, input_dim, layer_widths, num_copies, scale, preconditioner, seed, sgld_seed,
        num_training_data, input_bound) -> dict:
    """True network → data → rescale by α → λ̂ with the preconditioner → records.

    Returns:
        ``{"lambdahat", "lambdahat_std", "scale", "preconditioner"}``.
    """
    sgld = parse(SGLDConfig, "sgld_config", sgld_config)
    check_setup(sgld)
    g_teacher, g_data, g_sgld = generators(seed, 3)
    teacher = random_mlp(input_dim, layer_widths[:1], layer_widths[1], g_teacher, num_copies=num_copies)
    data = teacher_data(teacher, num_training_data, input_dim, input_bound, g_data)
    # With shared noise (sgld_seed None) the rescaling-preconditioned chains are images of each other;
    # a sgld_seed per α makes the factors' estimates independent.
    chain_seed = int_seed(g_sgld) if sgld_seed is None else sgld_seed
    result = estimate(rescale(teacher, scale), data, sgld, chain_seed)
    _run.info.update(result.to_dict())
    _run.info.update(scale=scale, preconditioner_name=preconditioner,
                     model_dim=model_dim(teacher))
    log_traces(_run, result)
    save_artifacts(_run, arrays={"loss_traces.npz": {"loss_trace": result.loss_trace}})
    print(f"α = {scale:g}, preconditioner {preconditioner}: {result}")
    return dict(lambdahat=result.lambdahat, lambdahat_std=result.lambdahat_std, scale=scale,
                preconditioner=preconditioner)


observe_by_default = default_observer(ex, "rescaling")


if __name__ == "__main__":
    ex.option_hook(observe_by_default)
    ex.run_commandline()
