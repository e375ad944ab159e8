"""What the workflow says to the person who ran it: at the end of a run, what it found (the short
claims table) and where everything is, with the one command that opens each; when a job failed,
the one log to read; when a target names something the config does not make, which config it is
not in and what to pass instead.

The Snakefile's `onsuccess` / `onerror` handlers and the rules' input functions call these. They
run in the Snakemake process, so: csv and json from the standard library only (no torch, no
pandas), and nothing here may fail the run it reports on (a missing or malformed claims table is
reported as such).
"""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path

DEFAULT_CONFIG = "config/config.yaml"  # the Snakefile's `configfile`, used when none is given
EFFECT_CHARS = 30  # long cells are shortened, so that a row fits a terminal line
CLAIM_CHARS = 40
ROW_CHARS = 30
REPORTED = "reported"  # bnstudy.claims.record.REPORTED (not imported: that package needs pandas)


def config_label(configfiles) -> str:
    """The config(s) a run used, as the user would type them."""
    names = [str(c) for c in configfiles or ()]
    return " + ".join(names) if names else DEFAULT_CONFIG


def config_option(configfiles) -> str:
    """`--configfile=<cfg> ` for a command that must read the same config ('' for the default).
    The `=` form: `--configfile A target` would read the target as a second config file."""
    names = [str(c) for c in configfiles or ()]
    if not names:
        return ""
    if len(names) == 1:
        return f"--configfile={names[0]} "
    return "--configfile " + " ".join(names) + " "  # several: the list ends at the next option


# ----------------------------------------------------------------------------------------------
# targets the config does not make


def unknown_target(kind: str, name: str, configfiles, known=()) -> str:
    """One line for a target (or a job asked for by hand) that names a run, study or dataset this
    config does not have."""
    cfg = config_label(configfiles)
    first = (configfiles or [DEFAULT_CONFIG])[0]
    listing = {"run": f"its runs: `bnstudy plan {first} --runs`",
               "analysed run": f"runs with analyses: `bnstudy plan {first} --runs` (studies that list analyses)",
               "study": "its studies: " + (", ".join(known) or "none"),
               "study with figures": "studies with figures: " + (", ".join(known) or "none"),
               "dataset": "its datasets: " + (", ".join(known) or "none")}[kind]
    return (f"bnstudy: {cfg} has no {kind} {name!r} ({listing}); for one of another config, "
            f"pass --configfile=<that config> before the targets")


# ----------------------------------------------------------------------------------------------
# the end of a successful run


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def effect_text(row: dict) -> str:
    """The effect with its 95% interval or its exact p-value (as claims.md's short table)."""
    effect, low, high, p = (_float(row.get(k)) for k in ("effect", "ci_low", "ci_high", "p_value"))
    if not math.isfinite(effect):
        return "-"
    text = f"{effect:+.3g}"
    if math.isfinite(low) and math.isfinite(high):
        return f"{text} [{low:+.3g}, {high:+.3g}]"
    if math.isfinite(p):
        return f"{text} (p = {p:.3g})"
    return text


def claim_rows(path: Path) -> list[dict]:
    """claims.csv as rows of claim, row (its measure and window: the key without the claim kind),
    study, verdict and effect."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{"claim": row.get("claim", ""), "row": row.get("key", "").partition(".")[2],
                 "study": row.get("study", ""), "verdict": row.get("verdict", ""),
                 "effect": effect_text(row)} for row in csv.DictReader(fh)]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def claims_table(rows: list[dict]) -> list[str]:
    """A fixed-width table a terminal shows as is."""
    header = {"claim": "claim", "row": "measure.window", "study": "study", "verdict": "verdict",
              "effect": "effect [95% CI]"}
    cells = [header] + [{**r, "claim": _cut(r["claim"], CLAIM_CHARS), "row": _cut(r["row"], ROW_CHARS),
                         "effect": _cut(r["effect"], EFFECT_CHARS)} for r in rows]
    widths = {k: max(len(c[k]) for c in cells) for k in header}
    return ["  " + "  ".join(c[k].ljust(widths[k]) for k in header).rstrip() for c in cells]


def _sqlite_uri(results: str) -> str:
    """The default store as the user would type it (relative stays relative: sqlite:///results/...)."""
    return f"sqlite:///{Path(results) / 'mlflow.db'}"


def success_lines(results: str, tracking: dict, configfiles=(), opener: str | None = None) -> list[str]:
    """What a finished run found and where it is: the claims table, then the figures, the report
    and the MLflow store, each with the command that opens it."""
    opener = opener or ("open" if sys.platform == "darwin" else "xdg-open")
    res = Path(results)
    cfg = config_option(configfiles)
    lines = ["", "bnstudy: the workflow finished."]
    claims = res / "claims.csv"
    try:
        rows = claim_rows(claims)
    except FileNotFoundError:
        lines.append(f"Claims: none yet ({claims} is written by the whole DAG: snakemake {cfg}--cores 2)")
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        lines.append(f"Claims: {claims} could not be read ({type(err).__name__}: {err})")
    else:
        # the tested rows; measurements the sources state no finding for (verdict `reported`) are
        # counted, and listed in claims.md
        tested = [r for r in rows if r["verdict"] != REPORTED]
        counts = {v: sum(r["verdict"] == v for r in rows) for v in dict.fromkeys(r["verdict"] for r in rows)}
        tally = ", ".join(f"{n} {v}" for v, n in counts.items()) or "no rows"
        lines.append(f"Claims ({claims}: {tally}; each row's rule and reason: {res / 'claims.md'}):")
        lines += claims_table(tested) if tested else ["  (no tested claim in this config)"]
    figures = sorted(res.glob("figures/*/*.png"))
    studies = len({f.parent.name for f in figures})
    lines.append(f"Figures: {res / 'figures'}/<study>/<kind>.png|pdf ({len(figures)} figures, {studies} studies)"
                 f"   open: {opener} {res / 'figures'}")
    lines.append(f"Report: every figure with its caption and the claims, in one file"
                 f"   make and open: snakemake {cfg}--report report.html && {opener} report.html")
    if not tracking.get("enabled", True):
        lines.append("MLflow: tracking is off (tracking.enabled: false)")
    elif tracking.get("uri"):
        uri = tracking["uri"]
        where = uri if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
        lines.append(f"MLflow: {uri}, experiment {tracking.get('experiment')!r}   open: {where}")
    else:
        lines.append(f"MLflow: {res / 'mlflow.db'}, experiment {tracking.get('experiment')!r}"
                     f"   open: mlflow ui --backend-store-uri {_sqlite_uri(results)}"
                     f"  (then http://127.0.0.1:5000, 'Model training' view)")
    return lines


# ----------------------------------------------------------------------------------------------
# a failed run

ERROR_RULE = re.compile(r"^Error in rule (\S+?):\s*$")
LOG_LINE = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?\s*$")
WILDCARDS_LINE = re.compile(r"^\s+wildcards: (.+?)\s*$")


def _one_log(snakemake_log) -> Path | None:
    """Snakemake hands the handlers its log file, or a list of them (the first is this run's)."""
    if isinstance(snakemake_log, (list, tuple)):
        snakemake_log = snakemake_log[0] if snakemake_log else None
    return Path(snakemake_log) if snakemake_log else None


def failed_jobs(snakemake_log) -> list[dict]:
    """Each failed job of a Snakemake log (its `Error in rule X:` blocks): rule, wildcards, log."""
    path = _one_log(snakemake_log)
    try:
        text = path.read_text(encoding="utf-8", errors="replace") if path else ""
    except OSError:
        text = ""
    jobs, current = [], None
    for line in text.splitlines():
        m = ERROR_RULE.match(line)
        if m:
            current = {"rule": m.group(1), "wildcards": "", "log": ""}
            jobs.append(current)
            continue
        if current is None:
            continue
        if not line.startswith((" ", "\t")):
            current = None  # the block ended
            continue
        if (m := LOG_LINE.match(line)) and not current["log"]:
            current["log"] = m.group(1)
        elif (m := WILDCARDS_LINE.match(line)) and not current["wildcards"]:
            current["wildcards"] = m.group(1)
    return jobs


def failure_line(snakemake_log) -> str:
    """One line: the failed job and the log that says why (then how many others failed)."""
    jobs = failed_jobs(snakemake_log)
    snakemake_log = _one_log(snakemake_log)
    if not jobs:
        return (f"bnstudy: the workflow stopped before a job failed (a config, DAG or scheduling error): "
                f"see the messages above{f' or {snakemake_log}' if snakemake_log else ''}")
    job = jobs[0]
    what = f"{job['rule']} ({job['wildcards']})" if job["wildcards"] else job["rule"]
    where = f"read {job['log']}" if job["log"] else f"it has no log: see {snakemake_log}"
    more = f"; {len(jobs) - 1} more failed (see {snakemake_log})" if len(jobs) > 1 else ""
    return f"bnstudy: job {what} failed: {where}{more}"


def on_success(results: str, tracking: dict, configfiles=()) -> None:
    """Snakefile `onsuccess`. A summary that cannot be made says so in one line: the run it
    reports on succeeded, and must not end in a traceback."""
    try:
        text = "\n".join(success_lines(results, tracking, configfiles))
    except Exception as err:  # noqa: BLE001 (see above)
        text = f"bnstudy: the workflow finished (no summary: {type(err).__name__}: {err})"
    print(text, flush=True)


def on_error(snakemake_log) -> None:
    """Snakefile `onerror`: one line naming the failed job's log."""
    try:
        line = failure_line(snakemake_log)
    except Exception as err:  # noqa: BLE001 (Snakemake has reported the failure; this adds to it)
        line = f"bnstudy: a job failed (see the messages above; {type(err).__name__}: {err})"
    print(line, file=sys.stderr, flush=True)
