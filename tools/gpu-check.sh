#!/usr/bin/env bash
# The check to run the day a GPU is lent: the CUDA build, the parity tests on CUDA, then
# one speed table at the Llama-3.1-8B shape (random weights), 8K and 32K tokens, batch 1
# and 16, full cache against CAKE at C = 1024. About 10 minutes on one H100.
#
#   tools/gpu-check.sh prepare   # here (no GPU needed): builds the CUDA binaries into
#                                # target/gpu-check/bin (stripped, small enough to carry)
#   tools/gpu-check.sh run       # on the GPU machine: runs them, prints one table
#   tools/gpu-check.sh           # both, on a GPU machine that can build
#
# Results land in target/gpu-check/ (or $OUT when set): gpu.txt, tests.txt, bench-*/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/gpu-check}
BIN=target/gpu-check/bin
CONFIG=cake-cli/data/llama-3.1-8b.config.json
mode=${1:-all}

prepare() {
    mkdir -p "$BIN"
    cargo build --release -p cake-cli --features cuda
    install -m 755 target/release/cake "$BIN/cake"
    # The device-backend parity tests, built for CUDA (the file the wgpu run uses too).
    local tests
    tests=$(cargo test --release -p cake-models --features cuda --test device_backend --no-run \
        --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*device_backend[^"]*\)".*/\1/p' | tail -1)
    if [[ -z "$tests" ]]; then
        echo "gpu-check: cannot find the device_backend test binary" >&2
        exit 1
    fi
    install -m 755 "$tests" "$BIN/device_backend"
    strip "$BIN/cake" "$BIN/device_backend" 2>/dev/null || true
    # The tests find their fixtures at the source path they were built in.
    pwd >"$BIN/built-in"
    du -h "$BIN"/*
}

run() {
    mkdir -p "$OUT"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    else
        echo "gpu-check: no nvidia-smi: is there a GPU?" >&2
    fi
    # 1. Parity on CUDA. The tests read their fixtures at the path they were built in: on
    # another machine, that path is made to point here.
    local built
    built=$(cat "$BIN/built-in" 2>/dev/null || pwd)
    if [[ "$built" != "$(pwd)" && ! -e "$built" ]]; then
        mkdir -p "$(dirname "$built")" && ln -s "$(pwd)" "$built"
    fi
    timeout 240 "$BIN/device_backend" 2>&1 | tee "$OUT/tests.txt" | tail -5
    # 2. Speed at the Llama-3.1-8B shape. The latency table (batch 1, full vs CAKE), then
    # the batch table; 32K at batch 16 with the full cache needs ~137 GB of K/V and is
    # skipped by the memory check, which reports it.
    local bench=("$BIN/cake" bench --random-weights "$CONFIG" --backend cuda --policies cake
        --cache-size 1024 --prefill-rounds 1 --decode-steps 8)
    timeout 200 "${bench[@]}" --context 8192,32768 --out "$OUT/bench-latency"
    timeout 200 "${bench[@]}" --context 8192,32768 --batch 1,16 --out "$OUT/bench-batch"
    echo
    find "$OUT/bench-latency" -name bench.md -exec cat {} +
    find "$OUT/bench-batch" -name batch.md -exec cat {} +
}

case "$mode" in
prepare) prepare ;;
run) run ;;
all) prepare && run ;;
*)
    echo "usage: tools/gpu-check.sh [prepare|run]" >&2
    exit 2
    ;;
esac
