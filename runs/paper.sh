#!/usr/bin/env bash
# runs/paper.sh: the paper's pipeline (docs/paper.md) in one script, from the datasets as downloaded to the evaluated
# models, on one node of NPROC GPUs:
#   1. convert every dataset of docs/datasets.md the paper uses, its train and test splits (CheXpert Plus has no test
#      split: train only);
#   2. one SFT training file: every converted train file once, in one fixed shuffled order. This approximates the
#      paper's ~1.1 M-record multi-task mix by the datasets' own sizes: no dataset weights, no GPT-4o conversations
#      (not converted), Chest ImaGenome one region per image as the authors did;
#   3. SFT (RadVLM): config/sft_paper.py, one epoch, no validation set, so the stages after it start from its out_dir's
#      latest step;
#   4. the cold start (RadVLM-Thinking): the teacher's traces for the SFT file's report and grounding records
#      (coldstart.py), then config/coldstart_paper.py on them, from the SFT model;
#   5. GRPO: config/grpo_report_paper.py on MIMIC-CXR's reports and config/grpo_grounding_paper.py on the grounding
#      records, each from the SFT model, and with thinking from the cold-start model (RadVLM-Thinking + RL);
#   6. evaluate every model on the test files (reports: MIMIC-CXR test; grounding: the four grounding test files in
#      one, scored per dataset), and the paper's Tables 1-2 of all of them in $OUT/tables.md.
# Each file a stage writes is the file the next one reads, named once below; the config files name the same files.
#
#   MIMIC_ROOT=/data/mimic-cxr-jpg/2.1.0 CHEXPERT_PLUS_ROOT=/data/chexpert-plus \
#   IMAGENOME_ROOT=/data/chest-imagenome/1.0.0 VINDR_ROOT=/data/vindr-cxr/1.0.0 MS_CXR_ROOT=/data/ms-cxr/1.1.0 \
#   PADCHEST_GR_ROOT=/data/padchest-gr BASE_MODEL=/models/Qwen3-VL-8B-Instruct \
#   TEACHER=/models/Qwen3-VL-32B-Instruct METRIC_WEIGHTS=/models/metric_weights bash runs/paper.sh
#
# Re-running it continues: what a finished stage wrote is kept (a converted or combined file, coldstart.jsonl, an
# evaluation's results.json, a training run's out_dir/finished, written when its command ends), and a training run
# that was cut short resumes from its newest checkpoint (--resume=True; with none it starts fresh). Delete a run's
# `finished` to train it further. EXTRA_SFT, EXTRA_COLDSTART, EXTRA_GRPO and EXTRA_EVAL are added to every command of
# that script, after its stage's settings (so they can change any of them) and before the files named below, which
# connect the stages (tests/test_paper_run.py runs it so with the tiny model on a CPU).
# Cost: not measured. The paper trained RL on 8 nodes x 4 GH200 (plus a node of reward-model workers); this script
# keeps the config files' settings (512 prompts x 8 answers per GRPO step, 300 steps for reports, 600 for grounding)
# on one node, so expect its RL to take several times the paper's wall-clock; the teacher writes a trace of up to 768
# tokens for every report and grounding record of the SFT file. Memory per GPU: python bench/memory_table.py.
# Not run on a GPU yet: only tests/test_paper_run.py's CPU run (2 gloo ranks, the tiny model, fake datasets in the
# real layout, a few steps per stage). Run python bench/gpu_check.py on the GPU machine first.
set -euo pipefail
cd "$(dirname "$0")/.."

# the datasets as downloaded (docs/datasets.md)
MIMIC_ROOT=${MIMIC_ROOT:-raw/mimic-cxr-jpg/2.1.0}        # MIMIC-CXR-JPG, with MIMIC-CXR's reports unzipped into it
FILTERED_REPORTS=${FILTERED_REPORTS:-}                    # the comparison-free reports (CSV or folder), if you have
                                                          # them: reports of the other studies are left out
CHEXPERT_PLUS_ROOT=${CHEXPERT_PLUS_ROOT:-raw/chexpert-plus}
IMAGENOME_ROOT=${IMAGENOME_ROOT:-raw/chest-imagenome/1.0.0}
VINDR_ROOT=${VINDR_ROOT:-raw/vindr-cxr/1.0.0}
MS_CXR_ROOT=${MS_CXR_ROOT:-raw/ms-cxr/1.1.0}
PADCHEST_GR_ROOT=${PADCHEST_GR_ROOT:-raw/padchest-gr}
# models, machines, outputs
BASE_MODEL=${BASE_MODEL:-Qwen/Qwen3-VL-8B-Instruct}       # what SFT starts from (a hub id or a local dir)
TEACHER=${TEACHER:-Qwen/Qwen3-VL-32B-Instruct}           # the cold start's teacher, a local dir in practice; on a
                                                         # CPU "rule": traces from the records' annotations
METRIC_WEIGHTS=${METRIC_WEIGHTS:-weights}                # RadCliQ's and the metrics' weights, laid out as scorers.py
NPROC=${NPROC:-8}                                        # processes (GPUs) per stage: torchrun --nproc_per_node
DATA=${DATA:-data}                                       # the converted records
OUT=${OUT:-out/paper}                                    # the models and evaluations
EXTRA_SFT=${EXTRA_SFT:-}
EXTRA_COLDSTART=${EXTRA_COLDSTART:-}
EXTRA_GRPO=${EXTRA_GRPO:-}
EXTRA_EVAL=${EXTRA_EVAL:-}

# what each stage writes and the next one reads
MIMIC_TRAIN=$DATA/mimic_train.jsonl                # reports, classification: SFT, GRPO for reports
MIMIC_TEST=$DATA/mimic_test.jsonl                  # reports, classification: the report evaluation
CHEXPERT_PLUS_TRAIN=$DATA/chexpert_plus_train.jsonl  # reports, classification: SFT
IMAGENOME_TRAIN=$DATA/imagenome_train.jsonl        # anatomical grounding
IMAGENOME_TEST=$DATA/imagenome_test.jsonl
VINDR_TRAIN=$DATA/vindr_train.jsonl                # abnormality grounding (DICOMs become PNGs in vindr_*_images/)
VINDR_TEST=$DATA/vindr_test.jsonl
MS_CXR_TRAIN=$DATA/ms_cxr_train.jsonl              # phrase grounding
MS_CXR_TEST=$DATA/ms_cxr_test.jsonl
PADCHEST_GR_TRAIN=$DATA/padchest_gr_train.jsonl    # phrase grounding
PADCHEST_GR_TEST=$DATA/padchest_gr_test.jsonl
SFT_TRAIN=$DATA/radvlm_train.jsonl                 # every train file: SFT's data, and the cold start's
GROUNDING_TRAIN=$DATA/grounding_train.jsonl        # the four grounding train files: GRPO for grounding
GROUNDING_TEST=$DATA/grounding_test.jsonl          # the four grounding test files: the grounding evaluation
SFT=$OUT/sft                                       # RadVLM (its latest step is what the next stages read)
COLDSTART=$OUT/coldstart                           # the teacher's traces
COLDSTART_DATA=$COLDSTART/coldstart.jsonl          # the kept traces beside replayed SFT records: the cold start's data
THINKING=$OUT/sft_thinking                         # RadVLM-Thinking
GRPO_REPORT=$OUT/grpo_report                       # RadVLM + RL
GRPO_GROUNDING=$OUT/grpo_grounding
GRPO_REPORT_THINKING=$OUT/grpo_report_thinking     # RadVLM-Thinking + RL
GRPO_GROUNDING_THINKING=$OUT/grpo_grounding_thinking
# each evaluation writes $OUT/eval_<model>_<task>/results.json; all of them side by side: $OUT/tables.md

LAUNCH=(torchrun --standalone --nproc_per_node="$NPROC")
FILTERED=(${FILTERED_REPORTS:+--filtered-reports "$FILTERED_REPORTS"})
stage() { echo "=== $1 ($(date +%H:%M:%S))"; }
kept() { [ -e "$1" ] && echo "$1 exists: kept"; }  # false where $1 is missing: what follows || runs
convert() {  # dataset, output file, options: `python data.py convert` (docs/datasets.md) without loading torch
    kept "$2" || python converters.py "$1" --out "$2" "${@:3}"
}
combine() {  # output file, input files: their records in one fixed random order (sft.py shuffles anyway, but the
             # cold start replays a file's first records, which must not all come from its first dataset)
    kept "$1" || { cat "${@:2}" | shuf --random-source=<(yes) > "$1.tmp" && mv "$1.tmp" "$1"; }
}
train() {  # output dir, command: continued from its newest checkpoint until it finishes
    kept "$1/finished" || { "${@:2}" --out_dir="$1" --resume=True && touch "$1/finished"; }
}
grpo() {  # config, prompts, starting model, output dir, settings
    # shellcheck disable=SC2086  # EXTRA_* are lists of settings
    train "$4" "${LAUNCH[@]}" grpo.py "$1" "${@:5}" $EXTRA_GRPO --metric_weights="$METRIC_WEIGHTS" --data="$2" \
        --init_from="$3"
}
evaluate() {  # model, test file, output dir, settings; the paper's pixel budget at evaluation
    # shellcheck disable=SC2086
    kept "$3/results.json" || "${LAUNCH[@]}" evaluate.py --min_pixels=1024 --max_pixels=451584 "${@:4}" $EXTRA_EVAL \
        --metric_weights="$METRIC_WEIGHTS" --init_from="$1" --data="$2" --out_dir="$3"
}

stage "1. convert the datasets"
convert mimic-cxr "$MIMIC_TRAIN" --root "$MIMIC_ROOT" --split train "${FILTERED[@]}"
convert mimic-cxr "$MIMIC_TEST" --root "$MIMIC_ROOT" --split test "${FILTERED[@]}"
convert chexpert-plus "$CHEXPERT_PLUS_TRAIN" --root "$CHEXPERT_PLUS_ROOT" --split train
convert chest-imagenome "$IMAGENOME_TRAIN" --root "$IMAGENOME_ROOT" --mimic-root "$MIMIC_ROOT" --split train
convert chest-imagenome "$IMAGENOME_TEST" --root "$IMAGENOME_ROOT" --mimic-root "$MIMIC_ROOT" --split test
convert vindr-cxr "$VINDR_TRAIN" --root "$VINDR_ROOT" --split train
convert vindr-cxr "$VINDR_TEST" --root "$VINDR_ROOT" --split test
convert ms-cxr "$MS_CXR_TRAIN" --root "$MS_CXR_ROOT" --mimic-root "$MIMIC_ROOT" --split train
convert ms-cxr "$MS_CXR_TEST" --root "$MS_CXR_ROOT" --mimic-root "$MIMIC_ROOT" --split test
convert padchest-gr "$PADCHEST_GR_TRAIN" --root "$PADCHEST_GR_ROOT" --split train
convert padchest-gr "$PADCHEST_GR_TEST" --root "$PADCHEST_GR_ROOT" --split test

stage "2. the SFT training file and the grounding files"
combine "$SFT_TRAIN" "$MIMIC_TRAIN" "$CHEXPERT_PLUS_TRAIN" "$IMAGENOME_TRAIN" "$VINDR_TRAIN" "$MS_CXR_TRAIN" \
    "$PADCHEST_GR_TRAIN"
combine "$GROUNDING_TRAIN" "$IMAGENOME_TRAIN" "$VINDR_TRAIN" "$MS_CXR_TRAIN" "$PADCHEST_GR_TRAIN"
combine "$GROUNDING_TEST" "$IMAGENOME_TEST" "$VINDR_TEST" "$MS_CXR_TEST" "$PADCHEST_GR_TEST"

stage "3. SFT (RadVLM)"
# shellcheck disable=SC2086
train "$SFT" "${LAUNCH[@]}" sft.py config/sft_paper.py $EXTRA_SFT --init_from="$BASE_MODEL" --data="$SFT_TRAIN"

stage "4. the cold start (RadVLM-Thinking): the teacher's traces, then SFT on them"
# shellcheck disable=SC2086  # an interrupted coldstart.py skips the records whose traces it wrote
kept "$COLDSTART_DATA" || "${LAUNCH[@]}" coldstart.py $EXTRA_COLDSTART --teacher="$TEACHER" --data="$SFT_TRAIN" \
    --out_dir="$COLDSTART"
# shellcheck disable=SC2086
train "$THINKING" "${LAUNCH[@]}" sft.py config/coldstart_paper.py $EXTRA_SFT --init_from="$SFT" --data="$COLDSTART_DATA"

stage "5. GRPO for reports and for grounding, from RadVLM and, with thinking, from RadVLM-Thinking"
grpo config/grpo_report_paper.py "$MIMIC_TRAIN" "$SFT" "$GRPO_REPORT"
grpo config/grpo_grounding_paper.py "$GROUNDING_TRAIN" "$SFT" "$GRPO_GROUNDING"
# reports with thinking: 4096-token answers, so the grounding config's generate_batch for them
grpo config/grpo_report_paper.py "$MIMIC_TRAIN" "$THINKING" "$GRPO_REPORT_THINKING" --thinking=True \
    --max_new_tokens=4096 --generate_batch=4
grpo config/grpo_grounding_paper.py "$GROUNDING_TRAIN" "$THINKING" "$GRPO_GROUNDING_THINKING" --thinking=True

stage "6. evaluate every model on the test files"
evaluate "$SFT" "$MIMIC_TEST" "$OUT/eval_sft_report" --max_new_tokens=1024
evaluate "$SFT" "$GROUNDING_TEST" "$OUT/eval_sft_grounding" --max_new_tokens=1024
evaluate "$GRPO_REPORT" "$MIMIC_TEST" "$OUT/eval_grpo_report" --max_new_tokens=1024
evaluate "$GRPO_GROUNDING" "$GROUNDING_TEST" "$OUT/eval_grpo_grounding" --max_new_tokens=1024
evaluate "$GRPO_REPORT_THINKING" "$MIMIC_TEST" "$OUT/eval_grpo_thinking_report" --max_new_tokens=4096 --thinking=True
evaluate "$GRPO_GROUNDING_THINKING" "$GROUNDING_TEST" "$OUT/eval_grpo_thinking_grounding" --max_new_tokens=4096 \
    --thinking=True
python evaluate.py --compare "$OUT"/eval_* | tee "$OUT/tables.md"
