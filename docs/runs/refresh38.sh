#!/bin/bash
# Issue 38: copy the side-by-side's results file into docs/ and regenerate its blocks of
# docs/RESULTS.md (the five strong-view rows next to the Table 1 grid's reference rows,
# on val and on test, and the claims: cow masks against boxes, paired, and the best
# column's share of the gap, chosen on val and judged on test). Run from the repository
# root on the grid's machine; prose numbers stay to be checked by hand.
set -e
R=/work/runs
PY=${PY:-.venv/bin/python}
cp $R/camvid_lite0_strong/results.json docs/camvid_lite0_strong_results.json
$PY -m cowmix_jax.experiments.plot_ablation --results=docs/camvid_lite0_rerun_results.json \
    --results=docs/camvid_lite0_strong_results.json --nopaper \
    --output_dir=docs --prefix=camvid_lite0_strong \
    --title="CamVid, 30 labels, pretrained Lite0, CPU scale: FixMatch and UniMatch" \
    --update_markdown=docs/RESULTS.md --markers=strong_ > /tmp/refresh38_tables.txt
echo "refreshed; tables and claims in /tmp/refresh38_tables.txt"
