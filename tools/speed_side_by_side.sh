#!/usr/bin/env bash
# cake-rs vs transformers on the same CPU, interleaved so that both see the same machine:
# runs the `speed` example and tools/fixtures/speed_transformers.py ROUNDS times each, in
# turn, on the same GGUF file and the same deterministic prompts, and prints every figure.
#
#   tools/speed_side_by_side.sh [ROUNDS] [PREFILL_LENS] [DECODE_STEPS]
#
# Needs `pip install torch transformers gguf accelerate` and a release build of the
# example (`cargo build --release -p cake-models --example speed`).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
lens=${2:-512,2048,8192}
steps=${3:-32}
model=$(ls "${CAKE_CACHE_DIR:-$HOME/.cache/cake-rs}"/SmolLM2-135M-Instruct.Q4_1.gguf)
for round in $(seq "$rounds"); do
    echo "== round $round: cake-rs"
    target/release/examples/speed "$model" "$lens" "$steps" | grep -E "prefill|decode"
    echo "== round $round: transformers"
    python3 tools/fixtures/speed_transformers.py "$model" "$lens" "$steps" 2>/dev/null |
        grep -E "prefill|decode"
done
