"""curvature.py against known answers: quadratics of chosen spectrum, the minimally singular model, a DLN.

Tolerances: float32 Hessian-vector products are exact to about 1e-6 relative, so eigenvalues from
Lanczos, dense or saturated sketches are asserted to 1e-4 relative and subspaces to 1e-3 rad;
stochastic estimates (Hutchinson, SLQ counts) within 4 of their own standard errors.
"""

import math

import numpy as np
import pytest
import torch
from torch.func import jacrev

import curvature as cv
from experiment import generators, int_seed, mse_loss
from expt_dln import ex
from models.dln import DLN, SyntheticDLNData, make_true_params
from models.toy import MinimallySingular, toy_data


def rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def quadratic(eigenvalues, seed=0):
    lam = torch.tensor(eigenvalues, dtype=torch.float32)
    model = cv.Quadratic(lam, rotation(len(lam), seed))
    return model, cv.hessian_operator(model, model.loss_fn, toy_data(7)), lam, rotation(len(lam), seed)


SPECTRUM = [10.0, -6.0, 3.0, 1.0, 0.5] + [0.0] * 55  # rank 5, indefinite, d = 60


def test_full_hessian_and_hvp_are_the_quadratic_form():
    model, H, lam, u = quadratic(SPECTRUM)
    a = (u.double() * lam.double()) @ u.double().T
    assert torch.allclose(cv.full_hessian(H), a, atol=1e-5)
    v = torch.randn(60, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(cv.hvp(H, v, block=2).double(), a @ v.double(), atol=1e-4)
    # the mean over batches of different sizes is the full-data Hessian: batch size does not matter
    H1 = cv.hessian_operator(model, model.loss_fn, toy_data(7), batch_size=3)
    assert torch.allclose(cv.full_hessian(H1), a, atol=1e-5)


def test_hvp_of_a_network_matches_curvlinops_and_follows_the_parameters():
    # A tanh MLP under cross-entropy (nonzero third derivatives, so H depends on w): the hand-written
    # double-backward product against curvlinops' forward-over-reverse one, with one batch (the cached
    # gradient graph) and with three (the |B|/n weighting), before and after an SGD step.
    from curvlinops import HessianLinearOperator

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x, y = torch.randn(50, 5, generator=g), torch.randint(3, (50,), generator=g)
    loss = torch.nn.functional.cross_entropy
    v = torch.randn(sum(p.numel() for p in model.parameters()), 4, generator=g)
    H1, H3 = cv.hessian_operator(model, loss, (x, y)), cv.hessian_operator(model, loss, (x, y), batch_size=20)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        ref = HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), list(model.parameters()), [(x, y)],
                                    check_deterministic=False) @ v
        scale = ref.abs().max()
        for H in (H1, H3):
            assert torch.allclose(H @ v, ref, atol=1e-5 * scale)
            assert torch.allclose(H @ v[:, 1], ref[:, 1], atol=1e-5 * scale)
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    assert not torch.allclose(ref, H1 @ v, atol=1e-3 * scale)  # the step changed H, and H1 saw it


def test_hutchinson_trace_within_its_standard_error():
    _, H, lam, _ = quadratic(SPECTRUM, seed=2)
    est = cv.hutchinson_trace(H, 400, torch.Generator().manual_seed(0))
    assert est.estimate == pytest.approx(float(lam.sum()), abs=4 * est.std_error)
    assert 0 < est.std_error < 0.15 * float(lam.abs().sum())


def test_lanczos_and_sketch_find_the_chosen_eigenpairs():
    _, H, lam, u = quadratic(SPECTRUM, seed=3)
    want = torch.tensor([10.0, -6.0, 3.0], dtype=torch.float64)
    vals, vecs = cv.top_eigs_lanczos(H, 3)
    assert torch.allclose(vals, want, rtol=1e-4)
    assert cv.grassmann_distances(vecs, u[:, :3].double())["geodesic"] < 1e-3
    # rank 5 < 16 measurements: the sketch is exact
    svals, svecs = cv.top_eigs_sketched(H, 3, num_measurements=16)
    assert torch.allclose(svals.double(), want, rtol=1e-4)
    assert cv.grassmann_distances(svecs, u[:, :3])["geodesic"] < 1e-3
    evals, evecs = cv.top_eigs_exact(cv.full_hessian(H), 3)
    assert torch.allclose(evals, want, rtol=1e-4)


def test_single_pass_sketch_is_exact_below_its_size_and_checks_its_sizes():
    _, H, lam, u = quadratic(SPECTRUM, seed=4)
    want = torch.tensor([10.0, -6.0, 3.0, 1.0], dtype=torch.float64)
    # rank 5 < s = 12 < s_i = 24: Y spans range H and the core least squares is exact
    svals, svecs = cv.top_eigs_sketched(H, 4, num_measurements=12, recovery="oversampled", num_inner=24, block=5)
    assert torch.allclose(svals.double(), want, rtol=1e-4)
    assert cv.grassmann_distances(svecs, u[:, :4])["geodesic"] < 1e-3
    with pytest.raises(ValueError, match=r"need num_measurements=12 < num_inner <= d=60.*got num_inner=12"):
        cv.top_eigs_sketched(H, 4, num_measurements=12, recovery="oversampled", num_inner=12)
    with pytest.raises(ValueError, match="unknown recovery 'nystrom'; choose from"):
        cv.top_eigs_sketched(H, 4, recovery="nystrom")


def test_principal_angles_resolve_small_angles_of_float32_bases():
    a = rotation(300, 1)[:, :8]  # float32: orthonormal to about 1e-7
    # the same span in another float32 basis: every angle is round-off (the cosine formula alone gives 4e-4)
    b = (a.double() @ rotation(8, 2).double()).float()
    assert float(cv.principal_angles(a, b).max()) < 1e-6
    c = a.double().clone()
    c[:, 0] = math.cos(1e-5) * c[:, 0] + math.sin(1e-5) * rotation(300, 1)[:, 8].double()
    assert cv.principal_angles(a.double(), c)[-1].item() == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("low", [-1.0, -5.0])
def test_top_eigs_exact_by_magnitude_with_and_without_the_partial_solver(low):
    # d = 200, k = 20: spectrum [low, 5] puts only positive eigenvalues in the top 20 by magnitude when
    # low = -1 (the partial MRRR solve, certified by Cholesky), and negative ones when low = -5 (fallback).
    u, _ = torch.linalg.qr(torch.randn(200, 200, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    lam = torch.linspace(low, 5.0 if low == -1.0 else 1.0, 200, dtype=torch.float64)
    vals, vecs = cv.top_eigs_exact((u * lam) @ u.T, 20)
    order = torch.argsort(lam.abs(), descending=True)[:20]
    assert torch.allclose(vals, lam[order], atol=1e-10)
    assert cv.grassmann_distances(vecs, u[:, order])["geodesic"] < 1e-6


def test_hessian_rank_by_each_method():
    _, H, _, _ = quadratic(SPECTRUM, seed=4)
    assert cv.hessian_rank(H, method="dense").rank == 5
    sketch = cv.hessian_rank(H, method="sketch")
    assert sketch.rank == 5 and sketch.certified
    slq = cv.hessian_rank(H, method="slq", slq_probes=64, slq_steps=20)
    assert abs(slq.rank - 5) <= max(4 * slq.std_error, 0.5) and slq.std_error > 0
    with pytest.raises(ValueError, match="unknown rank method 'qr'"):
        cv.hessian_rank(H, method="qr")


def test_slq_is_exact_for_three_distinct_eigenvalues():
    _, H, _, _ = quadratic([4.0] * 10 + [1.0] * 20 + [0.0] * 30, seed=5)
    sd = cv.spectral_density(H, num_probes=40, num_steps=30, generator=torch.Generator().manual_seed(0))
    assert sd.invariant  # Lanczos stops after three steps
    finite = sd.nodes[np.isfinite(sd.nodes)].reshape(40, 3)
    assert np.allclose(finite, [0.0, 1.0, 4.0], atol=1e-4)
    assert np.allclose(np.nansum(sd.weights, axis=1), 1.0)
    count, se = sd.count_above(2.0)
    assert count == pytest.approx(10, abs=4 * se) and se > 0
    grid = np.linspace(-1, 5, 3001)
    assert np.trapezoid(sd.density(grid, 0.05), grid) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("d,r", [(3000, 40), (3000, 3000)])
def test_minimally_singular_rank_trace_and_eigenvalues(d, r):
    model = MinimallySingular(d, r)
    H = cv.hessian_operator(model, model.loss_fn, toy_data(100))
    tr = cv.hutchinson_trace(H, 8, torch.Generator().manual_seed(0))
    assert tr.estimate == pytest.approx(2 * r, rel=1e-5) and tr.std_error < 1e-3  # diagonal H: exact
    vals, _ = cv.top_eigs_lanczos(H, 3)
    assert torch.allclose(vals, torch.full((3,), 2.0, dtype=torch.float64), rtol=1e-5)
    sketch = cv.hessian_rank(H, method="sketch")
    slq = cv.hessian_rank(H, method="slq")
    assert sketch.rank == r and sketch.certified
    assert slq.rank == r and slq.std_error < 1e-6  # axis-aligned eigenvectors: Rademacher probes agree
    if r < d:
        assert cv.hessian_rank(H, method="dense").rank == r


def test_dln_hessian_at_the_teacher_is_gauss_newton():
    # At a realisable teacher the residual is zero, so H = (2 / (n·o)) JᵀJ: rank H = rank J =
    # r(H₁ + H_{N+1} − r) and the eigenvalues are 2σ_i² / (n·o).
    g = torch.Generator().manual_seed(0)
    h1, widths, r, n = 4, [5, 3, 6], 2, 40
    model = DLN(h1, widths).set_matrices(make_true_params(h1, widths, "low_rank", rank=r, generator=g))
    x, y = SyntheticDLNData(model.product(), n, seed=0).get_batch(torch.arange(n))
    H = cv.hessian_operator(model, mse_loss, (x, y))
    assert cv.hessian_rank(H, method="dense").rank == r * (h1 + widths[-1] - r) == 16
    assert cv.hessian_rank(H, method="sketch").rank == 16
    w, forward = cv.flat_function(model, x)
    sv = torch.linalg.svdvals(jacrev(lambda v: forward(v).reshape(-1))(w).double())
    want = 2 * sv[:4] ** 2 / (n * widths[-1])
    vals, _ = cv.top_eigs_lanczos(H, 4, which="LA")
    assert torch.allclose(vals, want, rtol=1e-4)
    info, _ = cv.functional_rank(model, x)
    assert info["functional_rank"] == 16


@pytest.mark.slow
def test_mask_overlap_and_grassmann_distances():
    d, k = 200, 10
    w = torch.linspace(-1, 1, d)
    idx = cv.magnitude_mask(w, k)
    assert set(idx.tolist()) == set(range(5)) | set(range(195, 200))
    eye = torch.eye(d)
    same = cv.mask_overlap(eye[:, idx], idx)
    assert same["overlap"] == pytest.approx(1.0) and same["geodesic"] < 1e-6
    orth = cv.mask_overlap(eye[:, 50:60], idx)
    assert orth["overlap"] == pytest.approx(0.0) and orth["geodesic"] == pytest.approx(math.sqrt(k) * math.pi / 2)
    # a random k-subspace: E[overlap] = k/d; 200 draws put the mean within 5% of it
    rand = [cv.mask_overlap(rotation(d, s)[:, :k], idx)["overlap"] for s in range(200)]
    assert np.mean(rand) == pytest.approx(k / d, rel=0.05)
    # a rotation by θ in one plane moves the subspace by geodesic distance θ
    a = eye[:, :3].double()
    b = a.clone()
    b[:, 0] = math.cos(0.3) * eye[:, 0].double() + math.sin(0.3) * eye[:, 5].double()
    dist = cv.grassmann_distances(a, b)
    assert dist["geodesic"] == pytest.approx(0.3) and dist["chordal"] == pytest.approx(math.sin(0.3))
    with pytest.raises(ValueError, match="the mask has 10 entries but Q has 3 columns"):
        cv.mask_overlap(a, idx)


@pytest.mark.filterwarnings("ignore:the loss trace has not settled")
def test_expt_dln_records_top_eigs_and_mask_overlap_at_w_star():
    tiny = {"input_dim": 3, "layer_widths": [4, 2], "num_training_data": 200,
            "sgld_config": {"epsilon": 1e-4, "num_steps": 20, "num_chains": 2, "batch_size": 20},
            "num_top_eigs": 3, "mask_overlap_k": 2, "seed": 0}
    info = ex.run(config_updates=tiny).info["curvature_info"]
    # the same teacher and data as the run (expt_dln.run's generators), then the dense answer
    g_teacher, g_data = generators(0, 6)[:2]
    teacher = DLN(3, [4, 2]).set_matrices(make_true_params(3, [4, 2], "low_rank", rank=1, generator=g_teacher))
    data = SyntheticDLNData(teacher.product(), 200, seed=int_seed(g_data))
    dense = cv.full_hessian(cv.hessian_operator(teacher, mse_loss, data.get_batch(torch.arange(200))))
    vals, vecs = cv.top_eigs_exact(dense, 3)
    assert np.allclose(info["top_eigenvalues"], vals.numpy(), rtol=1e-4)
    idx = cv.magnitude_mask(cv.flat_params(teacher), 2)
    assert info["mask_overlap"]["overlap"] == pytest.approx(cv.mask_overlap(vecs[:, :2], idx)["overlap"], abs=1e-4)
    with pytest.raises(ValueError, match=r"num_top_eigs must be an int in \[0, d=20\)"):
        ex.run(config_updates={**tiny, "num_top_eigs": 20})
