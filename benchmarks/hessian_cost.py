"""Benchmark: what the Hessian analyses cost, as ratios measured in one run on one machine.

1. One Hessian-vector product (bnstudy.analysis.hessian.Hessian: double backward through the
   training-mode loss) against one gradient (Objective.value_and_grad), with and without
   BatchNorm. Pearlmutter's bound: an HVP is a forward-backward plus a backward of the backward,
   about 2-3 gradients' work; every spectral measure (Lanczos, Hutchinson, SLQ, the gradient
   share) is a count of these products.
2. The 2-D surface's grid points per second (bnstudy.analysis.surface: one forward per point,
   no gradient), evaluated one point at a time (what the analysis does) and batched over
   parameter sets with torch.func.vmap (K points in one call, the same batch of images), to
   see whether batching the grid pays.

Times are the best of --repeats interleaved runs after a warm-up (robust to other load on a
shared machine); process CPU time is printed beside wall time. The last line is

    hvp_over_grad_bn=<r> hvp_over_grad_standard=<r> surface_points_per_s=<p> vmap_speedup=<x>

Usage: PYTHONPATH=src python benchmarks/hessian_cost.py [--batch-size 128] [--width 0.25] [--vmap 8]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.func import functional_call, vmap

from bnstudy.analysis.functional import Objective, origin_state
from bnstudy.analysis.hessian import Hessian
from bnstudy.analysis.run import analysis_layout, prepare_model
from bnstudy.analysis.surface import filter_normalised
from bnstudy.configure import load_config
from bnstudy.models.networks import build_model, loss_fn
from bnstudy.config.plan import plan
from bnstudy.train.runtime import exact_numerics


def vgg_spec(variant: str, width: float):
    """The VGG-11 of config/cifar10-cpu.yaml (width `width`), CIFAR-shaped input."""
    config = load_config({
        "results": "results",
        "datasets": {"demo": {"source": "synthetic", "n_train": 128, "n_test": 16}},
        "setups": {"vgg": {"dataset": "demo", "model": {"arch": "vgg", "depth": 11, "width": width},
                           "optim": {"steps": 1}}},
        "studies": {"s": {"setup": "vgg", "variants": [variant], "lrs": [0.1], "seeds": [0]}},
    })
    return next(iter(plan(config).runs.values()))


def best_of(fns: dict, repeats: int) -> dict:
    """Best-of-`repeats` (wall, process CPU) seconds of each function, runs interleaved."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - start, time.process_time() - cpu))
    return {name: (min(w for w, _ in t), min(c for _, c in t)) for name, t in times.items()}


def setup(variant: str, width: float, batch_size: int, device: str):
    spec = vgg_spec(variant, width)
    model = prepare_model(spec, build_model(spec, noise=False).state_dict(), noise=False, device=device)
    gen = torch.Generator().manual_seed(0)
    x = analysis_layout(torch.randn(batch_size, *spec.dataset.shape, generator=gen).to(device), spec, device)
    y = torch.randint(0, spec.dataset.classes, (batch_size,), generator=gen).to(device)
    params, buffers = origin_state(model)
    return spec, model, params, buffers, Objective(model, buffers, loss_fn(spec), [(x, y)]), (x, y)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--vmap", type=int, default=8, help="grid points per vmap call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ratios = {}
    print(f"# VGG-11 width {args.width}, batch {args.batch_size}, device {args.device}, "
          f"{torch.get_num_threads()} threads, training mode (batch statistics); best of {args.repeats}")
    print("# variant     params   grad s (cpu)      hvp s (cpu)       hvp / grad (wall, cpu)")
    with exact_numerics(args.device):
        for variant in ("batchnorm", "standard"):
            _, _, params, _, objective, _ = setup(variant, args.width, args.batch_size, args.device)
            hessian = Hessian(objective, params)
            v = filter_normalised(params, 0)
            times = best_of({"grad": lambda: objective.value_and_grad(params), "hvp": lambda: hessian(v)},
                            args.repeats)
            (g, gc), (h, hc) = times["grad"], times["hvp"]
            ratios[variant] = h / g
            n = sum(p.numel() for p in params.values())
            print(f"{variant:<12} {n:>7}   {g:.4f} ({gc:.4f})   {h:.4f} ({hc:.4f})   {h / g:.2f} / {hc / gc:.2f}")

        # the surface: one forward per grid point, one at a time vs K at once under vmap
        _, model, params, buffers, objective, (x, y) = setup("batchnorm", args.width, args.batch_size,
                                                             args.device)
        d1, d2 = filter_normalised(params, 0), filter_normalised(params, 1)
        k = args.vmap
        coords = torch.linspace(-1, 1, k, dtype=torch.float32)
        points = [{n: p + float(c) * d1[n] + 0.5 * d2[n] for n, p in params.items()} for c in coords]
        loss = loss_fn(vgg_spec("batchnorm", args.width))

        @torch.no_grad()
        def one_at_a_time():
            return [objective.evaluate(point)[0] for point in points]

        stacked = {n: torch.stack([point[n] for point in points]) for n in params}
        # each point gets its own copy of the running statistics (BatchNorm in training mode
        # writes them), so the buffers are stacked too
        stacked_buffers = {n: b.clone().expand(k, *b.shape).clone() if b.is_floating_point() else b
                           for n, b in buffers.items()}
        floating = {n for n, b in buffers.items() if b.is_floating_point()}

        def forward(p, b):
            state = {**p, **b, **{n: buffers[n] for n in buffers if n not in floating}}
            return loss(functional_call(model, state, (x,)), y)

        batched = vmap(forward, in_dims=(0, {n: 0 for n in floating}), randomness="same")

        @torch.no_grad()
        def all_at_once():
            return batched(stacked, {n: stacked_buffers[n] for n in floating}).tolist()

        try:
            agree = max(abs(a - b) for a, b in zip(one_at_a_time(), all_at_once()))
            times = best_of({"single": one_at_a_time, "vmap": all_at_once}, args.repeats)
        except Exception as err:  # vmap may not cover every op of the model: say so, not crash
            print(f"# vmap over parameter sets failed: {type(err).__name__}: {str(err).splitlines()[0]}")
            times, agree = best_of({"single": one_at_a_time}, args.repeats), float("nan")
        (s, sc) = times["single"]
        per_s = k / s
        print(f"# surface: {k} grid points, one forward each")
        print(f"one at a time   {s:.4f} s ({sc:.4f} cpu)   {per_s:.1f} points/s")
        speedup = float("nan")
        if "vmap" in times:
            (b, bc) = times["vmap"]
            speedup = s / b
            print(f"vmap, {k} at once {b:.4f} s ({bc:.4f} cpu)   {k / b:.1f} points/s   "
                  f"speedup {speedup:.2f}x   max |loss difference| {agree:.3g}")
    print(f"hvp_over_grad_bn={ratios['batchnorm']:.2f} hvp_over_grad_standard={ratios['standard']:.2f} "
          f"surface_points_per_s={per_s:.1f} vmap_speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
