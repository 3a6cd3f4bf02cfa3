#!/bin/bash
# Issue 35: copy the grid's results files into docs/ and regenerate every generated
# block of docs/RESULTS.md (tables, claims, the reruns' comparison) and its charts.
# Run from the repository root on the grid's machine; prose numbers stay to be checked.
set -e
R=/work/runs
PY=${PY:-.venv/bin/python}
cp $R/camvid_lite0/results.json docs/camvid_lite0_results.json
cp $R/camvid_lite0_rerun/results.json docs/camvid_lite0_rerun_results.json
COMMON=()
if [ -f $R/camvid_lite0_common/results.json ]; then
  cp $R/camvid_lite0_common/results.json docs/camvid_lite0_common_results.json
  COMMON=(--common_results=docs/camvid_lite0_common_results.json)
fi
for root in camvid_lite0_ict camvid_lite0_ict_fix camvid_lite0_ict_xeon; do
  [ -f $R/$root/results.json ] && cp $R/$root/results.json docs/${root}_results.json
done
$PY -m cowmix_jax.experiments.plot_ablation --results=docs/camvid_lite0_results.json \
    --results=docs/camvid_lite0_rerun_results.json \
    --results=docs/camvid_lite0_sigma_results.json \
    --results=docs/camvid_lite0_cons_weight_results.json "${COMMON[@]}" \
    --prefix=camvid_lite0 --title="CamVid, 30 labels, pretrained Lite0, CPU scale" \
    --update_markdown=docs/RESULTS.md --markers=lite0_ > /tmp/refresh35_tables.txt
# ICT's diagnosis (4 epochs, val): one table per code and machine, each variant paired
# with the supervised run of the same root (charts to /tmp: the tables carry it)
for pair in camvid_lite0_ict:ict_amd_grid_ camvid_lite0_ict_fix:ict_amd_fix_ \
            camvid_lite0_ict_xeon:ict_xeon_; do
  root=${pair%%:*}; markers=${pair##*:}
  [ -f docs/${root}_results.json ] || continue
  $PY -m cowmix_jax.experiments.plot_ablation --results=docs/${root}_results.json \
      --variants --nopaper --output_dir=/tmp/refresh35_ict --prefix=$root \
      --update_markdown=docs/RESULTS.md --markers=$markers > /tmp/refresh35_$root.txt
done
$PY -m cowmix_jax.experiments.plot_curves --results=docs/camvid_lite0_results.json \
    --results=docs/camvid_lite0_rerun_results.json --output=docs/camvid_lite0_curves.png \
    --title="CamVid, 30 labels, pretrained Lite0, CPU scale: teacher val mIoU" > /dev/null
$PY -m cowmix_jax.experiments.reproduce --recorded=docs/camvid_lite0_results.json \
    --rerun=docs/camvid_lite0_rerun_results.json --markdown > /tmp/refresh35_reruns.md || true
$PY - <<'PY'
from cowmix_jax.experiments import plot_ablation
path = "docs/RESULTS.md"
text = open(path).read()
table = open("/tmp/refresh35_reruns.md").read().strip()
open(path, "w").write(plot_ablation.replace_marked_block(text, "reruns", table))
PY
echo "refreshed; tables and claims in /tmp/refresh35_tables.txt"
