rule aggregate:
    """Collect one study's per-run and per-analysis tables into tidy study tables."""
    input:
        summaries=study_summaries,
        analyses=study_analysis_tables,
    output:
        runs=f"{RESULTS}/tables/{{study}}/runs.csv",
        train=f"{RESULTS}/tables/{{study}}/train.csv",
        eval=f"{RESULTS}/tables/{{study}}/eval.csv",
        layers=f"{RESULTS}/tables/{{study}}/layers.csv",
    params:
        study=study_config,
        out_dir=parent_of_output,
    log:
        f"{RESULTS}/logs/aggregate/{{study}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate/{{study}}.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy aggregate --study {wildcards.study} --study-config {params.study:q} "
        "--out-dir {params.out_dir} --analysis-tables {input.analyses} "
        "--summaries {input.summaries} > {log} 2>&1"
