"""`python -m bnstudy <command>`: the entry points the Snakemake rules call.

Each command does one stage for one target and takes its settings as JSON (the rules pass the
resolved config slices as params, so Snakemake reruns a job exactly when its settings change).
Users can run the same commands by hand; `bnstudy plan` shows what a config expands to.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

WORK_SECONDS = [0.0]  # time spent in the stage's own work, not in start-up and imports


@contextlib.contextmanager
def work():
    """Time the stage's work: the last log line of every job reports it (benchmarks/dag_overhead.py
    compares it with the job's wall time to find what start-up costs)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        WORK_SECONDS[0] += time.perf_counter() - start


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"bnstudy: invalid JSON argument ({err}): {text[:200]}")


def _tracking(text: str) -> dict:
    """The tracking params of a rule, with the URI resolved (null = <results>/mlflow.db)."""
    from .tracking.context import resolve_uri

    tracking = _json(text)
    if tracking.get("enabled"):
        tracking["uri"] = resolve_uri(tracking, tracking.get("results", "results"))
    return tracking


def _terminate_as_exception() -> None:
    """Slurm (cancel, preemption, time limit) and snakemake send SIGTERM: turn it into an
    exception so the run is marked FAILED in MLflow and the checkpoints on disk stay usable."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def cmd_prepare_data(args) -> None:
    from .data.datasets import prepare

    with work():
        meta = prepare(_json(args.config), args.name, Path(args.out), Path(args.record) if args.record else None)
    print(f"prepared {args.name}: {meta['n_train']} train / {meta['n_test']} test samples, "
          f"sha256 {meta['sha256'][:12]}", file=sys.stderr)


def cmd_install_data(args) -> None:
    """Put a finished preparation in place (rule install_data, workflow/rules/data.smk): each --from
    file copied to a temporary name and renamed to its --to file. Not a hard link: Snakemake
    touches a job's outputs, then checks each is no older than every input, and an output sharing
    its input's inode lets touching the record age the data file (a "clock skew" error on a loaded
    machine). The incoming files are temporary: the copy (CIFAR-10: 185 MB) lasts seconds."""
    import shutil

    if len(args.sources) != len(args.targets):
        raise SystemExit("bnstudy install-data: give as many --to files as --from files")
    for source, target in zip(map(Path, args.sources), map(Path, args.targets)):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)


def _marker(tracking: dict) -> Path:
    """results/tracking/ready.json: rule init_tracking's output (jobs read it, never write it)."""
    return Path(tracking.get("results", "results")) / "tracking" / "ready.json"


def cmd_init_tracking(args) -> None:
    """Create the store and experiment once per execution. A tracking outage here does not stop
    the DAG: the marker records the error and the jobs try (and degrade) on their own."""
    from .tracking.context import describe, incomplete_line
    from .tracking.store import init_store

    tracking = _tracking(args.tracking)
    exp, error = None, None
    if tracking["enabled"]:
        try:
            exp = init_store(tracking["uri"], tracking["experiment"], Path(args.artifacts))
        except Exception as err:
            error = describe(err)
            print(incomplete_line(f"could not initialise the MLflow store ({error})"), file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"uri": tracking.get("uri"), "experiment_id": exp,
                                          "experiment": tracking["experiment"],
                                          "artifacts": str(Path(args.artifacts).resolve()),
                                          "error": error}) + "\n")


def cmd_train(args) -> None:
    from .config.spec import RunSpec
    from .tracking.runs import run_name
    from .train.loop import train

    spec = RunSpec.from_json(args.spec, "--spec")
    studies = args.studies.split(",") if args.studies else []
    if args.context:  # the workflow's way: settings and labels from the context, not from params
        from .tracking.context import read_context

        context = read_context(Path(args.context), spec.run)
        if context is None:
            print(f"{args.context} does not exist (Snakemake ran with --no-hooks?): training "
                  f"without live tracking; the workflow's track job sends the run", file=sys.stderr)
        else:
            settings, context_name, studies = context
            args.tracking, args.name = json.dumps(settings), args.name or context_name
    tracking = _tracking(args.tracking)
    run_dir = Path(args.run_dir)
    name = args.name or run_name(spec)
    holder = {}
    # live tracking: this job sends its metrics as it trains; else (tracking.live: false) the
    # workflow's `track` job sends every run at the end, and this job never imports mlflow
    live = tracking["enabled"] and tracking.get("live", True)

    def open_tracker(previous):
        from .tracking.context import default_artifact_root, read_marker
        from .tracking.tracker import MlflowTracker

        # the artifact root init_tracking chose, if it is for this store (a job that recreates
        # the store or the experiment gives it the same)
        marker = read_marker(_marker(tracking))
        same = marker.get("uri") == tracking["uri"] and marker.get("experiment") == tracking["experiment"]
        holder["t"] = MlflowTracker(
            tracking["uri"], tracking["experiment"], spec, run_dir, previous,
            studies=studies, name=name,
            artifact_root=marker.get("artifacts") if same and marker.get("artifacts")
            else default_artifact_root(tracking.get("results", "results")),
            resuming=previous is not None or any(run_dir.glob("checkpoints/step_*.pt")))
        return holder["t"]

    _terminate_as_exception()
    try:
        summary = train(spec, run_dir, open_tracker=open_tracker if live else None,
                        threads=args.threads, timer=work, name=name)
    except BaseException as err:
        if "t" in holder:  # bounded: a dead store cannot hold a SIGTERM'd job
            holder["t"].fail(f"{type(err).__name__}: {err}")
        raise
    print(f"{spec.run}: {summary['status']} after {summary['steps_done']} steps "
          f"in {summary['wall_seconds']:.1f}s", file=sys.stderr)


def _pairs(items: list[str], option: str, path: bool = True) -> dict:
    """NAME=VALUE arguments -> {NAME: VALUE} (a Path unless `path` is false)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"bnstudy: {option} takes NAME={'PATH' if path else 'VALUE'}, got {item!r}")
        out[name] = Path(value) if path else value
    return out


def cmd_analyze(args) -> None:
    from .analysis.run import AnalysisJob, analyze
    from .train.runtime import resolve_device, set_threads
    from .config.spec import RunSpec

    run_dir = Path(args.run_dir)
    spec = RunSpec.from_json((run_dir / "spec.json").read_text(), str(run_dir / "spec.json"))
    set_threads(spec.runtime, args.threads)
    device = resolve_device(spec.runtime)
    jobs = [AnalysisJob(job["analysis"], job["digest"], job["settings"]) for job in _json(args.jobs)]
    # no MLflow here: the workflow's `track` job attaches every analysis table in one process
    with work():
        analyze(jobs, run_dir, Path(args.out_dir), str(device))


def cmd_aggregate(args) -> None:
    from .tables.aggregate import aggregate

    with work():
        aggregate(args.study, _json(args.study_config), [Path(p).parent for p in args.summaries],
                  _pairs(args.analyses, "--analyses", path=False), Path(args.analysis_root), Path(args.out_dir))


def cmd_figures(args) -> None:
    from .figures.draw import draw_study

    with work():
        draw_study(args.study, _json(args.study_config), Path(args.tables), args.kinds, Path(args.out_dir))


def cmd_claims(args) -> None:
    from .claims.table import claims

    with work():
        claims(_json(args.studies_config), _pairs(args.tables, "--tables"), Path(args.out_csv), Path(args.out_md))


def cmd_track(args) -> None:
    """Re-send to MLflow what the store is missing, from the run folders (idempotent)."""
    from .tracking.sync import sync
    from .tracking.context import EXECUTION_ENV, read_marker, resolve_uri

    tracking, results = {}, "results"
    if args.configfile:
        from .configure import load_config

        config = load_config(args.configfile)
        tracking, results = dict(config["tracking"]), config["results"]
    if args.tracking:
        tracking.update(_json(args.tracking))
        results = tracking.get("results", results)
    results = Path(args.results or results)
    # a server named by the init_tracking marker; a SQLite store is the one in the results folder
    marker = read_marker(results / "tracking" / "ready.json")
    server = marker.get("uri") if str(marker.get("uri")).startswith("http") else None
    uri = args.uri or tracking.get("uri") or server or resolve_uri({}, str(results))
    experiment = args.experiment or tracking.get("experiment") or marker.get("experiment") or "bnstudy"
    record = _json((results / "tracking" / "track.json").read_text()) \
        if (results / "tracking" / "track.json").is_file() else {}
    execution = os.environ.get(EXECUTION_ENV, "manual")
    # a study's figures folder (the figures rule's output) stands for the PNGs in it
    figures = [f for arg in map(Path, args.figures) for f in (sorted(arg.glob("*.png")) if arg.is_dir() else [arg])]
    with work():
        report = sync(results, uri, experiment, artifact_root=results / "mlartifacts",
                      figures=figures, execution=execution, record=record)
    print(f"bnstudy track: {report['checked']} runs checked, {report['repaired']} repaired, "
          f"{report['points']} metric points sent, {report['artifacts']} artifacts attached "
          f"({uri}, experiment {experiment})")
    if args.out:
        from .files import write_json

        write_json(Path(args.out), {**report, "execution": execution, "uri": uri, "experiment": experiment})
    if report["failed"]:
        raise SystemExit(f"bnstudy track: {len(report['failed'])} runs could not be sent: "
                         + "; ".join(report["failed"][:5]))


def cmd_results(args) -> None:
    """The README's results section from a run's digest (and the digest from the run first)."""
    from .results import rewrite, save_digest, section

    if args.results:
        copied = save_digest(Path(args.results), Path(args.digest))
        print(f"bnstudy results: {len(copied)} files of {args.results} copied to {args.digest}", file=sys.stderr)
    studies = [s for s in args.accuracy_studies if (Path(args.digest) / "runs" / f"{s}.csv").is_file()]
    changed = rewrite(Path(args.readme), section(Path(args.digest), studies), Path(args.digest), check=args.check)
    if args.check and changed:
        raise SystemExit(f"bnstudy results: {args.readme}'s results section differs from what {args.digest} "
                         f"gives: run `bnstudy results --digest {args.digest} --readme {args.readme}`")
    print(f"bnstudy results: {args.readme} {'is up to date' if not changed else 'rewritten'}", file=sys.stderr)


def cmd_plan(args) -> None:
    from .configure import load_config
    from .config.plan import plan

    config = load_config(args.configfile)
    p = plan(config)
    for study, runs in p.study_runs.items():
        analyses = ", ".join(p.study_analyses[study]) or "-"
        figures = ", ".join(config["studies"][study]["figures"]) or "-"
        print(f"{study:24s} {len(runs):4d} runs   analyses: {analyses}   figures: {figures}")
        if args.runs:
            for run in runs:
                print(f"    {run}")
    tables = sum(len(p.run_analyses(run)) for run in p.runs)
    print(f"{'total (shared runs once)':24s} {len(p.runs):4d} runs, {tables} analysis tables of "
          f"{len(p.analysed_runs())} runs (one analysis job per run)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnstudy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-data", help="build one dataset's cached tensor file")
    p.add_argument("--name", required=True)
    p.add_argument("--config", required=True, help="the dataset's config (JSON)")
    p.add_argument("--out", required=True)
    p.add_argument("--record", default=None, help="write the source it was made from here (JSON)")
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("install-data", help="put a finished dataset preparation in place")
    p.add_argument("--from", dest="sources", nargs="+", required=True)
    p.add_argument("--to", dest="targets", nargs="+", required=True)
    p.set_defaults(func=cmd_install_data)

    p = sub.add_parser("init-tracking", help="create the MLflow store and experiment once")
    p.add_argument("--tracking", required=True, help="the tracking config (JSON)")
    p.add_argument("--artifacts", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_init_tracking)

    p = sub.add_parser("train", help="train (or resume) one run")
    p.add_argument("--spec", required=True, help="the run spec (JSON)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--tracking", default='{"enabled": false}')
    p.add_argument("--studies", default="")
    p.add_argument("--context", default=None, help="take --tracking, --studies and --name from this "
                   "tracking context (the workflow's: results/tracking/context.json, written when "
                   "an execution starts); '' = none")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--name", default=None, help="the run's display name in MLflow (default: "
                   "'<setup> <variant> lr=<lr> seed=<seed>')")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("analyze", help="every analysis table one run needs, from its checkpoints")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--jobs", required=True,
                   help='the tables to compute (JSON): [{"analysis": ..., "digest": ..., "settings": {...}}]')
    p.add_argument("--out-dir", required=True, help="the run's analysis folder")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("aggregate", help="a study's runs -> its tables folder (runs, train, eval, "
                                         "layers, units and each analysis)")
    p.add_argument("--study", required=True)
    p.add_argument("--study-config", required=True)
    p.add_argument("--summaries", nargs="+", required=True, help="the runs' summary.json files")
    p.add_argument("--analyses", nargs="*", default=[], help="ANALYSIS=HASH of each analysis the study reads")
    p.add_argument("--analysis-root", default="results/analysis", help="the runs' analysis folders")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("figures", help="draw a study's figure kinds from its tables folder")
    p.add_argument("--study", required=True)
    p.add_argument("--study-config", required=True)
    p.add_argument("--tables", required=True, help="the study's tables folder")
    p.add_argument("--kinds", nargs="+", required=True)
    p.add_argument("--out-dir", required=True, help="<kind>.png and <kind>.pdf land here")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("claims", help="the claims verdict table")
    p.add_argument("--studies-config", required=True)
    p.add_argument("--tables", nargs="*", default=[], help="STUDY=FOLDER: each study's tables folder")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-md", required=True)
    p.set_defaults(func=cmd_claims)

    p = sub.add_parser("track", help="re-send to MLflow what the store is missing, from the run "
                                     "folders (idempotent)")
    p.add_argument("--results", default=None,
                   help="the results folder (default: the config's, else results)")
    p.add_argument("--uri", default=None, help="tracking URI (default: the config's, else the "
                   "server in results/tracking/ready.json, else sqlite:///<results>/mlflow.db)")
    p.add_argument("--experiment", default=None, help="default: the config's, else bnstudy")
    p.add_argument("--tracking", default=None, help="the tracking config (JSON), as the rules pass it")
    p.add_argument("--configfile", default=None, help="take results and tracking from a config")
    p.add_argument("--figures", nargs="*", default=[], help="this execution's figures: one 'figures' run holds them")
    p.add_argument("--out", default=None, help="write the report here (JSON)")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("results", help="write the README's results section from a run's tables")
    p.add_argument("--results", default=None, help="a finished run's results folder: refresh the digest from it")
    p.add_argument("--digest", required=True, help="the committed digest folder (claims.csv, runs/, figures/)")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--accuracy-studies", nargs="*",
                   default=["performance", "noisy_bn", "lp_norms", "matched_lr", "normalisers",
                            "normalisers_resnet"],
                   help="studies whose runs the final-accuracy table lists, where the digest has them "
                        "(default: those of the CPU CIFAR configs that train to a final accuracy)")
    p.add_argument("--check", action="store_true", help="only say whether the README is up to date")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("plan", help="what a config expands to (studies, runs, analyses)")
    p.add_argument("configfile")
    p.add_argument("--runs", action="store_true", help="also list each study's run ids")
    p.set_defaults(func=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> None:
    from .errors import USER_ERRORS

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as err:
        raise SystemExit(f"bnstudy {args.command}: {err}") from None
    print(f"[bnstudy] {args.command} work_s={WORK_SECONDS[0]:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
