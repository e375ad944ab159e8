rule train:
    """Train one run (variant x lr x seed x setup); resumes from its last checkpoint.

    Checkpoints (results/runs/{run}/checkpoints/) are deliberately not outputs: Snakemake deletes
    a failed job's outputs, and the checkpoints must survive to resume from. summary.json, written
    last, lists them; the analyses read them through it.

    What decides a rerun is what the outputs depend on: the resolved spec (params.spec, the only
    param; the run id hashes it) and the prepared data. How MLflow shows the run (the tracking
    settings, its display name, the studies that use it) is not: the job reads those from the
    execution's tracking context, named by $BNSTUDY_TRACKING_CONTEXT (set in common.smk, written
    by the Snakefile's `onstart`; bnstudy.tracking.context says why it is no input). Renaming the
    experiment, or adding a study that reuses this run, retrains nothing.
    """
    input:
        data=run_dataset,
    output:
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
        spec=f"{RESULTS}/runs/{{run}}/spec.json",
        train=f"{RESULTS}/runs/{{run}}/train.csv",
        eval=f"{RESULTS}/runs/{{run}}/eval.csv",
        layers=f"{RESULTS}/runs/{{run}}/layers.csv",
        units=f"{RESULTS}/runs/{{run}}/units.csv",
    params:
        spec=run_spec,
    threads: max(1, config["runtime"]["threads"])
    resources:
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{run}}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        'python -m bnstudy train --spec {params.spec:q} --run-dir "$(dirname {output.summary:q})" '
        '--context "$BNSTUDY_TRACKING_CONTEXT" --threads {threads} > {log} 2>&1'
