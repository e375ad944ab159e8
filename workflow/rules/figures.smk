rule figures:
    """Every figure kind one study lists, drawn from its tables folder (PNG + PDF per kind)."""
    input:
        tables=study_tables,
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
