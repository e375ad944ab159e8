rule aggregate:
    """One study's runs -> its tables folder: runs, train, eval, layers, units and one table per
    analysis it configures, every row labelled with run, variant, lr, seed, status and grid values.

    summary.json is ancient(): what the tables take from it (status, final metrics, steps) comes
    from the run's tables declared beside it, which change whenever the run's numbers do; the rest
    of it (wall time, timestamps, the tracking state) changes on every retraining and must not
    redo the tables, the figures and the claims by itself.
    """
    input:
        summaries=ancient(study_summaries),
        run_tables=study_run_tables,
        analyses=study_analysis_folders,
    output:
        directory(f"{RESULTS}/tables/{{study}}"),
    params:
        study=study_config,
        analyses=study_analyses,
        analysis_root=f"{RESULTS}/analysis",
    log:
        f"{RESULTS}/logs/aggregate/{{study}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate/{{study}}.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy aggregate --study {wildcards.study} --study-config {params.study:q} "
        "--summaries {input.summaries} --analyses {params.analyses} "
        "--analysis-root {params.analysis_root} --out-dir {output} > {log} 2>&1"
