#!/usr/bin/env bash
# The CUDA figures of the README, in one go on a GPU machine (how they were measured):
#   bash benchmarks/gpu.sh CIFAR10_JPEG_DIR_OR_TAR OUT_DIR [BUDGET_SECONDS]
# 1. train_throughput.py on CUDA in fp32 (IEEE) and tf32 (300 timed steps; the typical loop gets
#    8 workers, a fair share of a 16-core GPU host),
# 2. landscape_probe.py on CUDA (the demo VGG shape),
# 3. paper_run.py: one full paper run (VGG-16, 15k steps) in fp32, then in bf16, each if it fits
#    in the budget (else extrapolated from its first 600 steps).
# Each step writes its output to OUT_DIR as it goes, so a cut-off run still leaves what it measured.
set -uo pipefail
images=${1:?CIFAR-10 JPEG folder or .tar.gz}
out=${2:?output folder}
budget=${3:-300}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
for precision in fp32 tf32; do
  python3 benchmarks/train_throughput.py --device cuda --precision "$precision" --steps 300 \
    --workers 8 --images "$images" 2>&1 | tee "$out/throughput_$precision.txt"
done
python3 benchmarks/landscape_probe.py --device cuda --repeats 5 2>&1 | tee "$out/landscape_probe.txt"
for precision in fp32 bf16; do
  python3 benchmarks/paper_run.py --images "$images" --device cuda --precision "$precision" \
    --budget "$budget" --json "$out/paper_run_$precision.json" 2>&1 | tee "$out/paper_run_$precision.txt"
done
