#!/usr/bin/env bash
# The GPU benchmarks issue 10 asks for, in one go (run from the repository root on a machine with
# a CUDA GPU and the MLCC folder). Figures go to ${OUT:-bench_gpu}/*.json and the console; copy
# them into docs/performance.md with this command line.
#   PEAK_TFLOPS=989 scripts/bench_gpu.sh            # H100 SXM dense bf16 peak, for MFU
set -euo pipefail
out=${OUT:-bench_gpu}
data=${CYTOTUNE_MLCC:-../shared/data/mlcc}
peak=${PEAK_TFLOPS:+--peak-tflops $PEAK_TFLOPS}
mkdir -p "$out"
bench() { .venv/bin/cytotune bench --data "$data" --layout mlcc --device cuda $peak "$@"; }
# ViT-B/16: every case, packed K=8 against 8 runs one by one, the study's 4-shot step count
bench --model clip-vit-b16 --pack 8 --lora-steps 450 --json "$out/vit_b16.json"
# ViT-L/14, LoRA r=16 on q,k,v,o at batch 32 (8 shots x 4 classes): throughput, MFU, memory
bench --model clip-vit-l14 --cases features,lora --shots 8 --lora-steps 200 --rank 16 \
      --targets q,k,v,o --json "$out/vit_l14.json"
bench --model clip-vit-l14 --cases lora --shots 8 --lora-steps 200 --rank 16 --targets q,k,v,o \
      --compile --json "$out/vit_l14_compile.json"
# peak memory of LoRA r=16 q,k,v,o training steps at batch 32 (the 24 GB question), and what
# bf16 buys against fp32 for cytotune itself (speed, each run's test accuracy)
bench --model clip-vit-l14 --cases memory --rank 16 --targets q,k,v,o --batch-size 32 \
      --json "$out/vit_l14_memory.json"
bench --model clip-vit-b16 --cases precision --json "$out/vit_b16_precision.json"
