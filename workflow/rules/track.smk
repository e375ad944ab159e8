# MLflow: the store, and the sync at the end. Tracking is a view of the results: no rule here is
# upstream of training or the analyses, so no tracking setting retrains or reanalyses a run. The
# training jobs learn the settings and their runs' labels from the context file the Snakefile's
# `onstart` writes (bnstudy.tracking.context.write_context says why it is not an input).


rule init_tracking:
    """Create the MLflow store and experiment once (live tracking), and record where they are
    (results/tracking/ready.json: the track job and `bnstudy track` read it). Training jobs do not
    wait for it: one that starts first creates the store itself, under the store's lock."""
    output:
        f"{RESULTS}/tracking/ready.json",
    params:
        tracking=as_json(TRACKING),
        artifacts=f"{RESULTS}/mlartifacts",
    log:
        f"{RESULTS}/logs/init_tracking.log",
    benchmark:
        f"{RESULTS}/benchmarks/init_tracking.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m bnstudy init-tracking --tracking {params.tracking:q} "
        "--artifacts {params.artifacts} --out {output} > {log} 2>&1"


rule track:
    """MLflow, once per execution: the runs (all of them when tracking is not live, else what a
    job could not send), every analysis table, and one 'figures' run holding the figures.

    summary.json is ancient() here as in rule aggregate: a retraining that ends as before (a
    resumed run, the same numbers) leaves nothing to send, and must not rerun the sync; the run
    tables it sends (and spec.json) change when the numbers do. They also keep this job reachable
    when a training job reruns: Snakemake 9 does not follow an ancient() input from a job that
    reruns to its consumer, nor evaluates that consumer otherwise (snakemake/snakemake#4166)."""
    input:
        summaries=ancient([f"{RESULTS}/runs/{run}/summary.json" for run in PLAN.runs]),
        runs=[f"{RESULTS}/runs/{run}/{name}" for run in PLAN.runs for name in ("spec.json", "train.csv", "eval.csv")],
        analyses=[analysis_folder(run) for run in PLAN.analysed_runs()],
        figures=all_figures(),
        marker=tracking_marker,
    output:
        f"{RESULTS}/tracking/track.json",
    params:
        tracking=as_json(TRACKING),
    log:
        f"{RESULTS}/logs/track.log",
    benchmark:
        f"{RESULTS}/benchmarks/track.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy track --tracking {params.tracking:q} --out {output} "
        "--figures {input.figures} > {log} 2>&1"
