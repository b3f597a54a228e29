#!/usr/bin/env bash
# The paper's experiment grid in miniature (docs/paper.md, Tables 1-3) on the synthetic chest X-ray world, on a CPU,
# in the paper's regime: a finite training set (the first N_TRAIN studies), SFT on it for several epochs with its best
# checkpoint on the validation split kept (early stopping: out/repro/sft/best), and from that checkpoint GRPO, and
# for comparison SFT continued on the same studies for as long as GRPO runs (more epochs of the same data). Then:
#   the general model (the tiny Qwen3-VL pre-trained on the general world, shapes.py: the miniature's "Qwen3-VL")
#   and GRPO from it; the cold start (traces beside replayed SFT records) and GRPO with thinking; the paper's claims
#   decided on paired test records, seed by seed (verdicts.py).
#     bash reproduce.sh                 # Tables 1-2, every GRPO and control run with each of SEEDS
#     bash reproduce.sh table3          # Table 3, the choice of report reward (after the above: it starts from its SFT)
#     bash reproduce.sh tune            # the learning rates of GRPO and of the control, chosen on the validation split
#     OUT=out/repro2 SEEDS="0 1 2 3" bash reproduce.sh
# Two runs go at a time, each on one core (OMP_NUM_THREADS=1): on 2 cores that does 1.5 times the work of one run on
# both (docs/results.md); a run's results depend only on its own settings, not on what runs beside it.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-out/repro}
N_TEST=${N_TEST:-400}
SEEDS=${SEEDS:-"0 1 2"}
N_TRAIN=${N_TRAIN:-2000}          # the training set: studies that SFT, GRPO and the control all draw from
SFT_STEPS=${SFT_STEPS:-300}       # SFT: several epochs of N_TRAIN; the best validation step is kept
GRPO_STEPS=${GRPO_STEPS:-60}
GRPO_LR=${GRPO_LR:-5e-5}          # chosen on the validation split: bash reproduce.sh tune
CONTROL_STEPS=${CONTROL_STEPS:-70} # continued SFT for as long as a GRPO run of GRPO_STEPS takes (docs/results.md)
CONTROL_LR=${CONTROL_LR:-2e-4}    # chosen on the validation split: bash reproduce.sh tune
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
stage() { echo "=== $1 ($(date +%H:%M:%S))"; }
evaluate() { python evaluate.py --init_from="$OUT/$1" --out_dir="$OUT/$2" --n_test="$N_TEST" "${@:3}"; }
grpo() { python grpo.py --n_train="$N_TRAIN" --max_steps="$GRPO_STEPS" --lr="$GRPO_LR" "$@"; }
control() {  # SFT continued from the best SFT checkpoint on the same studies: a constant rate, no warm-up
    python sft.py --init_from="$OUT/sft/best" --n_train="$N_TRAIN" --epochs=100 --max_steps="$CONTROL_STEPS" \
        --lr="$1" --vision_lr="$(python -c "print($1 / 2)")" --warmup=0.0 --eval_every=0 "${@:2}"
}
both() {  # two lanes at once, each a shell function, each with its own log; stop if either fails
    stage "$1 | $3"
    "$2" > "$OUT/lane_$2.log" 2>&1 & local a=$!
    "$4" > "$OUT/lane_$4.log" 2>&1 & local b=$!
    wait $a || { tail -20 "$OUT/lane_$2.log"; exit 1; }
    wait $b || { tail -20 "$OUT/lane_$4.log"; exit 1; }
}

if [ "${1:-}" = table3 ]; then
    table3_lane() {
        for reward in $1; do
            grpo --init_from="$OUT/sft/best" --task=report --report_reward="$reward" --out_dir="$OUT/table3_$reward"
            evaluate "table3_$reward" "eval_table3_$reward"
        done
    }
    lane_a() { table3_lane "label_f1 bleu4"; }
    lane_b() { table3_lane "gleu positive_f1"; }
    both "Table 3: GRPO on reports with label_f1, bleu4" lane_a "with gleu, positive_f1" lane_b
    python evaluate.py --compare "$OUT/eval_sft" "$OUT"/eval_table3_* | tee "$OUT/table3.md"
    python verdicts.py "$OUT" --table3 | tee -a "$OUT/table3.md"
    exit 0
fi

if [ "${1:-}" = tune ]; then  # each learning rate once (seed 0), scored by its greedy reward on the validation split
    lane_a() { for lr in 2e-5 5e-5 1e-4; do grpo --init_from="$OUT/sft/best" --out_dir="$OUT/tune/grpo_$lr" \
                   --lr="$lr" --eval_every="$GRPO_STEPS"; done; }
    lane_b() { for lr in 5e-5 2e-4 1e-3; do control "$lr" --out_dir="$OUT/tune/control_$lr" --eval_every="$CONTROL_STEPS" \
                   --save_every=0; done; }
    both "GRPO at three rates" lane_a "the control at three rates" lane_b
    python verdicts.py "$OUT" --tune | tee "$OUT/tune.md"
    exit 0
fi

stage "0. The general model: the tiny Qwen3-VL pre-trained on the general world (Qwen3-VL), on both cores"
OMP_NUM_THREADS=2 python sft.py config/general.py --out_dir="$OUT/general"

general_rl() {
    evaluate general eval_general
    for s in $SEEDS; do
        grpo --init_from="$OUT/general" --seed="$s" --out_dir="$OUT/grpo_general_s$s"
        evaluate "grpo_general_s$s" "eval_general_rl_s$s"
    done
}
sft() {
    python sft.py --init_from="$OUT/general" --n_train="$N_TRAIN" --epochs=100 --max_steps="$SFT_STEPS" \
        --eval_every=25 --out_dir="$OUT/sft"
    evaluate sft/best eval_sft
}
both "1. SFT for several epochs of the training set, from the general model (RadVLM)" sft \
     "seeds $SEEDS: GRPO from the general model (Qwen3-VL + RL)" general_rl

sft_rl() {
    for s in $SEEDS; do
        grpo --init_from="$OUT/sft/best" --seed="$s" --out_dir="$OUT/grpo_sft_s$s"
        evaluate "grpo_sft_s$s" "eval_sft_rl_s$s"
        control "$CONTROL_LR" --seed="$((s + 1))" --out_dir="$OUT/sft_more_s$s"
        evaluate "sft_more_s$s" "eval_sft_more_s$s"
    done
}
thinking() {
    python coldstart.py --n_records="$N_TRAIN" --out_dir="$OUT/coldstart"
    python sft.py config/coldstart.py --init_from="$OUT/sft/best" --data="$OUT/coldstart/coldstart.jsonl" \
        --out_dir="$OUT/coldstart/model"
    evaluate coldstart/model eval_thinking --thinking=True
    for s in $SEEDS; do
        grpo --init_from="$OUT/coldstart/model" --thinking=True --max_new_tokens=224 --seed="$s" \
            --out_dir="$OUT/grpo_thinking_s$s"
        evaluate "grpo_thinking_s$s" "eval_thinking_rl_s$s" --thinking=True
    done
}
both "2. seeds $SEEDS: GRPO from the SFT model (RadVLM + RL), and SFT continued for as long (more epochs)" sft_rl \
     "3. the cold start, then GRPO with thinking (RadVLM-Thinking + RL)" thinking

stage "Tables and verdicts"
python evaluate.py --compare "$OUT/eval_general" "$OUT"/eval_general_rl_s* "$OUT/eval_sft" "$OUT"/eval_sft_more_s* \
    "$OUT"/eval_sft_rl_s* "$OUT/eval_thinking" "$OUT"/eval_thinking_rl_s* | tee "$OUT/tables.md"
python verdicts.py "$OUT" | tee -a "$OUT/tables.md"
echo "pictures: $OUT/eval_*/contact_sheet.png; curves of each run's log: $OUT/eval_*/curves.png"
