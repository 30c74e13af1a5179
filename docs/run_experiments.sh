#!/usr/bin/env bash
# Reproduce docs/RESULTS.md: the paper's relative-error-vs-s protocol and the label-noise
# diagnostics on real data. Run from the repository root after `bash .ci/setup` and
# `.venv/bin/nldist fetch fashion_mnist_10x10 mnist_10x10`. Results go to runs/exp/; the
# figures and JSON committed under docs/results/ are copied from there at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
NL=.venv/bin/nldist
for job in california diamonds randhie fashion_mnist; do
  pilot_s=500; [ "$job" = fashion_mnist ] && pilot_s=1000
  # 5 score kinds at theta*, 50 draws per s (job file: experiment section)
  $NL run jobs/$job.yaml --out runs/exp/$job --experiment -q
  # the pilot scheme: nonlinear leverage at theta_0 from a uniform pilot sample
  $NL experiment jobs/$job.yaml --out runs/exp/$job-pilot -q --set theta=pilot \
      --set pilot_s=$pilot_s --set "experiment.kinds=[nonlinear-leverage]"
  .venv/bin/python docs/merge_pilot.py runs/exp/$job runs/exp/$job-pilot $pilot_s
  # ablation: linear leverage of [X, 1, y] (the linear scores that also see the target)
  $NL experiment jobs/$job.yaml --out runs/exp/$job-liny -q --set linear_augment_y=true \
      --set "experiment.kinds=[linear-leverage]"
  .venv/bin/python docs/merge_pilot.py runs/exp/$job runs/exp/$job-liny \
      --kind linear-leverage --as linear-leverage+y
  $NL report runs/exp/$job
done
# a two-layer ReLU net without biases (relu2:8, p = 72) on California
$NL run jobs/california-relu2.yaml --out runs/exp/california-relu2 --experiment -q \
    --set model=relu2:8 --set s=1000 --set "experiment.s=[200,500,1000,2000]" \
    --set experiment.repeats=50
# label-noise diagnostics: 10% of labels flipped at random
$NL diagnose jobs/fashion_mnist.yaml --flip 0.1 --out runs/exp/fashion_mnist-diagnose -q
$NL diagnose jobs/mnist.yaml --flip 0.1 --out runs/exp/mnist-diagnose -q
# the same with the binary cross-entropy residuals of MATH.md §6 (loss: bce)
$NL diagnose jobs/fashion_mnist.yaml --flip 0.1 --out runs/exp/fashion_mnist-diagnose-bce -q \
    --set loss=bce
$NL diagnose jobs/mnist.yaml --flip 0.1 --out runs/exp/mnist-diagnose-bce -q --set loss=bce
# Optional, not run for docs/RESULTS.md: the two larger tables, one run each (no experiment)
#   $NL run jobs/nycflights.yaml --out runs/exp/nycflights -q
#   $NL run jobs/flights_3m.yaml --out runs/exp/flights_3m -q
# collect figures and JSON
for d in runs/exp/*/; do
  name=$(basename "$d"); case "$name" in *-pilot|*-liny) continue;; esac
  mkdir -p docs/results/$name
  cp "$d"/*.png "$d"/*.json "$d"/report.md docs/results/$name/ 2>/dev/null || true
done
