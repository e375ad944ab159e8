"""Time one full paper run: config/paper.yaml's VGG-16 (BatchNorm, lr 0.1, seed 0) for its 15,000
steps on the real CIFAR-10, with the project's training loop, and size the whole paper DAG from it.

What runs: `bnstudy.train.loop.train` on exactly the spec the workflow would train (paper.yaml's `vgg`
setup: batch 128, plain SGD, its checkpoint, eval and layer-statistics schedule), with tracking
off and the dataset read from the CIFAR-10 JPEG folders (source: imagefolder) instead of
torchvision's download. First a short run measures the rate; the full run follows when its
estimate fits in --budget seconds, else the full-run time is extrapolated (and said so).

    python benchmarks/paper_run.py --images CIFAR10_JPEG_DIR_OR_TAR [--device cuda]
                                   [--precision fp32|tf32|bf16] [--compile on|off]
                                   [--budget 300] [--json OUT.json]

--compile on is the graphed step (runtime.compile: torch.compile, on CUDA with CUDA graphs); its
compilation is timed in the probe; the full run compiles again from inductor's cache.

Last line: paper_run_seconds=<s> measured=<true|false> steps_per_second=<r> test_accuracy=<a>
"""

from __future__ import annotations

import argparse
import copy
import json
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bnstudy.configure import load_config
from bnstudy.config.plan import plan
from bnstudy.data.datasets import prepare
from bnstudy.train.loop import train

REPO = Path(__file__).resolve().parents[1]


def images_root(images: Path, scratch: Path) -> Path:
    """The folder holding train/ and test/ class folders (a .tar.gz is extracted first)."""
    if images.is_file():
        with tarfile.open(images) as archive:
            archive.extractall(scratch / "cifar10", filter="data")
        images = scratch / "cifar10"
    hits = [p.parent for p in images.rglob("train") if (p.parent / "test").is_dir()]
    if not hits:
        raise SystemExit(f"--images {images}: no folder with train/ and test/ class folders")
    return hits[0]


def paper_config(root: Path, results: Path, device: str, precision: str, compile: str = "off") -> dict:
    raw = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    raw["results"] = str(results)
    raw["tracking"]["enabled"] = False
    raw["runtime"].update(device=device, precision=precision, threads=0, compile=compile)
    raw["datasets"]["cifar10"] = {"source": "imagefolder", "root": str(root), "image_size": 32,
                                  "channels": 3, "classes": 10}
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--compile", default="off", choices=["off", "on"])
    ap.add_argument("--budget", type=float, default=300, help="run the full 15k steps if the "
                    "estimate fits in this many seconds, else extrapolate")
    ap.add_argument("--probe-steps", type=int, default=600)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        root = images_root(args.images, scratch)
        raw = paper_config(root, scratch / "results", args.device, args.precision, args.compile)
        full_plan = plan(load_config(copy.deepcopy(raw)))
        raw["studies"] = {"performance": dict(raw["studies"]["performance"], variants=["batchnorm"],
                                              lrs=[0.1], seeds=[0])}
        config = load_config(raw)
        spec = next(iter(plan(config).runs.values()))
        start = time.perf_counter()
        prepare(config["datasets"]["cifar10"], "cifar10", Path(spec.dataset.path))
        prep_s = time.perf_counter() - start
        steps = spec.optim.steps

        probe = spec.updated({"optim.steps": args.probe_steps,
                              "checkpoints": [c for c in spec.checkpoints if c <= args.probe_steps]})
        probe_summary = train(probe, scratch / "probe", log=lambda m: None)
        rate = args.probe_steps / probe_summary["wall_seconds"]
        estimate = steps / rate
        print(f"# paper run: VGG-16 BatchNorm lr 0.1 seed 0, {steps} steps, batch 128, device "
              f"{probe_summary['device']} ({torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}), "
              f"precision {args.precision}, compile {args.compile}; CIFAR-10 prepared from JPEGs in {prep_s:.0f} s")
        print(f"probe: {args.probe_steps} steps in {probe_summary['wall_seconds']:.1f} s "
              f"({rate:.1f} steps/s incl. checkpoints, eval, layer statistics); full-run estimate {estimate:.0f} s")
        measured, accuracy = False, float("nan")
        if estimate <= args.budget:
            last = [0.0]

            def progress(message: str) -> None:
                if time.perf_counter() - last[0] > 30:
                    print("  " + message, flush=True)
                    last[0] = time.perf_counter()

            summary = train(spec, scratch / "full", log=progress)
            wall, measured = summary["wall_seconds"], True
            accuracy = summary["final"]["test_accuracy"]
            print(f"full run: {steps} steps in {wall:.1f} s, final test accuracy {accuracy:.4f}, "
                  f"{len(summary['checkpoints'])} checkpoints")
        else:
            wall = estimate
            print(f"full run skipped: estimate {estimate:.0f} s > budget {args.budget:.0f} s")
        vgg_runs = [s for s in full_plan.runs.values() if s.model.arch == "vgg"]
        vgg_steps = sum(s.optim.steps for s in vgg_runs)
        print(f"paper DAG: {len(full_plan.runs)} runs, {len(vgg_runs)} of them VGG-16 "
              f"({vgg_steps} steps): ~{vgg_steps * wall / steps / 3600:.1f} device-hours of VGG training "
              f"at this rate (DLN and MLP runs are small)")
        result = {"paper_run_seconds": wall, "measured": measured, "steps_per_second": steps / wall,
                  "test_accuracy": accuracy, "device": probe_summary["device"],
                  "precision": args.precision, "compile": args.compile, "vgg_runs": len(vgg_runs),
                  "vgg_hours": vgg_steps * wall / steps / 3600}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"paper_run_seconds={wall:.0f} measured={str(measured).lower()} "
              f"steps_per_second={steps / wall:.1f} test_accuracy={accuracy:.4f}")


if __name__ == "__main__":
    main()
