#!/usr/bin/env bash
# λ̂ of a deep linear network at the paper's largest scale (Furman & Lau 2024, §4): d ≥ 1e8
# parameters, n = 1e6 realisable samples made on the fly, on one GPU. Needs only torch and numpy
# (it imports sgld.py and models/dln.py from this repository, which import nothing else).
#
#   bash benchmarks/gpu_scale.sh                                # 4 layers of width 5000: d = 1.0e8
#   SCALE=tiny bash benchmarks/gpu_scale.sh                     # ~30 s on a CPU: checks the script
#   STEPS=20000 CHAINS=8 EPSILON=2e-6 bash benchmarks/gpu_scale.sh
#
# Knobs (environment): SCALE (paper | tiny), WIDTH, LAYERS, RANK, N, STEPS (burn-in is the first
# half), CHAINS, BATCH, EPSILON (a number or "auto" for sgld.calibrate_epsilon), SEED, PYTHON.
# Prints λ̂, the true λ (Aoyagi 2024), the relative error, wall time and peak GPU memory.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" - <<'PY'
import math
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
from models.dln import DLN, true_lambda  # noqa: E402
from sgld import estimate_llc  # noqa: E402

tiny = os.environ.get("SCALE", "paper") == "tiny"
env = lambda key, paper, small: type(paper)(os.environ.get(key, small if tiny else paper))  # noqa: E731
width, layers, n = env("WIDTH", 5000, 8), env("LAYERS", 4, 4), env("N", 1_000_000, 10_000)
rank, steps, chains = env("RANK", 500, 2), env("STEPS", 10_000, 20_000), env("CHAINS", 4, 4)
batch, seed = env("BATCH", 500, 100), env("SEED", 0, 0)
epsilon = os.environ.get("EPSILON", "auto")
epsilon = epsilon if epsilon == "auto" else float(epsilon)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if device.type == "cpu" and not tiny:
    sys.exit("no GPU found: the paper-scale run needs one (SCALE=tiny runs a small check on the CPU)")
if device.type == "cpu":
    torch.set_num_threads(1)  # the small check is overhead-bound; on a shared CPU more threads only contend
torch.manual_seed(seed)  # only for nn.Linear's default init, overwritten by the teacher below
gen = torch.Generator(device=device).manual_seed(seed)


def orthonormal(rows: int, cols: int) -> torch.Tensor:
    """Haar-random orthonormal columns: QR of a Gaussian with the sign fix (as models.dln's low_rank)."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=gen, device=device, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).masked_fill(torch.diagonal(r) == 0, 1.0)


# Teacher on the most singular stratum of rank r (models.dln.make_true_params "low_rank", built here
# on the device with thin QRs, since full 5000 x 5000 ones on the CPU take minutes):
# W_k = Q_{k+1} O_k Q_k^T, every layer and the product of rank exactly r.
start = time.perf_counter()
dims = [width] * (layers + 1)
qs = [orthonormal(h, rank) for h in dims]
model = DLN(width, [width] * layers).to(device)
model.set_matrices([(qs[k + 1] @ orthonormal(rank, rank) @ qs[k].T).float() for k in range(layers)])
del qs
d = sum(p.numel() for p in model.parameters())
lam, mult = true_lambda(rank, width, [width] * layers)

M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    lo, hi = x & 0xFFFF, x >> 16  # 16-bit halves: no int64 product passes 2^48
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons): a bijective 32-bit mixer, on int64 tensors holding [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class OnTheFly:
    """n samples x_i uniform on [-10, 10]^H (the paper's inputs), y_i = W* x_i, made per batch.

    x_ij is a hash of (seed, i, j), so a sample is the same every time it is drawn and memory is
    O(batch · H) however large n is (n · H floats would be 20 GB here).
    """

    def __init__(self, teacher: torch.Tensor, n: int, seed: int) -> None:
        self.teacher, self.n = teacher, n
        self.cols = torch.arange(teacher.shape[1], device=teacher.device, dtype=torch.int64)
        self.key = int(_hash32(torch.tensor(seed & M32)))

    def __len__(self) -> int:
        return self.n

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        row = _hash32(idx.to(torch.int64) ^ self.key)
        u = ((_hash32(row[:, None] ^ self.cols) >> 8).to(torch.float32) + 0.5) * 2.0**-24
        x = 20.0 * u - 10.0
        return x, x @ self.teacher.T


with torch.no_grad():
    data = OnTheFly(model.product(), n, seed)
setup = time.perf_counter() - start
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
print(f"DLN {layers} x {width}, d = {d:.3g}, rank {rank}, n = {n:.3g}, batch {batch}, {chains} chains, "
      f"{steps} steps, device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; "
      f"teacher in {setup:.1f} s", flush=True)
start = time.perf_counter()
res = estimate_llc(model, torch.nn.functional.mse_loss, data, epsilon=epsilon, num_steps=steps,
                   num_burnin_steps=steps // 2, num_chains=chains, batch_size=batch, seed=seed, device=device)
if device.type == "cuda":
    torch.cuda.synchronize()
wall = time.perf_counter() - start
peak = (f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU" if device.type == "cuda"
        else f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (CPU)")
print(res)
print(f"lambdahat {res.lambdahat:.6g}  true lambda {lam:g} (multiplicity {mult})  "
      f"relative error {(res.lambdahat - lam) / lam:+.2%}")
print(f"epsilon {res.epsilon:.3g}  sampling {res.wall_time:.1f} s ({res.wall_time / (steps * chains) * 1e3:.2f} ms "
      f"per chain-step)  total {wall:.1f} s  peak memory {peak}")
PY
