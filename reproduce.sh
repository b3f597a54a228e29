#!/usr/bin/env bash
# The paper's experiment grid in miniature, on the synthetic chest X-ray world, on a CPU:
#   SFT -> GRPO ("RadVLM + RL"); SFT -> cold start -> GRPO with thinking ("RadVLM-Thinking + RL");
#   GRPO from the untrained model ("Qwen3-VL + RL", the general model); evaluation of each, side by side.
#     bash reproduce.sh                 # about 45 minutes on 2 CPU cores
#     OUT=out/repro2 bash reproduce.sh  # another output folder
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-out/repro}
N_TEST=${N_TEST:-400}
mkdir -p "$OUT"
stage() { echo; echo "=== $1 ($(date +%H:%M:%S))"; }

stage "1. SFT of the tiny Qwen3-VL on the synthetic instructions (RadVLM)"
python sft.py --out_dir="$OUT/sft"
python evaluate.py --init_from="$OUT/sft" --out_dir="$OUT/eval_sft" --n_test="$N_TEST"

stage "2. GRPO from the SFT model (RadVLM + RL)"
python grpo.py --init_from="$OUT/sft" --out_dir="$OUT/grpo_sft"
python evaluate.py --init_from="$OUT/grpo_sft" --out_dir="$OUT/eval_sft_rl" --n_test="$N_TEST"

stage "3. Cold start on reasoning traces, then GRPO with thinking (RadVLM-Thinking + RL)"
python coldstart.py --init_from="$OUT/sft" --out_dir="$OUT/coldstart"
python evaluate.py --init_from="$OUT/coldstart/model" --thinking=True --out_dir="$OUT/eval_thinking" --n_test="$N_TEST"
python grpo.py --init_from="$OUT/coldstart/model" --thinking=True --max_new_tokens=224 --max_steps=60 \
    --out_dir="$OUT/grpo_thinking"
python evaluate.py --init_from="$OUT/grpo_thinking" --thinking=True --max_new_tokens=256 \
    --out_dir="$OUT/eval_thinking_rl" --n_test="$N_TEST"

stage "4. GRPO from the untrained model (the general model + RL)"
python grpo.py --init_from=tiny --out_dir="$OUT/grpo_general" --max_steps=60
python evaluate.py --init_from="$OUT/grpo_general" --out_dir="$OUT/eval_general_rl" --n_test="$N_TEST"

stage "Tables"
python evaluate.py --compare "$OUT/eval_general_rl" "$OUT/eval_sft" "$OUT/eval_sft_rl" "$OUT/eval_thinking" \
    "$OUT/eval_thinking_rl" | tee "$OUT/tables.md"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def value(run, *path):
    node = json.load(open(f"{out}/{run}/results.json"))
    for key in path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node.get("value"), node.get("ci")
def compare(what, a, b, *path):
    (va, ca), (vb, cb) = value(a, *path), value(b, *path)
    if va is None or vb is None:
        return print(f"- {what}: not available")
    verdict = "yes" if vb > va else "no"
    separated = ca and cb and (cb[0] > ca[1] if vb > va else ca[0] > cb[1])
    print(f"- {what}: {a} {va:.3f} {ca} vs {b} {vb:.3f} {cb} -> {verdict}"
          f"{' (CIs separated)' if separated else ' (CIs overlap)'}")
print("\nThe paper: RL adds to SFT on both tasks; thinking does not help further; RL on the general model")
print("closes much of the gap on grounding, less on reports. This run:")
compare("SFT + RL beats SFT on the report reward (label F1)", "eval_sft", "eval_sft_rl", "report", "label_f1_reward")
compare("SFT + RL beats SFT on grounding (soft-F1)", "eval_sft", "eval_sft_rl", "grounding", "all", "soft_f1")
compare("SFT + RL beats SFT on grounding (mAP@0.5)", "eval_sft", "eval_sft_rl", "grounding", "all", "map50")
compare("thinking + RL beats SFT + RL on reports", "eval_sft_rl", "eval_thinking_rl", "report", "label_f1_reward")
compare("thinking + RL beats SFT + RL on grounding", "eval_sft_rl", "eval_thinking_rl", "grounding", "all", "soft_f1")
compare("SFT beats the general model + RL on grounding", "eval_general_rl", "eval_sft", "grounding", "all", "soft_f1")
PY
echo "pictures: $OUT/eval_*/contact_sheet.png; curves of each run's log: $OUT/eval_*/curves.png"
