"""Stage 5, the tables (`aggregate`, one job per study): run folders -> a study's tables.

Takes the run folders and analysis tables of a study's runs; gives results/tables/<study>/
(`aggregate`), reading through `bnstudy.files` (the file contracts every stage writes and reads
through: atomic writes, checked reads); `derived` computes what the figures and claims share
from the tables, `stats` the statistics over seeds, `view` one study's tables as the figures and
the claims read them.

No torch here, and this file imports nothing (pandas loads with the modules that need it).
"""
