#!/usr/bin/env bash
# GPU check, one GPU, a few minutes: fine-tune with mixed precision (auto = bf16, then float16
# with a gradient scaler), the frozen route (feature-extract on cached codes), a 1-process
# torchrun with NCCL, and streaming predict; prints times and accuracies as it goes and a table.
#
#   PYTHON=/path/to/python TORCH_HOME=/path/to/torch-home bash benchmarks/gpu_check.sh DATA [OUT]
#
# DATA: the reference set (train/ and val/). PYTHON: an interpreter with torch, torchvision,
# numpy, pillow, safetensors and tqdm (checked first; tomli-w too if it should write config.toml). TORCH_HOME: where the pretrained
# weights already are (hub/checkpoints/mobilenet_v2-b0353104.pth): the machine needs no network.
# OUT (default: a new temporary folder) receives the runs. Self-contained: runs tlvision from this
# checkout's src/. Optional: DEVICE (cuda), EPOCHS (3), EXTRA (more train options), and
# EXTRA_PYTHONPATH (a folder of extra packages, put on PYTHONPATH).
# CPU dry run of the same steps:  DEVICE=cpu EPOCHS=1 EXTRA="--input-size 64" bash ... DATA
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: bash benchmarks/gpu_check.sh DATA [OUT]}
OUT=${2:-$(mktemp -d -t tlvision-gpu-check-XXXXXX)}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-3}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
export PYTHONPATH="$PWD/src${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
started=$(date +%s)

echo "== environment"
"$PYTHON" - <<'EOF'
import importlib, platform, sys
missing = []
for name in ("torch", "torchvision", "numpy", "PIL", "safetensors", "tqdm"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
try:
    import tomli_w
except ImportError:
    print("note: no tomli-w here, so the runs write no config.toml (nothing else changes)")
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (install them, or pass a folder "
             "holding them as EXTRA_PYTHONPATH)")
import torch, torchvision
print(f"python {platform.python_version()}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, hub dir {torch.hub.get_dir()}")
if torch.cuda.is_available():
    name = torch.cuda.get_device_name(0)
    print(f"cuda {torch.version.cuda}: {torch.cuda.device_count()} GPU(s), {name}, "
          f"bf16 {torch.cuda.is_bf16_supported()}, nccl {torch.distributed.is_nccl_available()}")
else:
    print("no CUDA GPU visible")
EOF
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "data: $DATA; runs in: $OUT; device: $DEVICE; epochs: $EPOCHS ${EXTRA:+; extra: $EXTRA}"

declare -a ROWS=()
summarise() {  # NAME RUN SECONDS: one table row from the run's summary.json
    local row
    row=$("$PYTHON" - "$2" "$1" "$3" <<'EOF'
import json, sys
run, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = json.load(open(f"{run}/summary.json"))
print(f"{name:<28} {seconds:>6.0f}s  final val acc {s['final_val_acc']:.4f}  best "
      f"{s['best_val_acc']:.4f}  precision {s.get('precision', '?'):<4}  "
      f"processes {s.get('processes', 1)}  device {s['device']}  train-loop {s['seconds']:.0f}s")
EOF
)
    echo "$row"
    ROWS+=("$row")
}

step() {  # NAME RUN ARGS...: run a command, time it, summarise the run it wrote
    local name=$1 run=$2
    shift 2
    echo
    echo "== $name: $*"
    local begin end
    begin=$(date +%s.%N)
    local status=0
    "$@" || status=$?
    end=$(date +%s.%N)
    if [ "$status" -ne 0 ]; then  # go on: the other checks still tell something
        ROWS+=("$name: FAILED with exit status $status (its output is above)")
        echo "${ROWS[-1]}"
        return
    fi
    summarise "$name" "$run" "$("$PYTHON" -c "print($end - $begin)")"
}

TRAIN=(-m tlvision train "$DATA" --device "$DEVICE" --overwrite "${EXTRA_ARGS[@]}")
step "finetune, precision auto" "$OUT/finetune-auto" \
    "$PYTHON" "${TRAIN[@]}" --strategy finetune --epochs "$EPOCHS" --tensorboard \
    --out "$OUT/finetune-auto"
if [ "$DEVICE" != cpu ]; then
    step "finetune, precision 16" "$OUT/finetune-fp16" \
        "$PYTHON" "${TRAIN[@]}" --strategy finetune --epochs "$EPOCHS" --precision 16 \
        --out "$OUT/finetune-fp16"
fi
step "feature-extract (codes)" "$OUT/feature-extract" \
    "$PYTHON" "${TRAIN[@]}" --strategy feature-extract --epochs 10 \
    --cache-dir "$OUT/codes-cache" --out "$OUT/feature-extract"
step "torchrun 1 process" "$OUT/torchrun-1" \
    "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 \
    "${TRAIN[@]}" --strategy finetune --epochs "$EPOCHS" --out "$OUT/torchrun-1"

echo
echo "== streaming predict over $DATA/val on $DEVICE"
begin=$(date +%s.%N)
"$PYTHON" -m tlvision predict "$OUT/finetune-auto" "$DATA/val" --device "$DEVICE" \
    --jsonl "$OUT/predictions.jsonl" || echo "predict: exit status $? (1: some files unreadable)"
end=$(date +%s.%N)
lines=$(wc -l < "$OUT/predictions.jsonl")
predict_row=$("$PYTHON" -c "print(f'predict --jsonl: {$lines} images in {$end - $begin:.1f}s \
(with start-up), {$lines / ($end - $begin):.0f} img/s')")
echo "$predict_row"

echo
echo "== summary ($(( $(date +%s) - started ))s in all)"
printf '%s\n' "${ROWS[@]}" "$predict_row"
