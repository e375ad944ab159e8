rule train:
    """Train one run (variant x lr x seed x setup); resumes from its last checkpoint.

    Checkpoints (results/runs/{run}/checkpoints/) are deliberately not outputs: Snakemake deletes
    a failed job's outputs, and the checkpoints must survive to resume from. summary.json, written
    last, lists them; the analyses read them through it.
    """
    input:
        data=run_dataset,
        tracking=tracking_marker,
    output:
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
        spec=f"{RESULTS}/runs/{{run}}/spec.json",
        train=f"{RESULTS}/runs/{{run}}/train.csv",
        eval=f"{RESULTS}/runs/{{run}}/eval.csv",
        layers=f"{RESULTS}/runs/{{run}}/layers.csv",
        units=f"{RESULTS}/runs/{{run}}/units.csv",
    params:
        spec=run_spec,
        studies=run_studies,
        tracking=as_json(TRACKING),
        run_dir=run_folder,
        name=run_name,
    threads: max(1, config["runtime"]["threads"])
    resources:
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{run}}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m bnstudy train --spec {params.spec:q} --run-dir {params.run_dir} "
        "--tracking {params.tracking:q} --studies {params.studies:q} --name {params.name:q} "
        "--threads {threads} > {log} 2>&1"
