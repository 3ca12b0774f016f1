"""One SGLD chain step against one training step, side by side, on a width-16 ResNet18 with BatchNorm.

What a λ̂ checkpoint of expt_llc_curve.py costs per SGLD step, against the training step it
interrupts: the same network (ResNet18, base width 16 = width_factor 0.25, BatchNorm), the same
minibatch size, the same CIFAR-shaped inputs. The training step is model.train(), forward,
cross-entropy, backward, SGD update; the SGLD step is ``estimate_llc`` with one chain (eval-mode
BatchNorm, Gaussian noise, localisation, the default MALA check every 50 steps), timed by its
``wall_time``. Rounds alternate the two so that machine load hits both alike; the median ratio
is printed. Target: ≤ 1.15.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_llc_curve.py                 # CPU, batch 32
    .venv/bin/python benchmarks/bench_llc_curve.py --device cuda --batch 512 --steps 50
"""

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import make_model  # noqa: E402
from sgld import estimate_llc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32, help="minibatch of both steps")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="alternating blocks of each")
    parser.add_argument("--width", type=int, default=16, help="ResNet18 base width")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    gen = torch.Generator().manual_seed(0)
    n = max(1024, 4 * args.batch)
    x = torch.randn(n, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make_model("resnet18", width_factor=args.width / 64).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def train_block() -> float:
        model.train()
        idx = torch.randint(0, n, (args.steps, args.batch), generator=gen).to(device)
        sync()
        start = time.perf_counter()
        for t in range(args.steps):
            loss = F.cross_entropy(model(x[idx[t]]), y[idx[t]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync()
        return (time.perf_counter() - start) / args.steps

    def sgld_block(seed: int) -> float:
        res = estimate_llc(model, F.cross_entropy, (x, y), epsilon=1e-7, gamma=1.0, num_steps=args.steps,
                           num_chains=1, batch_size=args.batch, seed=seed)
        sync()
        return res.wall_time / args.steps

    # Chains of a few steps at a random network cannot settle; the estimator's warning says so each block.
    warnings.filterwarnings("ignore", message="the loss trace has not settled")
    train_block(), sgld_block(0)  # warm-up: allocator, kernels, first-call overheads
    ratios, train_s, sgld_s = [], [], []
    for r in range(args.rounds):
        a = train_block()
        b = sgld_block(r + 1)
        train_s.append(a)
        sgld_s.append(b)
        ratios.append(b / a)
        print(f"round {r}: training step {a * 1e3:.1f} ms, SGLD chain step {b * 1e3:.1f} ms, ratio {b / a:.3f}")
    d = sum(p.numel() for p in model.parameters())
    print(f"ResNet18 width {args.width} (d = {d:,}), batch {args.batch}, {args.device}, "
          f"{torch.get_num_threads()} thread(s): training step {statistics.median(train_s) * 1e3:.1f} ms, "
          f"SGLD chain step {statistics.median(sgld_s) * 1e3:.1f} ms, "
          f"median ratio {statistics.median(ratios):.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
