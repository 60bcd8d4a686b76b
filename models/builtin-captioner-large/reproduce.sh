#!/usr/bin/env sh
# Reproduce the shipped larger built-in captioner (the seed's base-vs-large axis): the same seeded recipe as
# models/builtin-captioner/reproduce.sh with a 1.5x wider, one layer deeper ViT (bench/train/builtin.py --size large).
# ~10 minutes on two idle CPU cores; 23 minutes on a shared machine.
#
#   models/builtin-captioner-large/reproduce.sh [OUT_DIR]     (default: this folder, replaced file by file)
set -eu
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BENCH="${BENCH:-$ROOT/.venv/bin/bench}"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
exec "$BENCH" train-builtin --size large --out "${1:-$ROOT/models/builtin-captioner-large}" --seed 0 --threads 2 --device cpu
