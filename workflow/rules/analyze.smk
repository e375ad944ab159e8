rule analyze:
    """Every analysis table some study needs of one run (ICS, landscape, curvature, ...).

    One job per run: it loads each checkpoint (listed in summary.json, written after the last of
    them) and the prepared data once, and writes one table per (analysis, settings hash) into the
    run's analysis folder. Studies that ask for the same analysis of a shared run read one table;
    changing a study's analysis settings changes the params and so reruns the job.
    """
    input:
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
        spec=f"{RESULTS}/runs/{{run}}/spec.json",
        data=run_dataset,
    output:
        directory(f"{RESULTS}/analysis/{{run}}"),
    params:
        jobs=analysis_jobs,
        run_dir=run_folder,
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
        "python -m bnstudy analyze --run-dir {params.run_dir} --jobs {params.jobs:q} "
        "--threads {threads} --out-dir {output} > {log} 2>&1"
