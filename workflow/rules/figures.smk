rule figures:
    """Every figure kind one study lists, drawn from its tables folder (PNG + PDF per kind)."""
    input:
        tables=f"{RESULTS}/tables/{{study}}",
    output:
        report(
            directory(f"{RESULTS}/figures/{{study}}"),
            patterns=["{kind}.png"],
            caption="../report/figure.rst",
            category="{study}",
        ),
    params:
        study=study_config,
        kinds=figure_kinds,
        captions=figure_captions,
    log:
        f"{RESULTS}/logs/figures/{{study}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/{{study}}.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy figures --study {wildcards.study} --study-config {params.study:q} "
        "--tables {input.tables} --kinds {params.kinds} --out-dir {output} > {log} 2>&1"


rule claims:
    """The claims verdict table: each claim a study lists, against its measured effect."""
    input:
        **claim_folders(),
    output:
        csv=report(f"{RESULTS}/claims.csv", caption="../report/claims.rst", category="claims"),
        md=f"{RESULTS}/claims.md",
    params:
        studies=as_json(STUDIES),
        tables=claim_table_args(),
    log:
        f"{RESULTS}/logs/claims.log",
    benchmark:
        f"{RESULTS}/benchmarks/claims.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy claims --studies-config {params.studies:q} --tables {params.tables} "
        "--out-csv {output.csv} --out-md {output.md} > {log} 2>&1"


rule track:
    """MLflow, once per execution: the runs (all of them when tracking is not live, else what a
    job could not send), every analysis table, and one 'figures' run holding the figures."""
    input:
        summaries=[f"{RESULTS}/runs/{run}/summary.json" for run in PLAN.runs],
        analyses=[analysis_folder(run) for run in PLAN.analysed_runs()],
        figures=all_figures(),
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
