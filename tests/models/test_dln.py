"""Tests for models/dln.py: Aoyagi's λ against independent formulas, teachers, on-the-fly data."""

import itertools
import math

import numpy as np
import pytest
import torch

from models import make_model
from models.dln import (
    DLN,
    TRUE_PARAM_METHODS,
    SyntheticDLNData,
    _hash32,
    _mul32,
    dln_ranks,
    make_true_params,
    true_lambda,
)


def rrr_lambda(m: int, h: int, n: int, r: int) -> tuple[float, int, int]:
    """Reduced-rank regression λ, multiplicity and case number (Aoyagi & Watanabe 2005, Thm 1).

    Written out from the paper independently of ``true_lambda``: input dim M, hidden H, output N,
    true rank r.
    """
    if n + r <= m + h and m + r <= n + h and h + r <= m + n:
        lam = (2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2) / 8
        if (m + h + n + r) % 2 == 0:
            return lam, 1, 1
        return lam + 1 / 8, 2, 1
    if m + h < n + r:
        return (h * m - h * r + n * r) / 2, 1, 2
    if n + h < m + r:
        return (h * n - h * r + m * r) / 2, 1, 3
    assert m + n < h + r
    return m * n / 2, 1, 4


def param_count(input_dim: int, layer_widths: list[int]) -> int:
    dims = [input_dim, *layer_widths]
    return sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))


# --------------------------------------------------------------------------- true_lambda


@pytest.mark.parametrize("h1,h2", [(1, 1), (3, 7), (10, 4)])
def test_one_layer_is_regular(h1: int, h2: int) -> None:
    for r in range(min(h1, h2) + 1):
        assert true_lambda(r, h1, [h2]) == (h1 * h2 / 2, 1)


def test_two_layers_match_reduced_rank_regression_in_all_four_cases() -> None:
    seen = set()
    for m, h, n in itertools.product(range(1, 8), repeat=3):
        for r in range(min(m, h, n) + 1):
            lam, mult, case = rrr_lambda(m, h, n, r)
            assert true_lambda(r, m, [h, n]) == pytest.approx((lam, mult)), (m, h, n, r)
            seen.add((case, mult))
    assert seen == {(1, 1), (1, 2), (2, 1), (3, 1), (4, 1)}


@pytest.mark.parametrize(
    "rank,input_dim,widths,expected",
    [
        # M = H − r = (4, 6, 3, 2): Σ = {2, 3, 4}, ℓ = 2, S = 9, a = 1 -> 13.5 + 1/8 − 81/8 + 13.
        (3, 7, [9, 6, 5], (16.5, 2)),
        # M = (10, 13, 8, 12, 6): Σ = {6, 8, 10, 12}, ℓ = 3, S = 36, a = 3 -> 18 − 216 + 238.
        (2, 12, [15, 10, 14, 8], (40.0, 1)),
        # M = (5, 5, 5, 5): Σ = all, ℓ = 3, S = 20, a = 2 -> 1/6 − 200/3 + 75.
        (0, 5, [5, 5, 5], (8.5, 2)),
        # A width-1 bottleneck 3→1→3 at 0: Σ = all, ℓ = 2, S = 7, a = 1 -> 1/8 − 49/8 + 15/2.
        (0, 3, [1, 3], (1.5, 2)),
        # Full rank everywhere: every M_k = 0, λ = (−r² + 2r²)/2 = r²/2 = d/N/2 for square layers.
        (4, 4, [4, 4, 4], (8.0, 1)),
    ],
)
def test_hand_checked_deeper_cases(rank: int, input_dim: int, widths: list[int], expected: tuple) -> None:
    assert true_lambda(rank, input_dim, widths) == pytest.approx(expected)


def test_lambda_is_at_most_half_the_parameter_count_and_positive() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        depth = int(rng.integers(1, 8))
        dims = [int(h) for h in rng.integers(1, 15, size=depth + 1)]
        r = int(rng.integers(0, min(dims) + 1))
        lam, mult = true_lambda(r, dims[0], dims[1:])
        d = param_count(dims[0], dims[1:])
        assert 0 <= lam <= d / 2 + 1e-9, (r, dims, lam, d)
        assert mult in (1, 2)
        # Theorem 1's λ is at least the dimension of the set of rank-r matrices divided by 2
        # ... over the regular part: r(H₁ + H_{N+1} − r)/2 is the first term of the formula.
        assert lam >= r * (dims[0] + dims[-1] - r) / 2 - 1e-9


def test_deep_lambda_stays_bounded_as_depth_grows() -> None:
    lams = [true_lambda(1, 6, [6] * depth)[0] for depth in (2, 5, 20, 80)]
    d = param_count(6, [6] * 80)
    assert lams[-1] < 0.05 * d / 2
    assert max(lams) - min(lams) < 10  # Aoyagi (2024): bounded in the number of layers


@pytest.mark.parametrize("bad", [-1, 4, 2.0, True])
def test_true_lambda_rejects_bad_rank(bad: object) -> None:
    with pytest.raises(ValueError, match="rank must be an int in \\[0, 3\\]"):
        true_lambda(bad, 3, [5, 4])


def test_true_lambda_rejects_bad_widths() -> None:
    with pytest.raises(ValueError, match="positive ints"):
        true_lambda(0, 3, [5, 0])


# --------------------------------------------------------------------------- DLN and teachers


def test_dln_forward_is_the_product() -> None:
    g = torch.Generator().manual_seed(1)
    model = DLN(4, [6, 3, 2]).set_matrices(make_true_params(4, [6, 3, 2], "random", generator=g))
    x = torch.randn(5, 4, generator=g)
    assert model.product().shape == (2, 4)
    torch.testing.assert_close(model(x), x @ model.product().T)
    assert sum(p.numel() for p in model.parameters()) == param_count(4, [6, 3, 2])
    assert all(layer.bias is None for layer in model.layers)
    assert isinstance(make_model("dln", input_dim=4, layer_widths=[3]), DLN)


def test_set_matrices_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"expected \[\(3, 4\)\]"):
        DLN(4, [3]).set_matrices([torch.zeros(4, 3)])


@pytest.mark.parametrize("seed", range(5))
def test_low_rank_puts_every_layer_at_rank_r(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    dims = [int(h) for h in torch.randint(2, 9, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g)]
    for r in [None, 0, min(dims) // 2, min(dims)]:
        ws = make_true_params(dims[0], dims[1:], "low_rank", rank=r, generator=g)
        product_rank, layer_ranks = dln_ranks(ws)
        expected = product_rank if r is None else r
        assert layer_ranks == [expected] * len(ws)
        assert product_rank == expected
        assert [tuple(w.shape) for w in ws] == [(b, a) for a, b in zip(dims[:-1], dims[1:], strict=True)]


def test_low_rank_layers_are_partial_isometries() -> None:
    ws = make_true_params(5, [6, 4, 7], "low_rank", rank=3, generator=torch.Generator().manual_seed(0))
    for w in ws:
        s = torch.linalg.svdvals(w.double())
        torch.testing.assert_close(s[:3], torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
        assert float(s[3:].max()) < 1e-5


def test_low_rank_draws_different_ranks_when_none() -> None:
    g = torch.Generator().manual_seed(0)
    ranks = {dln_ranks(make_true_params(6, [7, 5], "low_rank", generator=g))[0] for _ in range(40)}
    assert ranks == set(range(6))


def test_rand_rank_reduces_about_the_requested_share_of_layers() -> None:
    g = torch.Generator().manual_seed(0)
    widths = [8] * 200
    full = dln_ranks(make_true_params(8, widths, "rand_rank", prop_rank_reduce=0.0, generator=g))[1]
    assert full == [8] * 200
    reduced = dln_ranks(make_true_params(8, widths, "rand_rank", prop_rank_reduce=0.5, generator=g))[1]
    share = sum(rk < 8 for rk in reduced) / len(reduced)
    assert 0.35 < share < 0.65


def test_rand_rank_sv_uses_the_singular_value_gaussian() -> None:
    g = torch.Generator().manual_seed(0)
    ws = make_true_params(30, [30], "rand_rank_sv", prop_rank_reduce=0.0, mean=100.0, std=1.0, generator=g)
    s = torch.linalg.svdvals(ws[0].double())
    assert 95 < float(s.min()) and float(s.max()) < 105


def test_zero_and_random_teachers() -> None:
    g = torch.Generator().manual_seed(0)
    assert all((w == 0).all() for w in make_true_params(3, [4, 2], "zero", generator=g))
    w = make_true_params(400, [300], "random", generator=g)[0]
    assert float(w.var()) == pytest.approx(1 / 400, rel=0.05)


def test_make_true_params_is_deterministic_in_the_generator() -> None:
    for method in TRUE_PARAM_METHODS:
        a = make_true_params(5, [4, 3], method, generator=torch.Generator().manual_seed(3))
        b = make_true_params(5, [4, 3], method, generator=torch.Generator().manual_seed(3))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_unknown_method_names_accepted_values() -> None:
    with pytest.raises(
        ValueError, match="unknown true_param method 'lowrank'; choose from .*'rand_rank_sv', 'low_rank'"
    ):
        make_true_params(3, [2], "lowrank", generator=torch.Generator())


def test_low_rank_rejects_too_large_rank() -> None:
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\]"):
        make_true_params(3, [2, 5], "low_rank", rank=3, generator=torch.Generator())


# --------------------------------------------------------------------------- synthetic data


def test_mul32_and_hash_match_numpy_uint32_arithmetic() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, size=10_000, dtype=np.uint64)
    c = 0x846CA68B
    expected = (x.astype(np.uint32) * np.uint32(c)).astype(np.int64)  # wraps mod 2³²
    assert np.array_equal(_mul32(torch.from_numpy(x.astype(np.int64)), c).numpy(), expected)
    h = _hash32(torch.arange(100_000, dtype=torch.int64))
    assert int(h.min()) >= 0 and int(h.max()) < 2**32
    assert h.unique().numel() == 100_000  # a bijection has no collisions


def test_data_is_a_pure_function_of_seed_and_index() -> None:
    teacher = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    data = SyntheticDLNData(teacher, n=1000, seed=7)
    idx = torch.tensor([5, 999, 0, 5])
    x, y = data.get_batch(idx)
    assert torch.equal(x[0], x[3]) and not torch.equal(x[0], x[1])
    x2, _ = SyntheticDLNData(teacher, n=1000, seed=7).get_batch(torch.tensor([999]))
    assert torch.equal(x2[0], x[1])
    xi, yi = data[999]
    assert torch.equal(xi, x[1]) and torch.equal(yi, y[1])
    # y is x W*ᵀ rounded from float64, so it does not depend on how many rows the batch has:
    # any summation order (BLAS path, thread count, FMA) changes the float64 sum by at most
    # H₁·2⁻⁵³·Σ_j |x_j W*_kj| (Higham 2002, §3.1), and here every y lies farther than that from a
    # float32 rounding tie, so the rounded y is the same on every machine.
    torch.testing.assert_close(y, x @ teacher.T)
    y64 = x.double() @ teacher.double().T
    bound = 5 * 2.0**-53 * (x.double().abs() @ teacher.double().abs().T)
    lo = y.double()
    ulp = (torch.nextafter(y, torch.full_like(y, math.inf)) - y).double()
    tie_distance = torch.minimum((y64 - (lo - ulp / 2)).abs(), (y64 - (lo + ulp / 2)).abs())
    assert bool((tie_distance > bound).all())
    y_alone = torch.stack([data.get_batch(torch.tensor([int(i)]))[1][0] for i in idx])
    assert torch.equal(y_alone, y)
    other, _ = SyntheticDLNData(teacher, n=1000, seed=8).get_batch(idx)
    assert not torch.allclose(other, x)
    assert len(data) == 1000


def _np_hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32 in numpy's wrapping uint32 arithmetic: an independent reimplementation."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def _np_uniform_inputs(seed: int, idx: np.ndarray, input_dim: int) -> np.ndarray:
    """``uniform`` inputs x_i ∈ [−10, 10]^H₁ written out in numpy, as the class documents them."""
    mask = np.uint64(0xFFFFFFFF)
    seed64 = np.uint64(seed)
    k = _np_hash32(np.array([(seed64 & mask) ^ np.uint64(0x9E3779B9)]))
    key = _np_hash32(k ^ np.uint32(((seed >> 32) + 0x632BE5AB) & 0xFFFFFFFF))[0]  # stream 0
    counter = idx.astype(np.uint64)[:, None] * np.uint64(input_dim) + np.arange(input_dim, dtype=np.uint64)
    hi = _np_hash32((counter >> np.uint64(32)).astype(np.uint32) ^ key)
    h = _np_hash32(_np_hash32((counter & mask).astype(np.uint32) ^ hi) ^ key)
    u = ((h >> np.uint32(8)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-24)
    return np.float32(20.0) * u - np.float32(10.0)


@pytest.mark.parametrize("n", [1000, 2**40])  # counters below 2³², and counters using the high word
def test_inputs_are_bit_identical_to_integer_hashing_written_in_numpy(n: int) -> None:
    """x is exact integer arithmetic plus correctly rounded float32 steps: any device must match it.

    A GPU cannot be tested here; what makes it give the same bits as the CPU is that nothing in x
    depends on a library's or a device's choices, and a from-scratch numpy version checks that.
    """
    seed, input_dim = 2**40 + 12345, 37
    idx = np.array([0, 1, 2, n // 3, n - 2, n - 1], dtype=np.int64)
    x = SyntheticDLNData(torch.eye(input_dim), n=n, seed=seed).inputs(torch.from_numpy(idx))
    expected = _np_uniform_inputs(seed, idx, input_dim)
    assert np.array_equal(x.numpy().view(np.uint32), expected.view(np.uint32))


def test_batches_are_made_on_the_teachers_device() -> None:
    # "meta" tensors (shapes without values) stand in for a GPU: every operation must stay on the
    # teacher's device, and reading a value back to the host (a GPU synchronisation) would raise.
    for n in (100, 2**40):
        data = SyntheticDLNData(torch.eye(4, device="meta"), n=n, seed=0)
        for idx in (torch.arange(5), torch.arange(5, device="meta")):
            x, y = data.get_batch(idx)
            assert x.device.type == y.device.type == "meta" and x.shape == (5, 4) and y.dtype == torch.float32
    ball = SyntheticDLNData(torch.eye(4, device="meta"), n=100, input_dist="unit_ball", seed=0)
    assert ball.inputs(torch.arange(5, device="meta")).device.type == "meta"


def test_thin_qr_teacher_matches_the_full_qr() -> None:
    """make_true_params("low_rank") keeps r columns of a thin QR: the same as the full QR's first r."""
    from models.dln import _haar_orthogonal

    thin = _haar_orthogonal(30, torch.Generator().manual_seed(3), cols=4)
    full = _haar_orthogonal(30, torch.Generator().manual_seed(3))[:, :4]
    torch.testing.assert_close(thin, full, rtol=0, atol=1e-12)
    ws = make_true_params(6, [5, 4], "low_rank", rank=2, generator=torch.Generator().manual_seed(0), device="meta")
    assert [w.device.type for w in ws] == ["meta", "meta"]


def test_uniform_inputs_have_the_right_moments() -> None:
    data = SyntheticDLNData(torch.eye(50), n=10**6, seed=0)
    x = data.inputs(torch.arange(4000))
    assert float(x.min()) >= -10 and float(x.max()) <= 10
    assert float(x.mean()) == pytest.approx(0.0, abs=0.05)
    assert float(x.var()) == pytest.approx(100 / 3, rel=0.02)
    # no correlation between neighbouring coordinates or neighbouring samples
    assert abs(float(torch.corrcoef(torch.stack([x[:, 0], x[:, 1]]))[0, 1])) < 0.05
    assert abs(float(torch.corrcoef(torch.stack([x[:-1, 0], x[1:, 0]]))[0, 1])) < 0.05


def test_unit_ball_inputs_fill_the_ball() -> None:
    d = 10
    x = SyntheticDLNData(torch.eye(d), n=10**5, input_dist="unit_ball", seed=1).inputs(torch.arange(20_000))
    norms = x.norm(dim=1)
    assert float(norms.max()) <= 1 + 1e-5
    assert float((norms**2).mean()) == pytest.approx(d / (d + 2), rel=0.02)  # E‖x‖² in the ball
    cov = torch.cov(x.T)
    torch.testing.assert_close(cov, torch.eye(d) / (d + 2), atol=0.01, rtol=0)


def test_memory_does_not_grow_with_n() -> None:
    n = 2**40  # counters i·H₁ + j pass 2³², exercising the high word of the hash
    data = SyntheticDLNData(torch.eye(8), n=n, seed=0)
    x, _ = data.get_batch(torch.tensor([n - 1, n - 2, 2**29 + 3]))
    assert torch.isfinite(x).all() and x.unique().numel() == x.numel()
    assert all(not (isinstance(v, torch.Tensor) and v.numel() > 64) for v in vars(data).values())


def test_bad_data_arguments_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"unknown input_dist 'ball'; choose from \['uniform', 'unit_ball'\]"):
        SyntheticDLNData(torch.eye(2), n=3, input_dist="ball")
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        SyntheticDLNData(torch.eye(2), n=3).get_batch(torch.tensor([3]))
    assert math.isfinite(float(SyntheticDLNData(torch.eye(2), n=3)[-1][0].sum()))
