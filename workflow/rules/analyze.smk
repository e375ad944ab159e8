rule analyze:
    """One checkpoint analysis (ICS, landscape or curvature) of one run, for one set of settings.

    Keyed by (run, analysis, hash of the settings): every study that asks for the same analysis of
    a shared run reads this one table. The job loads the run's checkpoints (listed in summary.json,
    written after the last of them) and the prepared data once.
    """
    input:
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
        spec=f"{RESULTS}/runs/{{run}}/spec.json",
        data=run_dataset,
    output:
        f"{RESULTS}/analysis/{{run}}/{{analysis}}-{{digest}}.csv",
    params:
        settings=analysis_settings,
        run_dir=run_folder,
    threads: max(1, config["runtime"]["threads"])
    resources:
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/analyze/{{run}}/{{analysis}}-{{digest}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/analyze/{{run}}/{{analysis}}-{{digest}}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m bnstudy analyze --run-dir {params.run_dir} --settings {params.settings:q} "
        "--threads {threads} --out {output} > {log} 2>&1"
