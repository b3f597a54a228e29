#!/usr/bin/env bash
# The paper's experiment grid in miniature (docs/paper.md, Tables 1-3), on the synthetic chest X-ray world, on a CPU:
#   the general model (the tiny Qwen3-VL pre-trained on the general world, shapes.py: the miniature's "Qwen3-VL")
#   and GRPO from it; SFT ("RadVLM") and GRPO from it, beside an equal-time continuation of SFT; the cold start and
#   GRPO with thinking; then the paper's claims decided on paired test records, seed by seed (verdicts.py).
#     bash reproduce.sh                 # Tables 1-2 with SEEDS seeds of every GRPO and control run
#     bash reproduce.sh table3          # Table 3, the choice of report reward (after the above: it starts from its SFT)
#     OUT=out/repro2 SEEDS="0 1 2" bash reproduce.sh
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-out/repro}
N_TEST=${N_TEST:-400}
SEEDS=${SEEDS:-"0 1"}
mkdir -p "$OUT"
stage() { echo; echo "=== $1 ($(date +%H:%M:%S))"; }
evaluate() { python evaluate.py --init_from="$OUT/$1" --out_dir="$OUT/$2" --n_test="$N_TEST" "${@:3}"; }

if [ "${1:-}" = table3 ]; then
    stage "Table 3: GRPO on reports from the SFT model, with each offline report reward"
    for reward in label_f1 bleu4 gleu positive_f1; do
        python grpo.py --init_from="$OUT/sft" --task=report --report_reward=$reward --out_dir="$OUT/table3_$reward"
        evaluate "table3_$reward" "eval_table3_$reward"
    done
    python evaluate.py --compare "$OUT/eval_sft" "$OUT"/eval_table3_* | tee "$OUT/table3.md"
    python verdicts.py "$OUT" --table3 | tee -a "$OUT/table3.md"
    exit 0
fi

stage "0. The general model: the tiny Qwen3-VL pre-trained on the general world (Qwen3-VL)"
python sft.py config/general.py --out_dir="$OUT/general"
evaluate general eval_general

stage "1. SFT on the synthetic chest X-ray instructions, from the general model (RadVLM)"
python sft.py --init_from="$OUT/general" --out_dir="$OUT/sft"
evaluate sft eval_sft

for s in $SEEDS; do
    stage "2. Seed $s: GRPO from the SFT model (RadVLM + RL), and SFT continued for as long (is the gain RL?)"
    python grpo.py --init_from="$OUT/sft" --seed="$s" --out_dir="$OUT/grpo_sft_s$s"
    evaluate "grpo_sft_s$s" "eval_sft_rl_s$s"
    python sft.py --init_from="$OUT/sft" --out_dir="$OUT/sft_more_s$s" --max_steps=400 --lr=2e-4 --vision_lr=1e-4 \
        --warmup=0.0 --seed=$((s + 1)) --val_data=
    evaluate "sft_more_s$s" "eval_sft_more_s$s"

    stage "3. Seed $s: GRPO from the general model, the same budget (Qwen3-VL + RL)"
    python grpo.py --init_from="$OUT/general" --seed="$s" --out_dir="$OUT/grpo_general_s$s"
    evaluate "grpo_general_s$s" "eval_general_rl_s$s"
done

stage "4. Cold start on reasoning traces, then GRPO with thinking (RadVLM-Thinking + RL)"
python coldstart.py --out_dir="$OUT/coldstart"
python sft.py config/coldstart.py --init_from="$OUT/sft" --data="$OUT/coldstart/traces.jsonl" \
    --out_dir="$OUT/coldstart/model"
evaluate coldstart/model eval_thinking --thinking=True
python grpo.py --init_from="$OUT/coldstart/model" --thinking=True --max_new_tokens=224 --max_steps=60 \
    --out_dir="$OUT/grpo_thinking"
evaluate grpo_thinking eval_thinking_rl --thinking=True --max_new_tokens=256

stage "Tables and verdicts"
python evaluate.py --compare "$OUT/eval_general" "$OUT"/eval_general_rl_s* "$OUT/eval_sft" "$OUT"/eval_sft_more_s* \
    "$OUT"/eval_sft_rl_s* "$OUT/eval_thinking" "$OUT/eval_thinking_rl" | tee "$OUT/tables.md"
python verdicts.py "$OUT" | tee -a "$OUT/tables.md"
echo "pictures: $OUT/eval_*/contact_sheet.png; curves of each run's log: $OUT/eval_*/curves.png"
