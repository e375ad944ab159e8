"""Benchmark: the project's loss-landscape probe vs the straightforward way, same batch, one run.

What is timed: the landscape analysis of ONE checkpoint (Santurkar et al. section 3.2): the
gradient g at W, then loss and gradient at W - eta g for every eta of the grid, and
grad_diff = ||g - grad L(W - eta g)||, beta = grad_diff / ||eta g||.

  probe            bnstudy.analysis.landscape: W kept as a dict of tensors, one functional_call
                   forward-backward per eta (plus one for g), nothing copied or mutated.
  deepcopy+step    the straightforward way: for every eta, deepcopy the model, compute loss and
                   gradient at W with .backward() (deepcopy does not carry .grad), step it with
                   torch.optim.SGD(lr=eta), then loss and gradient with .backward() again.
  deepcopy+reuse   a leaner straightforward way, for reference: g computed once; per eta a
                   deepcopy, a manual step p.add_(g, alpha=-eta), then loss and gradient with .backward().

Every variant runs in training mode on the same batch; times are the best of --repeats runs,
interleaved across variants, after one warm-up run each. The last line is
    speedup_vs_deepcopy=<deepcopy+step time / probe time> max_abs_diff=<max |difference| of
    loss, grad_diff and beta between probe and deepcopy+step over all eta>

Usage: python benchmarks/landscape_probe.py [--checkpoint PATH] [--points 8] [--batch-size 128]
(run from the repository root with src on the path, e.g. PYTHONPATH=src).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from bnstudy.analysis import landscape
from bnstudy.analysis.functional import Objective, Origin, norm, origin_state
from bnstudy.analysis.run import analysis_layout, prepare_model
from bnstudy.train.checkpoint import load_checkpoint
from bnstudy.configure import load_config
from bnstudy.config.plan import plan
from bnstudy.models.networks import build_model, loss_fn
from bnstudy.train.runtime import exact_numerics
from bnstudy.config.spec import RunSpec


def demo_spec() -> RunSpec:
    """A run spec for the demo VGG: depth 11, width 0.25, batchnorm, CIFAR-shaped input."""
    config = load_config({
        "results": "results",
        "datasets": {"demo": {"source": "synthetic", "n_train": 128, "n_test": 16}},
        "setups": {"vgg": {"dataset": "demo",
                           "model": {"arch": "vgg", "depth": 11, "width": 0.25},
                           "optim": {"steps": 1}}},
        "studies": {"landscape": {"setup": "vgg", "variants": ["batchnorm"], "lrs": [0.1],
                                  "seeds": [0]}},
    })
    return next(iter(plan(config).runs.values()))


def baseline(model, loss, x, y, etas, reuse_grad: bool) -> list[tuple[float, float, float]]:
    """The straightforward way: a deepcopy per eta. Returns [(loss, grad_diff, beta)]."""
    ref = copy.deepcopy(model)
    loss(ref(x), y).backward()
    g = {n: p.grad.detach().clone() for n, p in ref.named_parameters()}
    g_norm = norm(g)
    rows = []
    for eta in etas:
        probe = copy.deepcopy(model)
        if reuse_grad:
            with torch.no_grad():
                for n, p in probe.named_parameters():
                    p.add_(g[n], alpha=-eta)
        else:
            loss(probe(x), y).backward()  # the copy needs its own gradient to step
            torch.optim.SGD(probe.parameters(), lr=eta).step()
            probe.zero_grad()
        value = loss(probe(x), y)
        value.backward()
        g_eta = {n: p.grad for n, p in probe.named_parameters()}
        diff = norm({n: g[n] - g_eta[n] for n in g})
        rows.append((float(value.detach()), diff, diff / (eta * g_norm)))
    return rows


def timed(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Best-of-`repeats` (wall, process CPU) seconds of each function, runs interleaved
    (a, b, c, a, b, c, ...).

    Interleaving and the minimum make the comparison robust to other load on the machine: a
    burst of contention slows one run of each, not all runs of one. Process CPU time (with
    --threads 1) is a second check on a shared machine: other jobs do not add to it.
    """
    results = {name: fn() for name, fn in fns.items()}  # warm-up: allocator, kernels, threads
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, cpu = time.perf_counter(), time.process_time()
            results[name] = fn()
            times[name].append((time.perf_counter() - start, time.process_time() - cpu))
    return {name: (min(w for w, _ in t), min(c for _, c in t)) for name, t in times.items()}, results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="a run checkpoint (default: the demo VGG, random init)")
    ap.add_argument("--points", type=int, default=8, help="eta grid points (config default 8)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.checkpoint:
        state = load_checkpoint(args.checkpoint, map_location="cpu")
        spec = RunSpec.from_dict(state["spec"], args.checkpoint)
        model = build_model(spec, noise=False)
        model.load_state_dict(state["model"])
    else:
        spec = demo_spec()
        model = build_model(spec, noise=False)
    model.to(args.device).train()
    loss = loss_fn(spec)
    gen = torch.Generator().manual_seed(0)
    shape = spec.dataset.shape or [spec.dataset.dim]
    x = torch.randn(args.batch_size, *shape, generator=gen).to(args.device)
    if spec.dataset.task == "classification":
        y = torch.randint(0, spec.dataset.classes, (args.batch_size,), generator=gen)
    else:
        y = torch.randn(args.batch_size, *shape, generator=gen)
    y = y.to(args.device)

    lr = spec.optim.lr
    settings = {"eta_min": 0.5, "eta_max": 4.0, "points": args.points, "relative": True,
                "random_directions": 0, "seed": 0}
    # Every variant works on the network as the analysis stage prepares it from the checkpoint
    # (analysis.run.prepare_model: channels_last for conv nets on CPU/CUDA, as in training), so
    # the comparison is of the method alone: same weights, same layout, same kernels.
    model = prepare_model(spec, model.state_dict(), noise=False, device=args.device)
    x = analysis_layout(x, spec, args.device)
    params, buffers = origin_state(model)
    objective = Objective(model, buffers, loss, [(x, y)])

    origin = Origin(objective, params, model.layer_groups(), None, {"lr": lr})

    def probe():
        return landscape.compute(origin, settings)

    with exact_numerics(args.device):
        etas = [r["eta"] for r in probe()]
    fns = {"probe": probe,
           "step": lambda: baseline(model, loss, x, y, etas, reuse_grad=False),
           "reuse": lambda: baseline(model, loss, x, y, etas, reuse_grad=True)}
    with exact_numerics(args.device):  # as the analysis stage runs (IEEE fp32, deterministic cuDNN)
        times, results = timed(fns, args.repeats)
    (t_probe, c_probe), (t_step, c_step), (t_reuse, c_reuse) = \
        times["probe"], times["step"], times["reuse"]
    rows = results["probe"]
    ours = [(r["loss"], r["grad_diff"], r["beta"]) for r in rows]
    diff = max(abs(a - b) for r, s in zip(ours, results["step"]) for a, b in zip(r, s))
    diff_lean = max(abs(a - b) for r, s in zip(ours, results["reuse"]) for a, b in zip(r, s))

    m = spec.model
    print(f"# landscape probe, one checkpoint: {m.arch}{m.depth} width "
          f"{m.width} {spec.norm.variant}, {sum(p.numel() for p in params.values())} "
          f"params, batch {args.batch_size}, {args.points} etas in [0.5, 4] x lr={lr}, "
          f"device {args.device}, {torch.get_num_threads()} threads, training mode")
    print(f"# best of {args.repeats} interleaved runs after a warm-up; forward-backward passes: probe "
          f"{args.points + 1}, deepcopy+step {2 * args.points + 1}, deepcopy+reuse {args.points + 1}")
    print("# variant        wall s   cpu s   probe speedup wall / cpu   max_abs_diff vs probe")
    print(f"probe           {t_probe:7.3f} {c_probe:7.3f}")
    print(f"deepcopy+step   {t_step:7.3f} {c_step:7.3f}   {t_step / t_probe:5.2f}x / {c_step / c_probe:5.2f}x"
          f"   {diff:.3g}")
    print(f"deepcopy+reuse  {t_reuse:7.3f} {c_reuse:7.3f}   {t_reuse / t_probe:5.2f}x / "
          f"{c_reuse / c_probe:5.2f}x   {diff_lean:.3g}")
    print(f"speedup_vs_deepcopy={t_step / t_probe:.2f} max_abs_diff={diff:.3g}")


if __name__ == "__main__":
    main()
