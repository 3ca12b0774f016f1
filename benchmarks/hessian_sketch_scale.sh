#!/bin/bash
# The distributed Hessian sketch at d ≈ 1e6 on this machine's SLURM, against one process (issue 20, item 4).
#
#   python tests/slurm_cluster.py start /tmp/slurm-i20 && export SLURM_CONF=/tmp/slurm-i20/slurm.conf
#   PYTHON=.venv/bin/python bash benchmarks/hessian_sketch_scale.sh    # about 27 min on 2 shared cores
#   python tests/slurm_cluster.py stop /tmp/slurm-i20
#
# MLP 40 → 1000 → 1000 → 10 (1,052,010 parameters) on 1,000 MNIST-1D samples, 1,500 SGD steps; at steps
# 0, 300 and 1500 a sketch of s = 512 outer and s_i = 640 core measurements in blocks of 64 (8 + 10 blocks),
# spread over 8 SLURM array tasks per step (24 in all). Then the solve stage, the one-process sketch at the
# last step (benchmarks/bench_hessian_sketch.py, also checking that it equals the merged one) and the figure.
# Writes outputs/$NAME*/ (runs, about 2.2 GB of blocks per step in outputs/${NAME}_store) and
# outputs/${NAME}_summary.json; copies the figure to figures/mask_overlap_vs_step_mnist1d_sketch.png.
set -euo pipefail
PY=${PYTHON:-python}
NAME=${NAME:-hs_mnist1d}
LAST=1500
FLAGS=(--name "$NAME" --data_name mnist1d --num_data 1000 --hidden_widths 1000,1000 --num_steps $LAST
       --log_at_steps 0,300,$LAST --num_measurements 512 --num_inner 640 --block_size 64 --ks 10,50,200
       --compare_exact false --num_tasks 8)
export OMP_NUM_THREADS=1
for stage in train measure solve; do
    $PY gen_commands_hessian_sketch.py "outputs/${NAME}_$stage.txt" --stage $stage "${FLAGS[@]}"
done
now() { date +%s.%N; }
t0=$(now)
$PY sweep.py local "outputs/${NAME}_train.txt" --workers 1
t1=$(now)
job=$($PY sweep.py slurm "outputs/${NAME}_measure.txt" --mem 3G --time 01:00:00 | tee /dev/stderr |
      sed -n 's/^submitted job \([0-9]*\).*/\1/p')
while [[ -n "$(squeue -h -r -j "$job" 2>/dev/null)" ]]; do sleep 2; done
t2=$(now)
$PY sweep.py local "outputs/${NAME}_solve.txt" --workers 1
t3=$(now)
single=$($PY benchmarks/bench_hessian_sketch.py --store "outputs/${NAME}_store" --step $LAST --data_name mnist1d \
         --num_data 1000 --hidden_widths 1000,1000 --num_measurements 512 --num_inner 640 --block_size 64 --k 200)
t4=$(now)
echo "$single"
$PY sweep.py status "outputs/${NAME}_measure.txt" | tail -1
solve_run=$(ls -d outputs/$NAME/[0-9]* | sort -t/ -k3 -n | tail -1)
$PY plots.py mask_overlap_vs_step --runs "outputs/$NAME" --run-id "$(basename "$solve_run")" --out "outputs/${NAME}_fig"
cp "outputs/${NAME}_fig/mask_overlap_vs_step.png" figures/mask_overlap_vs_step_mnist1d_sketch.png
$PY - "$NAME" "$t0" "$t1" "$t2" "$t3" "$t4" "$single" <<'PYEOF'
import json, sys
from datetime import datetime
from pathlib import Path
name, t0, t1, t2, t3, t4, single = sys.argv[1], *map(float, sys.argv[2:7]), json.loads(sys.argv[7])
tasks, solve = [], None
for p in sorted(Path(f"outputs/{name}").glob("[0-9]*/run.json"), key=lambda p: int(p.parent.name)):
    run = json.loads(p.read_text())
    info = json.loads((p.parent / "info.json").read_text())
    took = (datetime.fromisoformat(run["stop_time"]) - datetime.fromisoformat(run["start_time"])).total_seconds()
    if run["result"]["stage"] == "measure":
        tasks.append({"step": run["result"]["step"], "blocks": run["result"]["computed"], "run_s": round(took, 1),
                      "peak_rss_mib": round(info["peak_rss_mib"])})
    elif run["result"]["stage"] == "solve":
        solve = {"run_s": round(took, 1), "peak_rss_mib": round(info["peak_rss_mib"]),
                 "per_step": [{k: r[k] for k in ("step", "load_time_s", "solve_time_s")} for r in info["per_step"]]}
summary = {"train_s": round(t1 - t0, 1), "measure_wall_s": round(t2 - t1, 1), "solve_wall_s": round(t3 - t2, 1),
           "one_process_wall_s": round(t4 - t3, 1), "one_process": single, "tasks": tasks, "solve": solve}
Path(f"outputs/{name}_summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: v for k, v in summary.items() if k != "tasks"}, indent=1))
print("per task: run_s", [t["run_s"] for t in tasks], "peak_rss_mib", [t["peak_rss_mib"] for t in tasks])
PYEOF
