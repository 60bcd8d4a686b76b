#!/usr/bin/env sh
# Reproduce the shipped built-in captioner: a small BLIP trained from scratch on the synthetic set
# (bench/train/builtin.py: seed 0, 800 steps × 64 images, AdamW 1e-3, CPU, 2 threads), then a greedy
# sacreBLEU check on the whole held-out test split, recorded in bench_captioner.json.
# Takes ~5 minutes on two idle CPU cores (30 minutes on a busy shared machine). Weights match the shipped ones up to floating-point
# differences between CPUs / thread counts.
#
#   models/builtin-captioner/reproduce.sh [OUT_DIR]     (default: this folder, replaced file by file)
set -eu
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BENCH="${BENCH:-$ROOT/.venv/bin/bench}"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
exec "$BENCH" train-builtin --out "${1:-$ROOT/models/builtin-captioner}" --seed 0 --threads 2 --device cpu
