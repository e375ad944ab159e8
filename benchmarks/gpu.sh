#!/usr/bin/env bash
# The CUDA figures of the README, in one device call (how they are measured):
#   bash benchmarks/gpu.sh CIFAR10_JPEG_DIR_OR_TAR OUT_DIR [FULL_RUN_BUDGET_SECONDS]
# 1. paper_run.py: config/paper.yaml's VGG-16 BatchNorm run (15k steps, batch 128) with the graphed
#    step (runtime.compile: on, CUDA graphs) in tf32, measured in full when its 600-step probe
#    says it fits the budget (default 150 s); then tf32 eager, fp32 eager (IEEE) and bf16 graphed
#    as 600-step probes (a full run each where the budget allows: same seed, so their final test
#    accuracies compare precisions);
# 2. gpu_packing.py: 1, 2 and 4 concurrent training processes on the one GPU (400 steps each);
# 3. the summary line
#      paper_run_s=<s> packing_speedup=<x> gpu_hours_paper_dag=<h>
#    paper_run_s: the fastest measured (or probed) paper run; gpu_hours_paper_dag: config/paper.yaml's
#    VGG-16 steps at that rate, divided by the packing speedup (4 runs share each GPU).
# Each step writes to OUT_DIR as it goes, so a cut-off call still leaves what it measured.
set -uo pipefail
images=${1:?CIFAR-10 JPEG folder or .tar.gz}
out=${2:?output folder}
budget=${3:-150}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
run() {  # name precision compile budget
  python3 benchmarks/paper_run.py --images "$images" --device cuda --precision "$2" --compile "$3" \
    --budget "$4" --json "$out/paper_run_$1.json" 2>&1 | tee "$out/paper_run_$1.txt"
}
run tf32_graphed tf32 on "$budget"
run tf32 tf32 off 0
run fp32 fp32 off 0
run bf16_graphed bf16 on 0
python3 benchmarks/gpu_packing.py --images "$images" --device cuda --precision tf32 --steps 400 \
  --counts 1 2 4 2>&1 | tee "$out/packing.txt"
python3 - "$out" <<'PY' | tee "$out/summary.txt"
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = [json.loads(p.read_text()) for p in sorted(out.glob("paper_run_*.json"))]
best = min(runs, key=lambda r: r["paper_run_seconds"])
packing = re.findall(r"packing_speedup=([0-9.]+)", (out / "packing.txt").read_text())
speedup = float(packing[-1]) if packing else 1.0
for r in runs:
    print(f"{r['precision']:5s} compile={r.get('compile', 'off'):3s} paper run {r['paper_run_seconds']:7.1f} s"
          f" ({'measured' if r['measured'] else 'from a probe'}), test accuracy {r['test_accuracy']:.4f}")
print(f"paper_run_s={best['paper_run_seconds']:.0f} packing_speedup={speedup:.2f} "
      f"gpu_hours_paper_dag={best['vgg_hours'] / speedup:.2f}")
PY
