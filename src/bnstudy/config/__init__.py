"""Stage 0, the config: what the workflow will run, decided before any job starts.

Takes a YAML config (`config/*.yaml`); gives the validated config with its defaults filled in
(`load.parse_config`: the JSON schema of `schema`, then the checks a schema cannot express; the
claims' own checks are added by `bnstudy.configure.load_config`, which the entry points call) and the
plan (`plan.plan`: every study expanded into runs, each a typed `spec.RunSpec` with its run id).
The extension points the checks and the Snakefile plan with live here too: the normalisation
variants (`variants`), the analysis and figure kinds (`catalog`) and the verdict rule's gates
(`claim_rules`).

Plain Python (no torch, no pandas, no plotting): the Snakemake process imports this stage to plan
the DAG. This file imports nothing; import the modules themselves.
"""
