#!/usr/bin/env bash
# The converged-models runs of issue 17, in order, each resumable: rerun this script
# after any interruption (or on a fresh machine after restoring
# checkpoints/resnet20_dense_resume, see checkpoints/README.md) and it goes on where it
# stopped. A run whose report exists is skipped. Long: the dense backbone is about 7 h
# on 2 cores, each fine-tune 1-2 h.
#
#   nice bash bench/converged.sh            # everything, in the order below
#   nice bash bench/converged.sh sanp_0.33  # one run (dense, sanp_0.5, fixed_k_0.5...)
#
# Logs: runs/converged/<run>.log. After each run, commit what a later step needs:
# checkpoints/converged/<run>/{model.keras,report.json} (restored from there on a fresh
# machine), and the shipped models its --save_pretrained wrote to sanp_keras/pretrained/.
# A run the session cannot finish: `bash bench/converged.sh --snapshot <run>` writes
# each of its stages' last epoch to checkpoints/converged/<run>/resume/ (without the
# optimizer's momentum, training.snapshot_stage); commit that folder, and this script
# resumes the run from it on any machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout, whatever is installed
if [ "${1:-}" = --snapshot ]; then
  run=${2:?"usage: bash bench/converged.sh --snapshot <run>"}
  for stage in runs/converged/"$run"/*/; do
    [ -e "$stage/state.json" ] || continue
    dest="checkpoints/converged/$run/resume/$(basename "$stage")"
    python -c "import sys; from sanp_keras import training; print(training.snapshot_stage(sys.argv[1], sys.argv[2]))" "$stage" "$dest"
  done
  exit 0
fi
data=../shared/data/cifar10
out=runs/converged
backbone="$out/dense/model.keras"
common=(--dataset="$data" --batch_size=256 --export=none)
finetune=(--pretrained="$backbone" --warmup_epochs=2 --finetune_epochs=20
          --finetune_lr=0.01 --weight_decay=5e-4 --calibration_images=1000)

# Every run names its recipe in full (the example's defaults distil since the runs without
# --distill were made: --distill=0 keeps them).
declare -A runs=(
  [dense]="--mode=dense --backbone_epochs=160 --backbone_lr=0.2 --weight_decay=5e-3 --lr_warmup_epochs=3 --save_pretrained=resnet20_cifar10"
  [sanp_0.5]="--mode=sanp --budget=0.5 --gate_start=open --gate_order=random --save_pretrained=resnet20_cifar10_sanp_0.5 --distill=0"
  [sanp_0.33]="--mode=sanp --budget=0.33 --gate_start=open --gate_order=random --save_pretrained=resnet20_cifar10_sanp_0.33 --distill=0"
  [sanp_start_0.5]="--mode=sanp --budget=0.5 --gate_start=budget --gate_order=bn_scale --distill=0"
  [sanp_start_0.33]="--mode=sanp --budget=0.33 --gate_start=budget --gate_order=bn_scale --distill=0"
  [fixed_k_0.5]="--mode=fixed_k --budget=0.5 --distill=0"
  [fixed_k_0.33]="--mode=fixed_k --budget=0.33 --distill=0"
  [sanp_kd_0.5]="--mode=sanp --budget=0.5 --gate_start=budget --gate_order=bn_scale --distill=0.7"
  [sanp_kd_0.33]="--mode=sanp --budget=0.33 --gate_start=budget --gate_order=bn_scale --distill=0.7"
  [sanp_kd_slimstart_0.5]="--mode=sanp --budget=0.5 --gate_start=slimming --gate_order=bn_scale --distill=0.7"
  [sanp_kd_slimstart_0.33]="--mode=sanp --budget=0.33 --gate_start=slimming --gate_order=bn_scale --distill=0.7"
  [slimming_0.5]="--mode=slimming --budget=0.5 --distill=0"
  [slimming_0.33]="--mode=slimming --budget=0.33 --distill=0"
  [static_0.5]="--mode=static --budget=0.5 --gate_start=budget --distill=0"
  [fbs_0.5]="--mode=fbs --budget=0.5 --distill=0"
  [fbs_0.33]="--mode=fbs --budget=0.33 --distill=0"
  [thin_0.5]="--mode=thin --budget=0.5 --backbone_epochs=160 --backbone_lr=0.2 --weight_decay=5e-3 --lr_warmup_epochs=3"
)
order=(dense sanp_0.5 sanp_0.33 slimming_0.5 sanp_start_0.5 sanp_kd_0.5 sanp_start_0.33
       sanp_kd_0.33 sanp_kd_slimstart_0.5 slimming_0.33 sanp_kd_slimstart_0.33
       fixed_k_0.5 fixed_k_0.33 static_0.5 fbs_0.5 fbs_0.33 thin_0.5)
selected=("${@:-${order[@]}}")

for run in "${selected[@]}"; do
  if [ -z "${runs[$run]+x}" ]; then
    echo "converged.sh: unknown run '$run'; expected one of: ${order[*]}" >&2
    exit 2
  fi
  dir="$out/$run"
  # A finished run committed under checkpoints/converged/<run>/ (its model.keras and
  # report.json, see checkpoints/README.md) is restored rather than run again.
  saved="checkpoints/converged/$run"
  if [ ! -e "$dir/report/report.json" ] && [ -e "$saved/report.json" ]; then
    mkdir -p "$dir/report"
    cp "$saved/model.keras" "$dir/model.keras"
    cp "$saved/report.json" "$dir/report/report.json"
    echo "[$run] restored from $saved"
  fi
  if [ -e "$dir/report/report.json" ]; then
    echo "[$run] done: $dir/report/report.json"
    continue
  fi
  # An unfinished run committed as resume points (checkpoints/converged/<run>/resume/
  # <stage>/, training.snapshot_stage) goes on from them on a fresh machine.
  for stage in "$saved"/resume/*/; do
    stage=$(basename "$stage")
    if [ -e "$saved/resume/$stage/state.json" ] && [ ! -e "$dir/$stage/state.json" ]; then
      mkdir -p "$dir"
      cp -r "$saved/resume/$stage" "$dir/$stage"
      echo "[$run] $stage restored from $saved/resume/$stage"
    fi
  done
  # A run that ships its model (--save_pretrained) is done once the model is shipped:
  # its weights, command and figures are in sanp_keras/pretrained/<name>.json.
  shipped=$(grep -o -- '--save_pretrained=[^ ]*' <<< "${runs[$run]}" | cut -d= -f2 || true)
  if [ -n "$shipped" ] && [ "$run" != dense ] && [ -e "sanp_keras/pretrained/$shipped.json" ]; then
    echo "[$run] done: shipped as $shipped (sanp_keras/pretrained/$shipped.json)"
    continue
  fi
  args=("${common[@]}" --output_dir="$dir")
  case "$run" in
    dense|thin_*) ;;
    *)
      if [ ! -e "$backbone" ] && [ -e checkpoints/converged/dense/model.keras ]; then
        mkdir -p "$out/dense/report"  # the committed backbone, as 'dense' restores it
        cp checkpoints/converged/dense/model.keras "$backbone"
        cp checkpoints/converged/dense/report.json "$out/dense/report/report.json"
      fi
      if [ ! -e "$backbone" ]; then
        echo "[$run] needs $backbone: run 'dense' first" >&2
        exit 1
      fi
      args+=("${finetune[@]}") ;;
  esac
  echo "[$run] $(date -u +%FT%TZ) python examples/train_cifar.py ${args[*]} ${runs[$run]}"
  # shellcheck disable=SC2086  # the run's flags are words
  python examples/train_cifar.py "${args[@]}" ${runs[$run]} >> "$out/$run.log" 2>&1
done
