#!/usr/bin/env bash
# The GPU figures of issue 20 in one go, from the repository root of a machine with a CUDA GPU
# and the MLCC folder: packed LoRA K=8 on ViT-B/16, ViT-L/14 LoRA r=16 on q,k,v,o at batch 32
# (throughput, MFU, peak memory), --compile on and off, cytotune bf16 against fp32, and the
# data-wait share. Backbones are random-init (the hub is not needed): speed and memory do not
# depend on the weights; accuracies are then near chance and only compared between settings.
# Each case runs under its own time limit; a failed or timed-out case is reported and the rest
# go on. Figures go to $BENCH_OUT/*.json, the console to $BENCH_OUT/bench_gpu.log.
#   PEAK_TFLOPS=989 scripts/bench_gpu.sh      # H100/H200 SXM dense bf16 peak, for MFU
# Smaller settings for a CPU rehearsal of the script itself (minutes, not meaningful figures):
#   DEVICE=cpu STEPS_B=2 STEPS_L=2 PACK=2 SHOTS_L=1 SIZE="--image-size 32" BATCH=4 \
#     MODEL_B=clip-vit-b16 MODEL_L=clip-vit-l14 scripts/bench_gpu.sh
set -uo pipefail
out=${BENCH_OUT:-bench_gpu}
py=${PYTHON:-.venv/bin/python}
data=${CYTOTUNE_MLCC:-../shared/data/mlcc}
device=${DEVICE:-cuda}
limit=${CASE_TIMEOUT:-300}
model_b=${MODEL_B:-clip-vit-b16}
model_l=${MODEL_L:-clip-vit-l14}
steps_b=${STEPS_B:-450}     # the study's 4-shot schedule: 50 + 100 x 4
steps_l=${STEPS_L:-200}
pack=${PACK:-8}
steps_p=${STEPS_PACKED:-$steps_b}
shots_l=${SHOTS_L:-8}       # 8 shots x 4 classes = batch 32
batch=${BATCH:-32}
size=${SIZE:-}
skip=${SKIP_BASELINE:+--skip-baseline}   # lora case without the (slow) reference-style baseline
only=${ONLY:-vit_b16,vit_b16_packed,vit_l14,vit_b16_precision,vit_l14_compile}
peak=${PEAK_TFLOPS:+--peak-tflops $PEAK_TFLOPS}
mkdir -p "$out"
log="$out/bench_gpu.log"
failed=()

bench() {  # bench NAME ARGS...: one `cytotune bench` process, its figures in $out/NAME.json
    local name=$1; shift
    [[ ",$only," == *",$name,"* ]] || return 0
    echo "== $name: cytotune bench $*" | tee -a "$log"
    local start=$SECONDS
    PYTHONUNBUFFERED=1 timeout "$limit" "$py" -m cytotune.cli bench --data "$data" --layout mlcc \
        --device "$device" --batch-size "$batch" $size $peak $skip "$@" --json "$out/$name.json" 2>&1 \
        | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
    [ "$rc" = 0 ] || failed+=("$name")
}

# ViT-B/16: features, linear grid, one 4-shot LoRA run; then 8 LoRA runs packed against one by one
bench vit_b16 --model "$model_b" --cases features,linear,lora --lora-steps "$steps_b"
bench vit_b16_packed --model "$model_b" --cases packed --pack "$pack" --lora-steps "$steps_p"
# ViT-L/14, LoRA r=16 on q,k,v,o at batch 32: throughput, MFU, data wait; peak memory
bench vit_l14 --model "$model_l" --cases lora,memory --shots "$shots_l" --lora-steps "$steps_l" \
    --rank 16 --targets q,k,v,o
# cytotune fp32 against bf16 (speed, each run's test accuracy) on ViT-B/16
bench vit_b16_precision --model "$model_b" --cases precision --lora-steps "$steps_b"
# torch.compile on (the lora case; compilation is inside the first steps' time)
bench vit_l14_compile --model "$model_l" --cases lora --shots "$shots_l" --lora-steps "$steps_l" \
    --rank 16 --targets q,k,v,o --compile

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed or timed out: ${failed[*]}" | tee -a "$log"
    exit 1
fi
echo "all cases done; figures in $out" | tee -a "$log"
