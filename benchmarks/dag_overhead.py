"""Where a DAG's time goes: each job's own work against its wall time (start-up, imports, tracking).

Runs a config's whole DAG from scratch in a temporary working directory (default: the demo,
config/config.yaml, `--cores 2`), then reads, for every job, its wall time (Snakemake's
`benchmark:` file) and its in-process work time (the `[bnstudy] <command> work_s=<s>` line that
`python -m bnstudy` prints last in each job's log). Prints per job kind the count, the mean wall
and work seconds and the overhead share, then the time `snakemake -n` takes to plan
config/paper.yaml, and last:

    dag_wall_s=<s> work_s=<s> overhead_share=<r>

overhead_share = 1 - (sum of work) / (sum of job walls): the share of the jobs' time that is not
their work. With --baseline REV, the same DAG first runs from the git revision REV (checked out in
a temporary worktree, with the same interpreter and packages), then from this checkout, and the
ratios of the two are printed before the last line (this checkout's). Compare runs only within
one call: shared VMs vary 2-4x between sessions.

    python benchmarks/dag_overhead.py [--configfile config/config.yaml] [--cores 2] [--keep DIR] [--baseline REV]
    python benchmarks/dag_overhead.py --results DIR/results --dag-wall 512   # re-read a finished run
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
WORK_LINE = re.compile(r"^\[bnstudy\] (\S+) work_s=([0-9.]+)\s*$", re.M)


def run_dag(workdir: Path, configfile: str, cores: int, checkout: Path = REPO) -> float:
    cmd = [SNAKEMAKE, "--snakefile", str(checkout / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(checkout / configfile), "--cores", str(cores), "--quiet", "rules"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the DAG failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def worktree(rev: str, folder: Path) -> Path:
    """A checkout of git revision `rev` in `folder` (a detached worktree of this repository)."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), rev],
                   check=True, capture_output=True, text=True)
    return folder


def jobs(results: Path) -> list[tuple[str, float, float]]:
    """(command, wall seconds, work seconds) of every job that left a benchmark and a log."""
    out = []
    for bench in sorted((results / "benchmarks").rglob("*.tsv")):
        log = results / "logs" / bench.relative_to(results / "benchmarks").with_suffix(".log")
        if not log.is_file():
            continue
        with open(bench) as fh:
            wall = float(next(csv.DictReader(fh, delimiter="\t"))["s"])
        found = WORK_LINE.findall(log.read_text(errors="replace"))
        if found:
            command, work = found[-1]
            out.append((command, wall, float(work)))
    return out


def plan_seconds(configfile: str = "config/paper.yaml") -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", tmp,
               "--configfile", str(REPO / configfile), "-n", "--quiet", "all"]
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, text=True, check=True)
        return time.perf_counter() - start


def report(rows: list[tuple[str, float, float]]) -> tuple[float, float]:
    """Print the per-kind table; return (sum of job walls, sum of work)."""
    by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for command, wall, work in rows:
        by_kind[command].append((wall, work))
    print(f"\n{'job kind':20s} {'jobs':>5s} {'wall s':>8s} {'work s':>8s} {'overhead':>9s}")
    for command, values in sorted(by_kind.items(), key=lambda kv: -sum(w for w, _ in kv[1])):
        wall, work = sum(w for w, _ in values), sum(w for _, w in values)
        print(f"{command:20s} {len(values):5d} {wall / len(values):8.2f} {work / len(values):8.2f} "
              f"{1 - work / wall:9.2f}")
    total_wall, total_work = sum(w for _, w, _ in rows), sum(w for _, _, w in rows)
    print(f"{'all jobs':20s} {len(rows):5d} {total_wall:8.1f} {total_work:8.1f} "
          f"{1 - total_work / total_wall:9.2f}   (sums)")
    return total_wall, total_work


def measure(configfile: str, cores: int, workdir: Path, label: str,
            checkout: Path = REPO) -> tuple[float, float, float]:
    """Run the DAG in `workdir`; print its table; return (DAG wall, sum of job walls, work)."""
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"\n== {label}: {configfile} with --cores {cores} in {workdir} ...", flush=True)
    dag_wall = run_dag(workdir, configfile, cores, checkout)
    rows = jobs(workdir / "results")
    if not rows:
        sys.exit(f"no job logs with a work_s line under {workdir / 'results'}")
    total_wall, total_work = report(rows)
    print(f"DAG wall {dag_wall:.1f} s")
    return dag_wall, total_wall, total_work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", default="config/config.yaml")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    ap.add_argument("--baseline", metavar="REV",
                    help="first run the same DAG from git revision REV, and print the ratios")
    ap.add_argument("--results", type=Path, help="read a finished run's results folder instead of running")
    ap.add_argument("--dag-wall", type=float, help="with --results: the DAG's wall time, if known")
    args = ap.parse_args()

    if args.results:
        rows = jobs(args.results)
        if not rows:
            sys.exit(f"no job logs with a work_s line under {args.results}")
        dag_wall, (total_wall, total_work) = args.dag_wall or float("nan"), report(rows)
    else:
        root = args.keep or Path(tempfile.mkdtemp(prefix="bnstudy-dag-"))
        root.mkdir(parents=True, exist_ok=True)
        if args.baseline:
            checkout = worktree(args.baseline, root / "baseline-checkout")
            try:
                base = measure(args.configfile, args.cores, root / "baseline", f"baseline: revision {args.baseline}",
                               checkout)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)],
                               capture_output=True)
        dag_wall, total_wall, total_work = measure(args.configfile, args.cores, root / "dag", "this checkout")
        if args.baseline:
            print(f"\nratio to the baseline: DAG wall {dag_wall / base[0]:.2f}, sum of job walls "
                  f"{total_wall / base[1]:.2f}, work {total_work / base[2]:.2f} "
                  f"(baseline overhead_share {1 - base[2] / base[1]:.3f})")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([SNAKEMAKE, "--version"], capture_output=True, check=True)
    startup = time.perf_counter() - start
    planning = plan_seconds()
    # Snakemake loads every installed executor plugin at start-up; the Slurm plugin runs
    # `scontrol show config`, which waits ~10 s where Slurm is installed but its controller is down
    print(f"\nsnakemake -n on config/paper.yaml: {planning:.2f} s, of which Snakemake's start-up "
          f"(`snakemake --version`, executor plugins included) {startup:.2f} s")
    print(f"dag_wall_s={dag_wall:.1f} work_s={total_work:.1f} overhead_share={1 - total_work / total_wall:.3f}")


if __name__ == "__main__":
    main()
