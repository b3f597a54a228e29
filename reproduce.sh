#!/usr/bin/env bash
# The paper's experiment grid in miniature (docs/paper.md, Tables 1-3) on the synthetic chest X-ray world, on a CPU,
# in the paper's regime: a finite training set (the first N_TRAIN studies), SFT on it for several epochs with its best
# checkpoint on the validation split kept (early stopping: out/repro/sft/best), and from that checkpoint GRPO, and
# for comparison SFT continued on the same studies for as long as GRPO runs (more epochs of the same data). Both
# learning rates are chosen on the validation split, by the greedy answers of seed 0 at each candidate rate. Then: the
# general model (the tiny Qwen3-VL pre-trained on the general world, shapes.py: the miniature's "Qwen3-VL") and GRPO
# from it; the cold start (traces beside replayed SFT records) and GRPO with thinking; the claims decided on paired
# test records, over seeds (verdicts.py). Results and times: docs/results.md.
#     bash reproduce.sh                         # every stage below, in order
#     bash reproduce.sh tune rl tables          # some of them (each needs the ones before it to have run once)
#     bash reproduce.sh table3                  # Table 3, the choice of report reward (after sft)
#     OUT=out/repro2 SEEDS="0 1 2 3" bash reproduce.sh
# Stages: general (the general model), sft (SFT | GRPO from the general model), tune (GRPO | the control, seed 0 at each
# rate), rl (GRPO | the control, every seed at the chosen rates), thinking (the cold start, then GRPO with thinking),
# tables. Two runs go at a time, each on one core (OMP_NUM_THREADS=1): on 2 cores that does 1.5 times the work of one
# run on both (an odd seed out runs on both); a run's results depend only on its settings and thread count, not on what
# runs beside it. A run whose out_dir holds `finished` is kept, so the rl stage reuses tune's seed-0 runs at the chosen
# rates and a stage run again continues.
set -euo pipefail
shopt -s nullglob  # a stage not run leaves its glob empty: its rows and claims are left out
cd "$(dirname "$0")"
OUT=${OUT:-out/repro}
N_TEST=${N_TEST:-2600}         # test studies: 0.02 resolved at 80 % power on every RL claim (docs/results.md, "Power")
SEEDS=${SEEDS:-"0 1 2"}
GENERAL_SEEDS=${GENERAL_SEEDS:-$SEEDS}    # GRPO from the general model
THINKING_SEEDS=${THINKING_SEEDS:-$SEEDS}  # GRPO from the cold-start model
N_TRAIN=${N_TRAIN:-6000}          # the training set: studies that SFT, GRPO and the control all draw from; 3,000 do
                                  # not teach small findings in any number of epochs (docs/results.md, #36)
SFT_STEPS=${SFT_STEPS:-2000}      # SFT: about 13 epochs of N_TRAIN, past its best validation step, which is kept
                                  # (held-out loss lowest at 1,400-1,600, greedy reward best at 1,700: #36)
# the task of each training study (sft.py --mix): abnormality boxes need more examples than the default weights give
# (docs/results.md, #36); the validation and test splits keep synthetic.DEFAULT_MIX
MIX=${MIX:-"report=0.2,classification=0.1,anatomical_grounding=0.1,abnormality_grounding=0.45,conversation=0.05"}
COLDSTART_RECORDS=${COLDSTART_RECORDS:-3000}  # the first training studies given traces (and replayed beside them):
                                              # config/coldstart.py's 250 steps are about one pass over 3,000
GRPO_STEPS=${GRPO_STEPS:-60}
GRPO_LRS=${GRPO_LRS:-"5e-5 1.5e-4"}      # the candidates of the tune stage
CONTROL_LRS=${CONTROL_LRS:-"2e-4 6e-4"}
CONTROL_STEPS=${CONTROL_STEPS:-190}      # continued SFT for as long as a GRPO run of GRPO_STEPS (docs/results.md)
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
STAGES=${*:-general sft tune rl thinking tables}
stage() { echo "=== $1 ($(date +%H:%M:%S))"; }
evaluate() {  # into $OUT/$2 unless it holds this model's evaluation (not another's, say a run at another rate)
    python -c "import json, sys; sys.exit(json.load(open(sys.argv[1]))['settings']['init_from'] != sys.argv[2])" \
        "$OUT/$2/results.json" "$OUT/$1" 2> /dev/null || python evaluate.py --init_from="$OUT/$1" --out_dir="$OUT/$2" \
        --n_test="$N_TEST" "${@:3}"; }
headroom() {  # what GRPO can move from a model: greedy against G samples on validation prompts (evaluate.py)
    [ -e "$OUT/$2/headroom.json" ] || python evaluate.py --init_from="$OUT/$1" --out_dir="$OUT/$2" --headroom=16 \
        --n_test=48 "${@:3}"; }
once() {  # run a training command into $OUT/$1 unless it finished before
    [ -e "$OUT/$1/finished" ] || { "${@:2}" --out_dir="$OUT/$1" && touch "$OUT/$1/finished"; }
}
grpo() { python grpo.py --n_train="$N_TRAIN" --max_steps="$GRPO_STEPS" "$@"; }
control() {  # SFT continued from the best SFT checkpoint on the same studies: a constant rate, no warm-up
    python sft.py --init_from="$OUT/sft/best" --n_train="$N_TRAIN" --mix="$MIX" --epochs=100 \
        --max_steps="$CONTROL_STEPS" --lr="$1" --vision_lr="$(python -c "print($1 / 2)")" --warmup=0.0 \
        --eval_every="$CONTROL_STEPS" --save_every="$CONTROL_STEPS" "${@:2}"
}
sft_rl() { once "grpo_sft_lr$1_s$2" grpo --init_from="$OUT/sft/best" --lr="$1" --seed="$2"; }
sft_more() { once "sft_more_lr$1_s$2" control "$1" --seed="$(($2 + 1))"; }
both() {  # two lanes at once, each a shell function, each with its own log; stop if either fails
    stage "$1 | $3"
    "$2" > "$OUT/lane_$2.log" 2>&1 & local a=$!
    "$4" > "$OUT/lane_$4.log" 2>&1 & local b=$!
    wait $a || { tail -20 "$OUT/lane_$2.log"; exit 1; }
    wait $b || { tail -20 "$OUT/lane_$4.log"; exit 1; }
}
chosen() { python verdicts.py "$OUT" --tune | tail -1 | grep -o "$1=[^ ]*" | cut -d= -f2; }

if [ "$STAGES" = table3 ]; then
    table3_lane() {
        for reward in $1; do
            once "table3_$reward" grpo --init_from="$OUT/sft/best" --task=report --report_reward="$reward" \
                --lr="$(chosen GRPO_LR)"
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

for s in $STAGES; do case $s in
general)
    stage "the general model: the tiny Qwen3-VL pre-trained on the general world (Qwen3-VL), on both cores"
    OMP_NUM_THREADS=2 once general python sft.py config/general.py ;;
sft)
    sft() {
        once sft python sft.py --init_from="$OUT/general" --n_train="$N_TRAIN" --mix="$MIX" --epochs=100 \
            --max_steps="$SFT_STEPS" --vision_lr=4e-3 --eval_every=100
        evaluate sft/best eval_sft
        headroom sft/best headroom_sft
    }
    general_rl() {
        evaluate general eval_general
        headroom general headroom_general
        for s in $GENERAL_SEEDS; do
            once "grpo_general_s$s" grpo --init_from="$OUT/general" --seed="$s"
            evaluate "grpo_general_s$s" "eval_general_rl_s$s"
        done
    }
    both "SFT for several epochs of the training set, from the general model (RadVLM)" sft \
         "seeds $GENERAL_SEEDS: GRPO from the general model (Qwen3-VL + RL)" general_rl ;;
tune)  # seed 0 at each rate, scored by its greedy answers on N_TEST validation studies, never the test split
    tune_grpo() { for lr in $GRPO_LRS; do sft_rl "$lr" 0; evaluate "grpo_sft_lr${lr}_s0" "val_grpo_sft_lr${lr}_s0" \
                      --split=val; done; }
    tune_control() { for lr in $CONTROL_LRS; do sft_more "$lr" 0; evaluate "sft_more_lr${lr}_s0" \
                         "val_sft_more_lr${lr}_s0" --split=val; done; evaluate sft/best val_sft --split=val; }
    both "GRPO at rates $GRPO_LRS" tune_grpo "the control at rates $CONTROL_LRS" tune_control
    python verdicts.py "$OUT" --tune | tee "$OUT/tune.md" ;;
rl)
    rl_grpo() {
        for s in $SEEDS; do sft_rl "$(chosen GRPO_LR)" "$s"
            evaluate "grpo_sft_lr$(chosen GRPO_LR)_s$s" "eval_sft_rl_s$s"; done
    }
    rl_control() {
        for s in $SEEDS; do sft_more "$(chosen CONTROL_LR)" "$s"
            evaluate "sft_more_lr$(chosen CONTROL_LR)_s$s" "eval_sft_more_s$s"; done
    }
    both "seeds $SEEDS: GRPO from the SFT model (RadVLM + RL)" rl_grpo \
         "SFT continued for as long on the same studies (more epochs)" rl_control ;;
thinking)
    stage "the cold start: traces beside replayed SFT records, from the SFT model (RadVLM-Thinking)"
    [ -e "$OUT/coldstart/coldstart.jsonl" ] || python coldstart.py --n_records="$COLDSTART_RECORDS" --mix="$MIX" \
        --out_dir="$OUT/coldstart"
    OMP_NUM_THREADS=2 once coldstart/model python sft.py config/coldstart.py --init_from="$OUT/sft/best" \
        --data="$OUT/coldstart/coldstart.jsonl"
    OMP_NUM_THREADS=2 evaluate coldstart/model eval_thinking --thinking=True
    thinking_rl() {
        for s in $1; do
            once "grpo_thinking_lr$(chosen GRPO_LR)_s$s" grpo --init_from="$OUT/coldstart/model" --thinking=True \
                --max_new_tokens=224 --lr="$(chosen GRPO_LR)" --seed="$s"
            evaluate "grpo_thinking_lr$(chosen GRPO_LR)_s$s" "eval_thinking_rl_s$s" --thinking=True
        done
    }
    # seeds in pairs, one lane each; an odd one out last, on both cores (a lane beside nothing would leave one idle)
    read -ra seeds <<< "$THINKING_SEEDS"; paired=("${seeds[@]:0:$((${#seeds[@]} / 2 * 2))}")
    odd() { thinking_rl "$(printf '%s\n' "${paired[@]}" | sed -n 'p;n')"; }
    even() { thinking_rl "$(printf '%s\n' "${paired[@]}" | sed -n 'n;p')"; }
    [ ${#paired[@]} = 0 ] || both "seeds ${paired[*]}: GRPO with thinking, the first, third, ..." odd \
                                  "the second, fourth, ..." even
    [ ${#seeds[@]} = ${#paired[@]} ] || { stage "seed ${seeds[-1]}: GRPO with thinking, on both cores"
        OMP_NUM_THREADS=2 thinking_rl "${seeds[-1]}"; } ;;
tables)
    stage "tables and verdicts"
    # the answers a model gives without looking: the training set's most frequent answers, its median box per question
    [ -e "$OUT/eval_blind/results.json" ] || python evaluate.py --blind=True --n_train="$N_TRAIN" --mix="$MIX" \
        --n_test="$N_TEST" --out_dir="$OUT/eval_blind"
    python evaluate.py --compare "$OUT"/eval_blind "$OUT"/eval_general "$OUT"/eval_general_rl_s* "$OUT"/eval_sft \
        "$OUT"/eval_sft_more_s* "$OUT"/eval_sft_rl_s* "$OUT"/eval_thinking "$OUT"/eval_thinking_rl_s* \
        | tee "$OUT/tables.md"
    cat "$OUT"/headroom_*/headroom.md | tee -a "$OUT/tables.md"
    python verdicts.py "$OUT" | tee -a "$OUT/tables.md"
    echo "pictures: $OUT/eval_*/contact_sheet.png; curves of each run's log: $OUT/eval_*/curves.png" ;;
*) echo "unknown stage $s (general sft tune rl thinking tables, or table3 alone)"; exit 1 ;;
esac; done
