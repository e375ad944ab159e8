rule analyze:
    """One checkpoint analysis (ICS, landscape or curvature) of one run, for one study's settings."""
    input:
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
    output:
        f"{RESULTS}/analysis/{{study}}/{{analysis}}/{{run}}.csv",
    params:
        settings=analysis_settings,
        tracking=as_json(TRACKING),
        run_dir=parent_of_input,
    threads: max(1, config["runtime"]["threads"])
    resources:
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/analyze/{{study}}/{{analysis}}/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/analyze/{{study}}/{{analysis}}/{{run}}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m bnstudy analyze --analysis {wildcards.analysis} --study {wildcards.study} "
        "--run-dir {params.run_dir} --settings {params.settings:q} --tracking {params.tracking:q} "
        "--threads {threads} --out {output} > {log} 2>&1"
