"""Training throughput: the project's loop vs a typical PyTorch loop vs the compute-only ceiling.

Measures, in one process on one machine, images/s of three loops training the same model
(VGG-11, width 0.25, BatchNorm, batch 128, plain SGD):
  project   bnstudy.train.loop.train: uint8 tensors on the device, batches drawn by index, no workers,
            channels_last for conv nets on CPU/CUDA, runtime.precision from --precision; the
            final whole-test-set evaluation (once per run) timed and printed apart
  typical   torchvision ImageFolder + PIL transforms + DataLoader(--workers), reading JPEG/PNG
            files, default memory format, fp32 (the real CIFAR-10 JPEGs when present, else PNGs
            it writes)
  compute   the project's model and settings (device, memory format, precision) on one fixed
            tensor batch: the ceiling for any loop
and the step time of noisy BatchNorm over BatchNorm (compute-only loops of both).

    python benchmarks/train_throughput.py [--steps 60] [--precision fp32|tf32|bf16]
                                          [--device cpu|cuda] [--images cifar10-jpeg.tar.gz]

Evidence (raw output in docs/benchmarks/): on the 2-core Xeon build machine, fp32:
project 2,248 img/s, typical 1,197, compute 2,359 -> project_vs_typical=1.88
project_vs_compute=0.95 noisy_vs_bn=1.43 (2026-12-07, quiet VM; the final whole-test-set evaluation
1.7 s a run, apart); bf16 (AMX): 2.66 / 0.88 / 1.64. On an H200, fp32:
24,110 / 16,626 (8 workers) / 26,798 img/s -> 1.45 / 0.90 / 1.58.

Last line: project_vs_typical=<ratio> project_vs_compute=<ratio> noisy_vs_bn=<ratio>
"""

from __future__ import annotations

import argparse
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from bnstudy.configure import load_config
from bnstudy.config.plan import plan
from bnstudy.data.datasets import prepare
from bnstudy.models.networks import build_model, set_generator
from bnstudy.train.runtime import autocast_context, resolve_device
from bnstudy.config.spec import RunSpec
from bnstudy.train.loop import place_model, train

REPO = Path(__file__).resolve().parents[1]
SHARED_TAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def base_spec(results: Path, variant: str, steps: int, device: str = "cpu",
              precision: str = "fp32") -> tuple[RunSpec, dict]:
    raw = {
        "results": str(results),
        "runtime": {"device": device, "threads": 0, "precision": precision},
        "tracking": {"enabled": False},
        "datasets": {"images": {"source": "imagefolder", "root": str(results / "images"),
                                "image_size": 32, "channels": 3, "classes": 10}},
        "setups": {"vgg": {"dataset": "images",
                           "model": {"arch": "vgg", "depth": 11, "width": 0.25},
                           "optim": {"steps": steps, "batch_size": 128},
                           "checkpoints": {"dense_until": 0, "dense_every": 1, "every": 10 ** 6},
                           "log": {"train_every": 1, "eval_every": 10 ** 6, "layers_every": 10 ** 6,
                                   "eval_samples": 128}}},
        "studies": {"performance": {"setup": "vgg", "variants": [variant], "lrs": [0.1], "seeds": [0]}},
    }
    cfg = load_config(raw)
    return next(iter(plan(cfg).runs.values())), cfg


def image_folder(target: Path, tar: Path | None, per_class: int) -> str:
    """The real CIFAR-10 JPEGs (a subset) when the archive is at hand, else PNGs written here."""
    if tar and tar.exists():
        with tarfile.open(tar) as archive:
            counts: dict[tuple[str, str], int] = {}
            members = []
            for m in archive:
                parts = Path(m.name).parts
                if m.isfile() and len(parts) >= 3 and parts[-3] in ("train", "test"):
                    key = (parts[-3], parts[-2])
                    if counts.get(key, 0) < per_class:
                        counts[key] = counts.get(key, 0) + 1
                        m.name = str(Path(*parts[-3:]))
                        members.append(m)
            archive.extractall(target, members=members, filter="data")
        return f"real CIFAR-10 JPEGs ({per_class} per class) from {tar}"
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(10):
            folder = target / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "train" else 10):
                px = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(px).save(folder / f"{i}.png")
    return f"PNG images written by the benchmark ({per_class} per class)"


def project_loop(spec: RunSpec, results: Path, steps: int) -> tuple[float, float]:
    """images/s of bnstudy.train.loop.train's loop, and the seconds of its final whole-test-set
    evaluation apart. Timed: the whole call (start-up, the steps, the tables), with the final
    evaluation cut to the 128 samples the periodic ones use, so that the figure is the loop's; the
    final evaluation is then the difference of two short runs, one evaluating the whole test set."""
    warm = spec.updated({"optim.steps": 5, "checkpoints": [5]})
    train(warm, results / "warm", log=lambda m: None)
    small = {"log.final_test_samples": 128}
    start = time.perf_counter()
    train(spec.updated(small), results / "timed", log=lambda m: None)
    rate = steps * 128 / (time.perf_counter() - start)
    short = []
    for name, final in (("short", small), ("short-whole", {"log.final_test_samples": None})):
        start = time.perf_counter()
        train(warm.updated(final), results / name, log=lambda m: None)
        short.append(time.perf_counter() - start)
    return rate, short[1] - short[0]


def typical_loop(spec: RunSpec, root: Path, steps: int, workers: int) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(),
                             transforms.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
    ds = datasets.ImageFolder(str(root / "train"), transform=tf)
    loader = DataLoader(ds, batch_size=128, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    device = resolve_device(spec.runtime)
    model = build_model(spec).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    done, start = -5, None  # 5 warm-up steps
    while done < steps:
        for x, y in loader:
            if done == 0:
                sync(device)
                start = time.perf_counter()
            x, y = x.to(device), y.to(device)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    sync(device)
    return steps * 128 / (time.perf_counter() - start)


def compute_loop(spec: RunSpec, steps: int) -> float:
    """The ceiling: one fixed batch, the project's model and settings (device, memory format,
    precision: `place_model`, `autocast_context`), nothing else."""
    device = resolve_device(spec.runtime)
    model, channels_last = place_model(spec, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(128, 3, 32, 32, device=device), torch.randint(0, 10, (128,), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    set_generator(model, torch.Generator(device=device).manual_seed(0))
    autocast = autocast_context(device, spec.runtime.precision)
    for i in range(-5, steps):
        if i == 0:
            sync(device)
            start = time.perf_counter()
        with autocast:
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * 128 / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=Path, default=SHARED_TAR)
    parser.add_argument("--per-class", type=int, default=800)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                        help="the project's runtime.precision (the typical loop stays fp32)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        source = image_folder(results / "images", args.images, args.per_class)
        spec, cfg = base_spec(results, "batchnorm", args.steps, args.device, args.precision)
        prepare(cfg["datasets"]["images"], "images", Path(spec.dataset.path))
        device = resolve_device(spec.runtime)
        print(f"# train_throughput: VGG-11 x0.25, BatchNorm, batch 128, SGD, {args.steps} timed steps, "
              f"project precision {args.precision}")
        gpu = f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
        print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores{gpu}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads; data: {source}")
        noisy_spec, _ = base_spec(results, "noisy_batchnorm", args.steps, args.device, args.precision)
        compute = compute_loop(spec, args.steps)
        project, final_eval = project_loop(spec, results, args.steps)
        typical = typical_loop(spec, results / "images", args.steps, args.workers)
        bn_step = 128 / compute_loop(spec, args.steps)
        noisy_step = 128 / compute_loop(noisy_spec, args.steps)
        print(f"project  {project:8.0f} img/s   (bnstudy.train.loop.train: the loop)")
        print(f"final evaluation on the whole test set: {final_eval:.2f} s (once per run, not in the figure above)")
        print(f"typical  {typical:8.0f} img/s   (ImageFolder + PIL transforms + DataLoader, {args.workers} workers)")
        print(f"compute  {compute:8.0f} img/s   (fixed batch: the ceiling)")
        print(f"step time: batchnorm {bn_step * 1e3:.1f} ms, noisy_batchnorm {noisy_step * 1e3:.1f} ms")
        print(f"project_vs_typical={project / typical:.2f} project_vs_compute={project / compute:.2f} "
              f"noisy_vs_bn={noisy_step / bn_step:.2f}")


if __name__ == "__main__":
    main()
