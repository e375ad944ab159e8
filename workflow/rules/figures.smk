rule figure:
    """One figure kind of one study, drawn from exactly the study tables it reads (PNG + PDF)."""
    input:
        unpack(figure_inputs),
    output:
        png=report(
            f"{RESULTS}/figures/{{study}}/{{kind}}.png",
            caption="../report/figure.rst",
            category="{study}",
        ),
        pdf=f"{RESULTS}/figures/{{study}}/{{kind}}.pdf",
    params:
        caption=figure_caption,
        study=study_config,
        tables=figure_table_args,
    log:
        f"{RESULTS}/logs/figure/{{study}}/{{kind}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/figure/{{study}}/{{kind}}.tsv"
    conda:
        "../../envs/figures.yaml"
    shell:
        "python -m bnstudy figure --kind {wildcards.kind} --study {wildcards.study} "
        "--study-config {params.study:q} --table {params.tables} --out {output.png} > {log} 2>&1"


rule claims:
    """The claims verdict table: each claim a study lists, against its measured effect."""
    input:
        **claim_inputs(),
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
        "python -m bnstudy claims --studies-config {params.studies:q} --table {params.tables} "
        "--out-csv {output.csv} --out-md {output.md} > {log} 2>&1"


rule track:
    """MLflow, once per execution: the runs (all of them when tracking is not live, else what a
    job could not send), every analysis table, and one 'figures' run holding the figures."""
    input:
        summaries=all_summaries(),
        analyses=all_analysis_tables(),
        figures=figure_files(),
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
