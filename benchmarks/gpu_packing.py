"""Several training runs sharing one GPU: aggregate images/s of K concurrent runs against one alone,
and how many jobs a GPU should take.

A VGG-16 at batch 128 on 32x32 images leaves most of an H100 idle (launch-bound small kernels), so
the workflow can place several training jobs on one GPU (locally: `--cores` / the rule's threads
let K train jobs run at once; see README "GPUs"). This measures what that buys: for K in --counts,
K `python -m bnstudy train` processes (the workflow's own job command, one seed each) run the same
spec for --steps steps at the same time; aggregate images/s = K x steps x batch / the slowest
process's training time.

The decision: jobs_per_gpu = the fewest concurrent jobs whose aggregate rate is within --within
(5%) of the best measured one (more processes than that add GPU contexts, memory and host cores
for next to nothing), at most one per host core; the runtime.threads that gives each job an equal
share of the host's cores, and the `snakemake --cores` that then runs jobs_per_gpu jobs at once.
With --configfile the measured run is that config's first BatchNorm run (its precision, compile,
checkpoint, evaluation and layer-statistics schedule, cut to --steps), and the last lines also
estimate the config's training time at the chosen packing (its planned runs' steps over the
aggregate rate). Last line:

    packing_speedup=<aggregate images/s of the largest K / one run alone>

    python benchmarks/gpu_packing.py --images CIFAR10_JPEG_DIR_OR_TAR [--device cuda]
                                     [--precision tf32] [--compile on] [--steps 400] [--counts 1 2 4]
    python benchmarks/gpu_packing.py --configfile config/gpu-headline.yaml --images CIFAR10_JPEGS \
                                     --device cuda --steps 600 --counts 1 2 4 8
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

from bnstudy.configure import load_config  # noqa: E402
from bnstudy.config.plan import plan  # noqa: E402
from bnstudy.config.spec import RunSpec  # noqa: E402


def choose_jobs_per_gpu(rates: dict[int, float], cores: int, within: float = 0.05) -> int:
    """The fewest concurrent jobs whose aggregate rate is within `within` of the best measured
    rate, among the counts that leave each job at least one of the host's `cores`."""
    usable = {k: r for k, r in rates.items() if k <= max(1, cores)} or {min(rates): rates[min(rates)]}
    best = max(usable.values())
    return min(k for k, r in usable.items() if r >= (1 - within) * best)


def snakemake_slots(jobs: int, cores: int) -> tuple[int, int]:
    """(runtime.threads, snakemake --cores) that run `jobs` train/analyze jobs at once on a host
    with `cores` cores: the rules take runtime.threads cores each (README "GPUs")."""
    threads = max(1, cores // jobs)
    return threads, threads * jobs


def config_training_seconds(config: dict, measured: RunSpec, steps_per_second: float) -> tuple[int, int, float, int]:
    """(runs, steps, seconds, other runs): training every run the config plans of the measured
    run's setup (its model and batch), at an aggregate rate of `steps_per_second` (one GPU, the
    measured packing); runs of other setups (other models: not measured) are only counted."""
    runs = list(plan(config).runs.values())
    same = [spec for spec in runs if spec.setup == measured.setup]
    steps = sum(spec.optim.steps for spec in same)
    return len(same), steps, steps / steps_per_second, len(runs) - len(same)


def raw_config_with_images(path: Path, images: Path | None, results: Path) -> dict:
    """The YAML config at `path` with results under `results`, tracking off, and every CIFAR-10
    dataset (imagefolder or torchvision cifar10) read from the `images` JPEG folders."""
    raw = yaml.safe_load(Path(path).read_text())
    raw["results"] = str(results)
    raw.setdefault("tracking", {})["enabled"] = False
    if images is not None:
        for name, dataset in raw["datasets"].items():
            if dataset.get("source") in ("imagefolder", "cifar10"):
                raw["datasets"][name] = {**{k: v for k, v in dataset.items() if k not in ("download",)},
                                         "source": "imagefolder", "root": str(images), "image_size": 32,
                                         "channels": 3, "classes": 10}
    return raw


def config_spec(args, scratch: Path) -> tuple[RunSpec, dict, dict]:
    """(spec, dataset config, full config) of the --configfile's first BatchNorm run, cut to
    --steps steps with its own checkpoint, evaluation and layer-statistics schedule."""
    from paper_run import images_root

    images = images_root(args.images, scratch) if args.images else None
    raw = raw_config_with_images(args.configfile, images, scratch / "results")
    runtime = raw.setdefault("runtime", {})
    runtime["device"] = args.device
    if args.precision:
        runtime["precision"] = args.precision
    if args.compile:
        runtime["compile"] = args.compile
    config = load_config(raw)
    runs = plan(config).runs.values()
    spec = next((s for s in runs if s.norm.variant == "batchnorm"), None) or next(iter(runs))
    spec = spec.updated({"optim.steps": args.steps,
                         "checkpoints": [c for c in spec.checkpoints if c <= args.steps] or [args.steps]})
    return spec, config["datasets"][spec.dataset.name], config


def base_spec(args, scratch: Path) -> tuple[RunSpec, dict]:
    """(spec, dataset config) of one BatchNorm run of the chosen setup, for --steps steps."""
    args.precision = args.precision or "tf32"
    args.compile = args.compile or "off"
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
    ap.add_argument("--configfile", type=Path, help="measure this config's first BatchNorm run "
                    "(its runtime and schedules) and estimate its training time; CIFAR-10 from --images")
    ap.add_argument("--images", type=Path, help="CIFAR-10 JPEG folder or .tar.gz (setup paper, --configfile)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"],
                    help="default: tf32, or the --configfile's runtime.precision")
    ap.add_argument("--compile", choices=["off", "on"], help="default: off, or the --configfile's runtime.compile")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                    help="the host's cores the workflow may use (default: all)")
    ap.add_argument("--within", type=float, default=0.05,
                    help="jobs_per_gpu: the fewest jobs within this fraction of the best aggregate rate")
    args = ap.parse_args()
    from bnstudy.data.datasets import prepare  # torch: only for a measurement (the helpers above need none)

    if args.setup == "paper" and not args.images and not args.configfile:
        ap.error("--setup paper needs --images")

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        config = None
        if args.configfile:
            spec, dataset, config = config_spec(args, scratch)
            what = f"{args.configfile}"
        else:
            spec, dataset = base_spec(args, scratch)
            what = f"{args.setup} setup"
        prepare(dataset, spec.dataset.name, Path(spec.dataset.path))
        batch = spec.optim.batch_size
        print(f"# {what}, {spec.model.arch}-{spec.model.depth} {spec.norm.variant}, batch {batch}, "
              f"{args.steps} steps per run, device {args.device}, precision {spec.runtime.precision}, "
              f"compile {spec.runtime.compile}, host cores {args.cores}")
        print(f"{'runs':>5s} {'slowest s':>10s} {'img/s per run':>14s} {'aggregate img/s':>16s}")
        rates = {}
        for count in args.counts:
            start = time.perf_counter()
            summaries = run_concurrently(spec, count, scratch)
            slowest = max(s["wall_seconds"] for s in summaries)
            rates[count] = count * args.steps * batch / slowest
            print(f"{count:5d} {slowest:10.1f} {rates[count] / count:14.0f} {rates[count]:16.0f}"
                  f"   (processes incl. start-up: {time.perf_counter() - start:.1f} s)", flush=True)
        jobs = choose_jobs_per_gpu(rates, args.cores, args.within)
        threads, cores = snakemake_slots(jobs, args.cores)
        print(f"jobs_per_gpu={jobs} runtime.threads={threads} snakemake_cores={cores} "
              f"(speedup {rates[jobs] / rates[min(args.counts)]:.2f} over {min(args.counts)}; the fewest "
              f"jobs within {args.within:.0%} of the best aggregate rate)")
        if config is not None:
            runs, steps, seconds, others = config_training_seconds(config, spec, rates[jobs] / batch)
            print(f"config_train_minutes={seconds / 60:.1f} ({runs} {spec.setup} runs, {steps} steps at "
                  f"{rates[jobs] / batch:.1f} aggregate steps/s with {jobs} jobs; analyses, tables and "
                  f"figures come on top" + (f"; {others} runs of other setups not estimated" if others else "")
                  + ")")
        top = max(args.counts)
        print(f"packing_speedup={rates[top] / rates[min(args.counts)]:.2f}")


if __name__ == "__main__":
    main()
