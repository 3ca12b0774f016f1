"""Cost of curvature.py's Hessian-vector products against a gradient, and of a top-20 Lanczos at d ≈ 1e5.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_curvature.py

Prints, side by side, the median time of one full-data gradient (torch.autograd) and of one
Hessian-vector product (curvature.hessian_operator, double backward; the first at w, and again at
the same w, where the gradient's graph is reused), their ratio, the per-vector
cost of a batch of 32 products, the same for curvlinops' HessianLinearOperator (the library
product curvature.py used before), and the seconds and number of products for the top-20
eigenpairs by Lanczos (curvature.top_eigs_lanczos, scipy eigsh) of an MLP 784 → 125 → 10
(99,385 parameters) on 1,000 random inputs.
"""

import statistics
import time

import torch
from curvlinops import HessianLinearOperator
from torch import nn

import curvature
from models.mlp import MLP


def median_time(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the MLP's initialisation
    model = MLP(784, [125], 10)
    x, y = torch.randn(1000, 784, generator=g), torch.randint(10, (1000,), generator=g)
    d = sum(p.numel() for p in model.parameters())
    loss_fn = nn.functional.cross_entropy

    def gradient():
        model.zero_grad()
        loss_fn(model(x), y).backward()

    H = curvature.hessian_operator(model, loss_fn, (x, y))
    v = torch.randn(d, generator=g)
    V = torch.randn(d, 32, generator=g)
    t_grad = median_time(gradient)
    t_hvp = median_time(lambda: curvature.hessian_operator(model, loss_fn, (x, y)) @ v)  # first product at w
    t_again = median_time(lambda: H @ v)  # at the same w again: the gradient's graph is reused
    t_hvp32 = median_time(lambda: H @ V, repeats=3) / 32
    print(f"MLP 784-125-10, d = {d}, n = 1000, torch threads = {torch.get_num_threads()}")
    print(f"{'gradient':>22}: {t_grad * 1e3:8.1f} ms")
    print(f"{'HVP (1 vector)':>22}: {t_hvp * 1e3:8.1f} ms   ratio HVP / gradient = {t_hvp / t_grad:.2f}")
    print(f"{'HVP (1, same w)':>22}: {t_again * 1e3:8.1f} ms   ratio {t_again / t_grad:.2f}  (as in Lanczos)")
    print(f"{'HVP (batch of 32)':>22}: {t_hvp32 * 1e3:8.1f} ms per vector, ratio {t_hvp32 / t_grad:.2f}")
    ref = HessianLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), [(x, y)],
                                check_deterministic=False)
    t_ref = median_time(lambda: ref @ v, repeats=3)
    t_ref32 = median_time(lambda: ref @ V, repeats=1) / 32
    print(f"{'curvlinops HVP (1)':>22}: {t_ref * 1e3:8.1f} ms   ratio {t_ref / t_grad:.2f}")
    print(f"{'curvlinops HVP (32)':>22}: {t_ref32 * 1e3:8.1f} ms per vector, ratio {t_ref32 / t_grad:.2f}")
    products = [0]
    matmul = curvature.HessianOperator.__matmul__

    def counted(self, w):
        products[0] += 1 if w.ndim == 1 else w.shape[1]
        return matmul(self, w)

    curvature.HessianOperator.__matmul__ = counted
    t0 = time.perf_counter()
    vals, _ = curvature.top_eigs_lanczos(H, 20, tol=1e-4)
    t_lanczos = time.perf_counter() - t0
    curvature.HessianOperator.__matmul__ = matmul
    print(f"{'top-20 Lanczos':>22}: {t_lanczos:8.1f} s   ({products[0]} products; λ₁ = {vals[0]:.4g}, "
          f"λ₂₀ = {vals[-1]:.4g})")

if __name__ == "__main__":
    main()
