"""The one-process baseline of the distributed Hessian sketch: the same sketch in one process, timed, and compared.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hessian_sketch.py --store outputs/hs_mnist1d_store \
        --step 1500 --data_name mnist1d --num_data 1000 --hidden_widths 1000,1000 --num_measurements 512 \
        --num_inner 640 --block_size 64 --k 200

Loads the parameters that ``expt_hessian_sketch.py stage=train`` saved at ``--step``, builds the full-data
Hessian as the experiment does, runs ``curvature.top_eigs_sketched(recovery="oversampled")`` (skerch's seigh,
all s + s_i products in this process) with the seed the distributed stages use, and compares its top-k
eigenpairs with those the solve stage merged from the blocks (``SketchStore.eigenpairs_path``). Prints one
JSON line: wall time, peak RSS, the largest relative eigenvalue difference and the largest principal angle.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import curvature  # noqa: E402
from expt_hessian_sketch import hessian_at, setup  # noqa: E402
from sketch_store import SketchStore, sketch_seed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("--data_name", default="mnist1d")
    parser.add_argument("--num_data", type=int, default=1000)
    parser.add_argument("--hidden_widths", default="1000,1000")
    parser.add_argument("--num_measurements", type=int, default=512)
    parser.add_argument("--num_inner", type=int, default=640)
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    widths = [int(h) for h in args.hidden_widths.split(",")]
    model, xy, spec = setup(torch.device("cpu"), data_name=args.data_name, num_data=args.num_data,
                            hidden_widths=widths, seed=args.seed)
    store = SketchStore(args.store)
    w, _ = store.load_params(args.step, spec)
    H = hessian_at(model, xy, w)
    t0 = time.perf_counter()
    vals, vecs = curvature.top_eigs_sketched(H, args.k, num_measurements=args.num_measurements,
                                             seed=sketch_seed(args.seed, args.step), block=args.block_size,
                                             recovery="oversampled", num_inner=args.num_inner)
    wall = time.perf_counter() - t0
    merged = torch.load(store.eigenpairs_path(args.step), weights_only=True)
    k = min(args.k, len(merged["eigenvalues"]))
    eig = float(((merged["eigenvalues"][:k].double() - vals[:k].double()).abs() / vals[:k].double().abs()).max())
    angle = float(curvature.principal_angles(merged["eigenvectors"][:, :k], vecs[:, :k]).max())
    print(json.dumps({"step": args.step, "model_dim": spec["model_dim"], "one_process_sketch_s": round(wall, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "k": k, "max_rel_eigenvalue_difference": eig, "max_principal_angle_rad": angle}))


if __name__ == "__main__":
    main()
