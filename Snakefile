# bnstudy: how does BatchNorm help optimisation? (Santurkar et al. 2018; Ioffe & Szegedy 2015)
# The DAG: prepare_data -> train (per run) -> analyses (per study x run) -> aggregate (per study)
#          -> figures, claims -> report.  Logic lives in the bnstudy package; rules only call it.

# the default config, unless --configfile names another: a config file replaces the default
# rather than being merged into it (a merge would keep the default's studies in every run)
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analyze.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"


report: "workflow/report/workflow.rst"


onstart:
    start_fork_server()


onsuccess:
    stop_fork_server()


onerror:
    stop_fork_server()


rule all:
    input:
        all_outputs(),
    default_target: True
