rule analyze:
    """Every analysis table some study needs of one run (ICS, landscape, curvature, ...).

    One job per run: it loads each checkpoint (listed in summary.json, written after the last of
    them) and the prepared data once, and writes one table per (analysis, settings hash) into the
    run's analysis folder. Studies that ask for the same analysis of a shared run read one table.

    It reruns when its settings or the run's checkpoints change, and for nothing else: params.jobs
    are the settings; the checkpoints are not outputs of training (see rule train), and train.csv
    stands for them: a retraining that changes a checkpoint changes the losses it logged, one that
    resumes and ends as before rewrites the same bytes (Snakemake compares checksums). summary.json
    is read for its list of checkpoints only; the rest of it (wall time, timestamps, the tracking
    state) changes on every retraining, so it is ancient(): it never reruns this job by itself.
    """
    input:
        summary=ancient(f"{RESULTS}/runs/{{run}}/summary.json"),
        spec=analysed_run_spec,
        trained=f"{RESULTS}/runs/{{run}}/train.csv",
        data=run_dataset,
    output:
        directory(f"{RESULTS}/analysis/{{run}}"),
    params:
        jobs=analysis_jobs,
    threads: max(1, config["runtime"]["threads"])
    resources:
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/analyze/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/analyze/{{run}}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        'python -m bnstudy analyze --run-dir "$(dirname {input.spec:q})" --jobs {params.jobs:q} '
        "--threads {threads} --out-dir {output} > {log} 2>&1"
