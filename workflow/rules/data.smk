rule prepare_data:
    """Turn one configured dataset into a cached tensor file (uint8 images, labels, metadata)."""
    output:
        f"{RESULTS}/data/{{dataset}}.pt",
    params:
        config=dataset_config,
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_data/{{dataset}}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m bnstudy prepare-data --name {wildcards.dataset} --config {params.config:q} "
        "--out {output} > {log} 2>&1"


rule init_tracking:
    """Create the MLflow store and experiment once, before any job logs to it."""
    output:
        f"{RESULTS}/tracking/ready.json",
    params:
        tracking=as_json(TRACKING),
        artifacts=f"{RESULTS}/mlartifacts",
    log:
        f"{RESULTS}/logs/init_tracking.log",
    benchmark:
        f"{RESULTS}/benchmarks/init_tracking.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m bnstudy init-tracking --tracking {params.tracking:q} "
        "--artifacts {params.artifacts} --out {output} > {log} 2>&1"
