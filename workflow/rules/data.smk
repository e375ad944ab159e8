# A dataset is prepared in two steps so that a preparation that fails never costs the data
# prepared before. Snakemake deletes a job's outputs when it starts and when it fails; so
# prepare_data writes into results/data/incoming/ (temp(): gone once installed), and
# install_data, which runs only after it succeeded, puts the new file in place. The incoming
# file is named after a hash of the dataset's source (path, subset, sizes, seed; install_data
# also takes the source as params): a changed source asks for another incoming file and so
# prepares again, while a failed attempt at one source leaves no trace on the others (Snakemake
# records a job's params even when it fails: under one name, reverting a source after a failure
# would prepare it again). (Snakemake's update() flag keeps an output through a failure too, but
# records the failed job's params on it, after which the failed source would look prepared.)


rule prepare_data:
    """Turn one configured dataset into a tensor file (uint8 images, labels, metadata) and a record
    of the source it was made from, which the config check reads (bnstudy.config.load.check_dataset):
    a changed source whose path does not exist stops the workflow at parse time, before this job."""
    output:
        data=temp(f"{RESULTS}/data/incoming/{{dataset}}-{{source}}.pt"),
        record=temp(f"{RESULTS}/data/incoming/{{dataset}}-{{source}}.json"),
    params:
        config=dataset_source_config,
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}-{{source}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_data/{{dataset}}-{{source}}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m bnstudy prepare-data --name {wildcards.dataset} --config {params.config:q} "
        "--out {output.data} --record {output.record} > {log} 2>&1"


rule install_data:
    """A finished preparation, put in place (a copy and a rename: seconds; the incoming file is temporary)."""
    input:
        unpack(incoming_dataset),
    output:
        data=f"{RESULTS}/data/{{dataset}}.pt",
        record=f"{RESULTS}/data/{{dataset}}.json",
    params:
        config=dataset_config,
    log:
        f"{RESULTS}/logs/install_data/{{dataset}}.log",
    conda:
        "../../envs/figures.yaml"  # the lighter env: this needs Python, not torch
    shell:
        "python -m bnstudy install-data --from {input.data} {input.record} "
        "--to {output.data} {output.record} > {log} 2>&1"
