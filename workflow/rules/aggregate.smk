rule aggregate:
    """One study's runs -> its labelled runs, train, eval, layers and units tables."""
    input:
        summaries=study_summaries,
        run_tables=study_run_tables,
    output:
        runs=f"{RESULTS}/tables/{{study}}/runs.csv",
        train=f"{RESULTS}/tables/{{study}}/train.csv",
        eval=f"{RESULTS}/tables/{{study}}/eval.csv",
        layers=f"{RESULTS}/tables/{{study}}/layers.csv",
        units=f"{RESULTS}/tables/{{study}}/units.csv",
    params:
        study=study_config,
    log:
        f"{RESULTS}/logs/aggregate/{{study}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate/{{study}}.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy aggregate --study {wildcards.study} --study-config {params.study:q} "
        "--summaries {input.summaries} --out runs={output.runs} train={output.train} "
        "eval={output.eval} layers={output.layers} units={output.units} > {log} 2>&1"


rule aggregate_analysis:
    """One analysis of one study's runs -> one labelled table."""
    input:
        summaries=study_summaries,
        tables=study_analysis_tables,
    output:
        f"{RESULTS}/tables/{{study}}/{{analysis}}.csv",
    params:
        study=study_config,
    log:
        f"{RESULTS}/logs/aggregate/{{study}}-{{analysis}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate/{{study}}-{{analysis}}.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy aggregate-analysis --study {wildcards.study} --study-config {params.study:q} "
        "--analysis {wildcards.analysis} --summaries {input.summaries} --tables {input.tables} "
        "--out {output} > {log} 2>&1"
