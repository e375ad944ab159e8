"""Stage 6, the figures (`figures`, one job per study): a study's tables -> its figures.

Takes results/tables/<study>/ and the study's config; gives one PNG per figure kind the study
lists. Each kind is a data function (pure pandas: what its panels plot) and drawing code that only
draws that frame; `draw.draw_study` is the job.

Never imports torch. This file imports nothing, so importing the package loads no matplotlib.
"""
