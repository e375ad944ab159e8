# bnstudy: how does BatchNorm help optimisation? (Santurkar et al. 2018; Ioffe & Szegedy 2015)
# The DAG: prepare_data, install_data (per dataset) -> train (per run) -> analyze (per run: every
#          analysis table it needs) -> aggregate (per study: its tables) -> figures (per study),
#          claims -> track, report. One file per stage in workflow/rules/.
# Logic lives in the bnstudy package; rules only call it (python -m bnstudy <command>).
from snakemake.utils import min_version

min_version("9.0")


# the default config, unless --configfile names another: a config file replaces the default
# rather than being merged into it (a merge would keep the default's studies in every run)
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analyze.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/track.smk"


report: "workflow/report/workflow.rst"


# Bookkeeping and plotting run where Snakemake runs, never as cluster jobs: each takes seconds,
# far less than a place in a Slurm queue.
localrules:
    all,
    install_data,
    init_tracking,
    aggregate,
    figures,
    claims,
    track,


rule all:
    input:
        all_outputs(),
    default_target: True


# Before the first job: the tracking settings and each run's MLflow labels, for the training jobs
# (not an input of theirs: see bnstudy.tracking.context). Not on dry runs.
onstart:
    write_context(TRACKING_CONTEXT, TRACKING, run_labels())


# The run ends by saying what it found (the claims) and where everything is, with the command that
# opens each (bnstudy.summary); a failed run, by naming the log of the job that failed.
onsuccess:
    on_success(RESULTS, TRACKING, CONFIGFILES)


onerror:
    on_error(log)
