"""Several training runs sharing one GPU: aggregate images/s of K concurrent runs against one alone.

A VGG-16 at batch 128 on 32x32 images leaves most of an H100 idle (launch-bound small kernels), so
the workflow can place several training jobs on one GPU (locally: `--cores` / the rule's threads
let K train jobs run at once; see README "GPUs"). This measures what that buys: for K in --counts,
K `python -m bnstudy train` processes (the workflow's own job command, one seed each) run the same
spec for --steps steps at the same time; aggregate images/s = K x steps x batch / the slowest
process's training time. Last line:

    packing_speedup=<aggregate images/s of the largest K / one run alone>

    python benchmarks/gpu_packing.py --images CIFAR10_JPEG_DIR_OR_TAR [--device cuda]
                                     [--precision tf32] [--compile on] [--steps 400] [--counts 1 2 4]
    python benchmarks/gpu_packing.py --setup demo --device cpu --steps 30 --counts 1 2   # a CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bnstudy.config import load_config  # noqa: E402
from bnstudy.plan import plan  # noqa: E402
from bnstudy.datasets import prepare  # noqa: E402
from bnstudy.spec import RunSpec  # noqa: E402


def base_spec(args, scratch: Path) -> tuple[RunSpec, dict]:
    """(spec, dataset config) of one BatchNorm run of the chosen setup, for --steps steps."""
    if args.setup == "paper":
        from paper_run import images_root, paper_config

        raw = paper_config(images_root(args.images, scratch), scratch / "results", args.device, args.precision)
        study = "performance"
    else:
        raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        raw["results"] = str(scratch / "results")
        raw["runtime"].update(device=args.device, precision=args.precision, threads=args.threads)
        study = "performance"
    raw["tracking"]["enabled"] = False
    raw["runtime"]["compile"] = args.compile
    raw["studies"] = {study: dict(raw["studies"][study], variants=["batchnorm"], lrs=[0.1], seeds=[0])}
    config = load_config(raw)
    spec = next(iter(plan(config).runs.values())).updated({
        "optim.steps": args.steps, "checkpoints": [args.steps], "log.eval_every": args.steps,
        "log.layers_every": 10 * args.steps, "log.eval_samples": 1000})
    return spec, config["datasets"][spec.dataset.name]


def run_concurrently(spec: RunSpec, count: int, scratch: Path) -> list[dict]:
    """`count` training processes of `spec` (seeds 0..count-1) at once; their summaries."""
    procs, folders = [], []
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for seed in range(count):
        one = spec.updated({"seed": seed, "run": f"{spec.run}-k{count}-s{seed}"})
        folder = scratch / "runs" / one.run
        folders.append(folder)
        procs.append(subprocess.Popen([sys.executable, "-m", "bnstudy", "train", "--spec", one.to_json(),
                                       "--run-dir", str(folder)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"a training process failed:\n{err[-2000:]}")
    return [json.loads((folder / "summary.json").read_text()) for folder in folders]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", choices=["paper", "demo"], default="paper")
    ap.add_argument("--images", type=Path, help="CIFAR-10 JPEG folder or .tar.gz (setup paper)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--compile", default="off", choices=["off", "on"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    if args.setup == "paper" and not args.images:
        ap.error("--setup paper needs --images")

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        spec, dataset = base_spec(args, scratch)
        prepare(dataset, spec.dataset.name, Path(spec.dataset.path))
        batch = spec.optim.batch_size
        print(f"# {args.setup} setup, {spec.model.arch}-{spec.model.depth} batchnorm, batch {batch}, "
              f"{args.steps} steps per run, device {args.device}, precision {args.precision}, compile {args.compile}")
        print(f"{'runs':>5s} {'slowest s':>10s} {'img/s per run':>14s} {'aggregate img/s':>16s}")
        rates = {}
        for count in args.counts:
            start = time.perf_counter()
            summaries = run_concurrently(spec, count, scratch)
            slowest = max(s["wall_seconds"] for s in summaries)
            rates[count] = count * args.steps * batch / slowest
            print(f"{count:5d} {slowest:10.1f} {rates[count] / count:14.0f} {rates[count]:16.0f}"
                  f"   (processes incl. start-up: {time.perf_counter() - start:.1f} s)", flush=True)
        top = max(args.counts)
        print(f"packing_speedup={rates[top] / rates[min(args.counts)]:.2f}")


if __name__ == "__main__":
    main()
