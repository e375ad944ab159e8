rule claims:
    """The claims verdict table: each claim a study lists, against its measured effect. Its params
    are the configs of the studies with claims only: a study that lists none changes no verdict."""
    input:
        **claim_folders(),
    output:
        csv=report(f"{RESULTS}/claims.csv", caption="../report/claims.rst", category="claims"),
        md=f"{RESULTS}/claims.md",
    params:
        studies=as_json(claim_studies()),
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
