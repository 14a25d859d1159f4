#!/usr/bin/env bash
# cake-rs (weights as stored with int8 activations, as stored, and f32; $WEIGHTS picks) vs
# llama.cpp on the same CPU, interleaved so that all
# of them see the same machine: runs the `speed` example once per weight format and
# tools/fixtures/speed_llamacpp.py once per round, on the same GGUF file and the same
# deterministic prompts, and prints every figure.
#
#   tools/speed_vs_llamacpp.sh [ROUNDS] [PREFILL_LENS] [DECODE_STEPS] [DECODE_AFTER] [MODEL]
#
# Needs llama-cpp-python built from source (see the script) and a release build of the
# example (`cargo build --release -p cake-models --example speed`). MODEL defaults to the
# embedded SmolLM2-135M-Instruct Q4_1 file.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
lens=${2:-512,2048,8192}
steps=${3:-32}
after=${4:-512}
model=${5:-$(ls "${CAKE_CACHE_DIR:-$HOME/.cache/cake-rs}"/SmolLM2-135M-Instruct.Q4_1.gguf)}
python=${CAKE_PYTHON:-python3}
for round in $(seq "$rounds"); do
    for weights in ${WEIGHTS:-stored-int8 stored f32}; do
        echo "== round $round: cake-rs, weights $weights"
        target/release/examples/speed "$model" "$lens" "$steps" "$weights" "$after" | grep -E "prefill|decode"
    done
    echo "== round $round: llama.cpp"
    "$python" tools/fixtures/speed_llamacpp.py "$model" "$lens" "$steps" stored "$after" 2>/dev/null |
        grep -E "prefill|decode"
done
