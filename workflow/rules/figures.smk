rule figure:
    """One figure of one study, drawn from the study's tables (PNG for the report, PDF beside it)."""
    input:
        runs=f"{RESULTS}/tables/{{study}}/runs.csv",
    output:
        png=report(
            f"{RESULTS}/figures/{{study}}/{{figure}}.png",
            caption="../report/figure.rst",
            category="{study}",
        ),
        pdf=f"{RESULTS}/figures/{{study}}/{{figure}}.pdf",
    params:
        caption=figure_caption,
        study=study_config,
        tables=parent_of_input,
    log:
        f"{RESULTS}/logs/figure/{{study}}/{{figure}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/figure/{{study}}/{{figure}}.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy figure --study {wildcards.study} --figure {wildcards.figure} "
        "--tables {params.tables} --study-config {params.study:q} --out {output.png} > {log} 2>&1"


rule claims:
    """The claims verdict table: each claim of both papers against the measured effect."""
    input:
        expand(f"{RESULTS}/tables/{{study}}/runs.csv", study=list(PLAN.study_runs)),
    output:
        csv=report(f"{RESULTS}/claims.csv", caption="../report/claims.rst", category="claims"),
        md=f"{RESULTS}/claims.md",
    params:
        studies=as_json({s: config["studies"][s] for s in PLAN.study_runs}),
        tables=tables_root,
    log:
        f"{RESULTS}/logs/claims.log",
    benchmark:
        f"{RESULTS}/benchmarks/claims.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy claims --tables-root {params.tables} --studies-config {params.studies:q} "
        "--out-csv {output.csv} --out-md {output.md} > {log} 2>&1"


rule track_figures:
    """Log every figure to MLflow, in one 'figures' run per pipeline execution."""
    input:
        figure_files(),
    output:
        f"{RESULTS}/tracking/figures.json",
    params:
        tracking=as_json(TRACKING),
    log:
        f"{RESULTS}/logs/track_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/track_figures.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy track-figures --tracking {params.tracking:q} --out {output} {input} > {log} 2>&1"
