#!/usr/bin/env bash
# `make demo`: a real small RENAS search on Fashion-MNIST, SQLite default, 2 local workers.
set -euo pipefail
cd "$(dirname "$0")/.."
RENAS=${RENAS:-$PWD/.venv/bin/renas-db}
mkdir -p demo-run
cd demo-run
start=$(date +%s)
# In demo-run/: renas.sqlite (the whole search state), checkpoints/ and logs/demo/ (the
# workers' log lines). Add --dashboard to watch it in a browser while it runs.
"$RENAS" run demo --workers 2 \
  --dataset fashion-mnist --population 8 --sample 3 --steps 16 --mutator renas \
  --blocks 5 --cells 1 --filters 8 --batch-size 64 \
  --train-subset 2000 --init-epochs 1 --init-lr 0.1 \
  --finetune-examples 1000 --val-examples 1000
echo "wall time: $(( $(date +%s) - start )) s"
"$RENAS" check demo
echo
echo "Ask it questions: cd demo-run && $RENAS status demo"
echo "Watch it in a browser: cd demo-run && $RENAS dashboard   # then open http://127.0.0.1:8765/"
