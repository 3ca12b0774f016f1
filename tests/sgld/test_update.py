"""The SGLD step and the optimizer against hand computations; preconditioned SGLD (``sgld.update``).

Update: w ← w − ε/2·P·(nβ∇L_m + γ(w − w*)) + N(0, εP), P diagonal (the ``sgld`` package docstring).
One step by hand, the optimizer, equivariance under rescaling, known λ. Tolerances and measured
values (seed 0, CPU) are stated beside each science assertion.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.mlp import MLP
from models.toy import MinimallySingular, toy_data
from sgld import SGLD, RMSPropPreconditioner, estimate_llc
from tests.sgld.problems import linear_problem


def test_one_sgld_step_equals_hand_computation():
    model, x, y = linear_problem()
    eps, gamma, nbeta, m = 1e-3, 2.0, 7.0, 5
    res = estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=eps, gamma=gamma, nbeta=nbeta,
                       num_steps=2, num_chains=1, batch_size=m, seed=3, mala_every=0)

    # Replay the chain's random stream: minibatch indices, then the noise, each step.
    gen = torch.Generator()
    state = np.random.SeedSequence(3).spawn(1)[0].generate_state(2, dtype=np.uint32)
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    w_star = model.weight.detach().clone()

    def batch_loss_and_grad(w, idx):
        residual = x[idx] @ w.T - y[idx]  # mse_loss = mean over m*2 entries
        loss = (residual**2).mean()
        grad = 2 * residual.T @ x[idx] / residual.numel()
        return loss, grad

    idx0 = torch.randint(len(x), (m,), generator=gen)
    loss0, grad0 = batch_loss_and_grad(w_star, idx0)
    noise = torch.randn(w_star.numel(), generator=gen).view_as(w_star)
    w1 = w_star - eps / 2 * (nbeta * grad0 + gamma * (w_star - w_star)) + math.sqrt(eps) * noise
    idx1 = torch.randint(len(x), (m,), generator=gen)
    loss1, _ = batch_loss_and_grad(w1, idx1)

    np.testing.assert_allclose(res.loss_trace[0], [loss0.item(), loss1.item()], rtol=1e-5)
    init = nn.functional.mse_loss(model(x), y).item()
    assert res.init_loss == pytest.approx(init, rel=1e-6)
    assert res.lambdahat == pytest.approx(nbeta * ((loss0.item() + loss1.item()) / 2 - init), rel=1e-5)


def test_sgld_optimizer_step_equals_hand_computation():
    model, x, y = linear_problem()
    w_star = model.weight.detach().clone()
    opt = SGLD(model.parameters(), epsilon=1e-2, nbeta=10.0, gamma=3.0, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # second step has w != w*, so the localization term is exercised
        w_before = model.weight.detach().clone()
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grad = model.weight.grad.clone()
        noise_gen = torch.Generator()
        noise_gen.set_state(opt.generator.get_state())
        noise = torch.randn(w_before.shape, generator=noise_gen)
        opt.step()
        expected = w_before - 1e-2 / 2 * (10.0 * grad + 3.0 * (w_before - w_star)) + math.sqrt(1e-2) * noise
        torch.testing.assert_close(model.weight.detach(), expected)


def _affine_problem(n: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.randn(3, 2, generator=g) + 0.5 + torch.randn(n, 2, generator=g)
    model = nn.Linear(3, 2)
    with torch.no_grad():  # w* = the least-squares fit with intercept
        xb = torch.cat([x, torch.ones(n, 1)], dim=1)
        sol = torch.linalg.lstsq(xb, y).solution
        model.weight.copy_(sol[:3].T)
        model.bias.copy_(sol[3])
    return model, x, y


def _chain_generator(seed: int) -> torch.Generator:
    # The first chain's stream, as sgld.chains.chain_generators seeds it.
    state = np.random.SeedSequence(seed).spawn(1)[0].generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def test_one_preconditioned_step_equals_hand_computation():
    model, x, y = _affine_problem()
    eps, gamma, nbeta, m = 1e-3, 2.0, 7.0, 5
    p_weight = 4.0
    p_bias = torch.tensor([0.25, 3.0])
    res = estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=eps, gamma=gamma, nbeta=nbeta,
                       num_steps=3, num_chains=1, batch_size=m, seed=3, mala_every=0,
                       preconditioner={"weight": p_weight, "bias": p_bias})

    gen = _chain_generator(3)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    w_star, b_star = w.clone(), b.clone()
    losses = []
    for _ in range(3):  # from step 2 on w != w*, so the localization term is exercised too
        idx = torch.randint(len(x), (m,), generator=gen)
        residual = x[idx] @ w.T + b - y[idx]
        losses.append((residual**2).mean().item())
        grad_w = 2 * residual.T @ x[idx] / residual.numel()
        grad_b = 2 * residual.sum(0) / residual.numel()
        noise = torch.randn(w.numel() + b.numel(), generator=gen)
        xi_w, xi_b = noise[: w.numel()].view_as(w), noise[w.numel():]
        w = w - eps / 2 * p_weight * (nbeta * grad_w + gamma * (w - w_star)) + math.sqrt(eps * p_weight) * xi_w
        b = b - eps / 2 * p_bias * (nbeta * grad_b + gamma * (b - b_star)) + (eps * p_bias).sqrt() * xi_b

    np.testing.assert_allclose(res.loss_trace[0], losses, rtol=1e-5)
    assert res.preconditioner == {"kind": "fixed", "per_tensor": {
        "weight": 4.0, "bias": {"mean": pytest.approx(1.625), "min": 0.25, "max": 3.0}}}
    assert res.to_dict()["preconditioner"]["kind"] == "fixed"


def test_sequence_and_dict_forms_agree():
    model, x, y = _affine_problem(n=200)
    kw = dict(epsilon=1e-4, num_steps=50, num_chains=2, batch_size=16, seed=1)
    a = estimate_llc(model, nn.functional.mse_loss, (x, y), preconditioner=[9.0, 1.0], **kw)
    b = estimate_llc(model, nn.functional.mse_loss, (x, y), preconditioner={"weight": 9.0}, **kw)
    c = estimate_llc(model, nn.functional.mse_loss, (x, y), **kw)
    np.testing.assert_allclose(a.loss_trace, b.loss_trace, rtol=1e-6)
    assert not np.allclose(a.loss_trace, c.loss_trace)


def test_sgld_optimizer_group_preconditioner_equals_hand_computation():
    model, x, y = _affine_problem()
    w_star, b_star = model.weight.detach().clone(), model.bias.detach().clone()
    eps, nbeta, gamma = 1e-2, 10.0, 3.0
    opt = SGLD([{"params": [model.weight], "preconditioner": 0.5}, {"params": [model.bias]}],
               epsilon=eps, nbeta=nbeta, gamma=gamma, generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        gw, gb = model.weight.grad.clone(), model.bias.grad.clone()
        replay = torch.Generator()
        replay.set_state(opt.generator.get_state())
        xi_w, xi_b = torch.randn(w0.shape, generator=replay), torch.randn(b0.shape, generator=replay)
        opt.step()
        torch.testing.assert_close(model.weight.detach(), w0 - eps / 2 * 0.5 * (nbeta * gw + gamma * (w0 - w_star))
                                   + math.sqrt(eps * 0.5) * xi_w)
        torch.testing.assert_close(model.bias.detach(), b0 - eps / 2 * (nbeta * gb + gamma * (b0 - b_star))
                                   + math.sqrt(eps) * xi_b)


def _relu_net_and_data(n: int = 2000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = MLP(3, [6], 2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.rand(n, 3, generator=g) * 4 - 2
    with torch.no_grad():
        y = model(x)
    return model, x, y


def _rescaled(model: MLP, alpha: float) -> MLP:
    out = MLP(3, [6], 2)
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        out.net[0].weight.mul_(alpha)
        out.net[0].bias.mul_(alpha)
        out.net[2].weight.div_(alpha)
    return out


@pytest.mark.slow
def test_matching_preconditioner_makes_lambdahat_invariant_under_rescaling():
    # With P = A² for w ↦ Aw the rescaled chain is the image of the original one (same noise), so
    # λ̂ agrees up to float32 rounding amplified along the chain (tolerance 1e-3 relative).
    model, x, y = _relu_net_and_data()
    kw = dict(epsilon=1e-5, gamma=0.0, num_steps=600, num_chains=2, batch_size=100, seed=0)
    base = estimate_llc(model, nn.functional.mse_loss, (x, y), **kw)
    alpha = 1e3
    scaled = _rescaled(model, alpha)
    p = {"net.0.weight": alpha**2, "net.0.bias": alpha**2, "net.2.weight": alpha**-2}
    res = estimate_llc(scaled, nn.functional.mse_loss, (x, y), preconditioner=p, **kw)
    assert res.lambdahat == pytest.approx(base.lambdahat, rel=1e-3)
    # The Metropolis acceptance of the proposals is invariant too (it is computed in the P⁻¹ metric).
    assert res.mala_acceptance == pytest.approx(base.mala_acceptance, abs=1e-3)
    # Without P the same ε is a different sampler in the new coordinates: λ̂ moves by far more than 1e-3
    # (measured: every chain diverges at step 1 at α = 1e3).
    with pytest.warns(RuntimeWarning, match="diverged"):
        plain = estimate_llc(scaled, nn.functional.mse_loss, (x, y), **kw)
    assert plain.diverged or abs(plain.lambdahat - base.lambdahat) > 0.05 * base.lambdahat


@pytest.mark.slow
def test_fixed_preconditioner_recovers_known_lambda():
    # Minimally singular d = 20, r = 2: λ = 1. P varies per coordinate, 0.5 to 2; constant P keeps
    # the posterior, so λ̂ stays at λ. Measured: λ̂ = 0.98 (4 chains × 3000 steps). Tolerance 10%.
    model = MinimallySingular(d=20, r=2)
    p = torch.linspace(0.5, 2.0, 20)
    res = estimate_llc(model, model.loss_fn, toy_data(10_000), epsilon=2e-5, num_steps=3000, num_chains=4,
                       num_burnin_steps=500, seed=0, preconditioner=[p])
    assert res.lambdahat == pytest.approx(1.0, rel=0.10)
    assert res.preconditioner["per_tensor"]["w"]["max"] == pytest.approx(2.0)


@pytest.mark.slow
def test_rmsprop_preconditioner_recovers_known_lambda():
    # Same model with RMSProp-adaptive P (mean 1, decay 0.999); it shrinks P along the two stiff
    # coordinates, so ε is 20x the plain run's. Measured: λ̂ = 1.011. Tolerance 10%.
    model = MinimallySingular(d=20, r=2)
    res = estimate_llc(model, model.loss_fn, toy_data(10_000), epsilon=4e-4, num_steps=4000, num_chains=4,
                       num_burnin_steps=2000, seed=0, preconditioner="rmsprop")
    assert res.lambdahat == pytest.approx(1.0, rel=0.10)
    rec = res.preconditioner
    assert rec["kind"] == "rmsprop" and rec["decay"] == 0.999 and rec["damping"] == 0.1
    assert rec["final_mean_per_tensor"]["w"] == pytest.approx(1.0, rel=1e-5)  # normalised to mean 1


@pytest.mark.parametrize("spec, message", [
    ({"nope": 2.0}, "unknown parameter 'nope'"),
    ([2.0], "has 1 entries but the model has 2"),
    ({"weight": -1.0}, "preconditioner\\['weight'\\] must be a finite number > 0"),
    ({"bias": torch.ones(3)}, "tensor of shape \\(2,\\)"),
    ({"bias": torch.tensor([1.0, 0.0])}, "> 0 everywhere"),
    (3.0, "must be None, 'rmsprop'"),
    ("adam", "unknown preconditioner 'adam'"),
    (torch.ones(8), "must be None, 'rmsprop'"),
])
def test_bad_preconditioner_is_explained(spec, message):
    model, x, y = _affine_problem()
    with pytest.raises(ValueError, match=message):
        estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=1e-4, num_steps=2, batch_size=5,
                     preconditioner=spec)


def test_preconditioner_refuses_auto_epsilon_and_bad_rmsprop_settings():
    model, x, y = _affine_problem()
    with pytest.raises(ValueError, match="epsilon='auto' calibrates the step for P = I"):
        estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon="auto", preconditioner="rmsprop")
    with pytest.raises(ValueError, match="decay must be in \\[0, 1\\)"):
        RMSPropPreconditioner(decay=1.0)
    with pytest.raises(ValueError, match="damping must be a finite number > 0"):
        RMSPropPreconditioner(damping=0.0)
