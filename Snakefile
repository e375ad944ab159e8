# bnstudy: how does BatchNorm help optimisation? (Santurkar et al. 2018; Ioffe & Szegedy 2015)
# The DAG: prepare_data -> train (per run) -> analyses (per study x run) -> aggregate (per study)
#          -> figures, claims -> report.  Logic lives in the bnstudy package; rules only call it.

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analyze.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        all_outputs(),
    default_target: True
