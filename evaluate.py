"""
evaluate.py: the unified evaluation: answers from a checkpoint (or from anywhere), scored like the paper.

Every model gets the same prompts, pixels, greedy decoding and metrics (docs/paper.md, "Evaluation"), so an SFT run,
a GRPO run and an outside model (MAIRA-2, CheXagent, ... via --predictions) are comparable. The test set is the
synthetic world's test split or a RadVLM/LLaVA file; each record is scored by its task (reports, grounding,
classification; conversations are skipped; a record without a task is a report).

    python evaluate.py --init_from=out/sft                  # after `python sft.py`: 200 synthetic test records
    python evaluate.py --init_from=tiny --n_test=32         # a random tiny Qwen3-VL: a smoke test of the pipeline
    python evaluate.py --init_from=out/grpo --thinking=True --log=out/sft/log.jsonl,out/grpo/log.jsonl
    python evaluate.py --init_from=RadVLM-8B --data=test.jsonl --max_pixels=451584 --max_new_tokens=1024 \\
        --metric_weights=W   # W/distilroberta-base, W/chexbert.pth, ... as scorers.py lays them out
    torchrun --nproc_per_node=8 evaluate.py --init_from=RadVLM-8B --data=test.jsonl  # generation sharded over ranks
    python evaluate.py --data=test.jsonl --predictions=maira2.jsonl --out_dir=out/eval_maira2  # {"id", "answer"} lines
    python evaluate.py --blind=True --n_train=1000 --out_dir=out/eval_blind  # answers without the image (priors)
    python evaluate.py --compare out/eval_sft out/eval_grpo out/eval_maira2  # side by side: markdown on stdout
    python evaluate.py --init_from=out/sft --headroom=8 --n_test=48 --out_dir=out/headroom  # what RL can move

Writes to out_dir: results.json, table.md (laid out like the paper's Tables 1 and 2), predictions.jsonl (id, task,
prompt, answer, reference: itself a valid --predictions file), contact_sheet.png (gold boxes green, predicted red,
the answer under each image) and curves.png (reward / loss against step from --log, or init_from's log.jsonl).
Every metric in results.json is {"value": x, "ci": [lo, hi]} (a seeded 95 % percentile bootstrap over the test
records) or {"value": null, "unavailable": "why"}: a metric whose weights were not given is never reported as 0.

Reports: ROUGE-L (rouge-score's rougeL F1: lower-cased alphanumeric tokens, no stemming); BLEU-4 (rewards.bleu4:
sentence-level, unsmoothed, so a text without a matching 4-gram scores 0); label F1 micro / macro of the rule-based
labeler rewards.extract_labels over the 14 CheXpert observations and the usual 5 (suffix _5), present or uncertain
counting as positive (the paper's convention); label_f1_reward (the GRPO report reward); answer_chars (ANC). With
local weights: BERTScore (distilroberta-base, layer 5, baseline-rescaled, as in RadCliQ), CheXbert F1 (its 14 heads;
positive or uncertain is positive, f1chexbert's "rrg" mode), RadGraph F1 (radgraph_level), RadCliQ-v1 (lower is
better; rewards.radcliq_rewards, so 3.0 for a text of 5 characters or fewer) and GREEN. Per-sample metrics are
averaged over samples; F1s are pooled over the test set, and a macro average skips labels absent from both gold and
predictions (sklearn would count them as 0; on MIMIC-CXR's test split every label occurs and the two agree).
Grounding, per task kind and dataset (`source`): mAP@0.5 by the rule of the paper's own evaluation code
(average_precision_50), the fraction of answers holding a box at all, mean IoU
of the matched boxes, and the soft-F1 GRPO reward. Classification: micro / macro F1 of the listed abnormalities.
With --thinking the text after the last </think> is scored (none: an empty answer), and thinking.well_formed is
the fraction of outputs with a </think> and an answer after it.
With --headroom=G it answers instead the first n_test validation prompts per GRPO task (report, grounding) greedily
and G times sampled at temperature 1, as GRPO samples, each scored by the GRPO reward (headroom.json, headroom.md): the
greedy answer, the sampled mean, the best of G, the groups whose G rewards all tie (no gradient) and those with a
sample above the greedy answer (what RL can raise the greedy answer to); for reports also the threshold headroom
(label F1 of stating each finding that at least a share t of the G samples state, at the best t, against the greedy
answers': what a reward on F1 can teach a model that leaves out findings it is unsure of).
Deliberately left out: sampled decoding of the test records (greedy only); FSDP at evaluation (each rank holds a
whole model, so a model too big for one GPU needs a sharded generator such as vLLM); RaTEScore and other LLM judges
than GREEN.
"""

import collections
import json
import math
import os
import re
import sys

import numpy as np
import torch
from tqdm import tqdm

import rewards
import scorers
from configurator import configure
from data import generation_kwargs, load_image, open_records, prompt_batch, tiny_corpus
from distributed import all_reduce_mean, autocast, end_distributed, gathered, init_distributed, print0
from engine import sample_groups, sample_rollouts
from model import load_model
from pictures import contact_sheet, draw_curves
from records import (GROUNDING_TASKS, TASK_GROUPS, RecordError, box_iou, format_boxes, has_image, parse_boxes,
                     question, record_id, reference_answer, task_of)

# model and data
init_from = "out/sft"     # "tiny", a training out dir (its latest step), a checkpoint dir, or a hub id
data = "synthetic"        # "synthetic" (the generated world's test split) or a RadVLM/LLaVA .json/.jsonl test file
n_test = 200              # synthetic test records (ignored for files)
split = "test"            # the synthetic world's split answered: "test", or "val" to choose a recipe without the test
image_size = 128          # side of the synthetic images in pixels
min_pixels = 1024         # processor pixel budget (the paper evaluates at 1,024 .. 451,584)
max_pixels = 16384
thinking = False          # ask for <think>...</think> first; the metrics score the answer after it
max_new_tokens = 256      # longest answer (the paper: 1024 for reports, 4096 with thinking)
generate_batch = 64       # prompts per generate call on each rank (0: all at once); on a CPU the tiny model's
                          # time goes to per-token overhead, which a larger batch shares (docs/speed.md)
predictions = ""          # a JSONL of {"id", "answer"} to score instead of generating (any model's outputs)
headroom = 0              # G > 0: the headroom of GRPO on the validation split instead (greedy, G samples; see above)
blind = False             # answer without the image, from the training split's priors (blind_answers): the trivial
                          # answers every model must beat
train_data = "synthetic"  # the training records the blind answers come from ("synthetic": its train split)
n_train = 1000            # synthetic training records for them: the first n_train studies, as reproduce.sh trains on
mix = ""                  # their tasks' weights, as the SFT run's --mix ("": synthetic.DEFAULT_MIX)
# output
out_dir = "out/eval"
bootstrap = 1000          # resamples of the test records for the 95 % confidence intervals (0: none)
seed = 0
contact_sheet_n = 16      # test images drawn in contact_sheet.png
log = ""                  # training log.jsonl file(s), comma-separated, for curves.png (default: init_from's own)
# the model-based metrics: a local folder of their weights laid out as scorers.py says (nothing is downloaded); a
# metric without its weights is "unavailable"
metric_weights = ""
radgraph_level = "radcliq"  # RadGraph F1: "radcliq" ((entity F1 + relation F1) / 2) or simple / partial / complete

SCORED_TASKS = ("report", "classification", *GROUNDING_TASKS)
GROUNDING_KINDS = {"anatomical_grounding": "anatomical", "abnormality_grounding": "abnormality",
                   "phrase_grounding": "phrase"}
FIVE = [rewards.OBSERVATIONS.index(name) for name in
        ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")]  # CheXbert's usual 5 labels


# ----------------------------------------------------------------------------------------------------------
# metrics of one answer

def rouge_l(prediction, reference):
    """ROUGE-L F1 as rouge-score's rougeL: lower-cased [a-z0-9]+ tokens, longest common subsequence."""
    a, b = re.findall(r"[a-z0-9]+", prediction.lower()), re.findall(r"[a-z0-9]+", reference.lower())
    previous = [0] * (len(b) + 1)  # LCS lengths of a[:i] against every prefix of b, one row at a time
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return 2 * previous[-1] / (len(a) + len(b)) if previous[-1] else 0.0  # = 2PR / (P + R)


def average_precision_50(predicted, gold):
    """The paper's per-sample AP@0.5, and the IoUs of its true positives, by the rule of the authors' evaluation code
    (RadVLM, radvlm/evaluation/compute_metrics_tasks.py, evaluate_boxes). Predictions are taken in output order
    (there are no confidences); each takes the gold box it overlaps most, over all gold boxes (the first on ties),
    and is a true positive if that IoU is >= 0.5 and that gold box is not matched yet, else a false positive: it
    does not fall back to the next-best unused box (so a second prediction on one of two overlapping gold boxes
    misses). AP is the area under the precision-recall curve with VOC's all-point interpolation (precision at
    recall r = the best precision at any recall >= r). A sample with no predicted box or no gold box scores 0."""
    if not predicted or not gold:
        return 0.0, []
    used, hits, matched = set(), [], []
    for box in predicted:
        ious = [box_iou(box, g) for g in gold]
        j = max(range(len(gold)), key=ious.__getitem__)  # the first of equal maxima, as numpy's argmax
        hits.append(ious[j] >= 0.5 and j not in used)
        if hits[-1]:
            used.add(j)
            matched.append(ious[j])
    if not matched:
        return 0.0, []
    tp = np.cumsum(hits)
    precision, recall = tp / np.arange(1, len(hits) + 1), tp / len(gold)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * envelope)), matched


def abnormality_set(text):
    """The names a classification answer lists, or {"no finding"} for an answer that says the study is normal
    (rewards' rule, no names and a "no" / "normal" / "none": what scores 1 against a normal gold answer)."""
    return rewards.abnormality_names(text) or ({"no finding"} if rewards.classification_reward(text, "") else set())


def rule_labels(texts):
    """[N, 14] booleans: observation stated present or uncertain by the rule-based labeler (OBSERVATIONS order)."""
    labels = [[bool(rewards.extract_labels(t).get(o, 0)) for o in rewards.OBSERVATIONS] for t in texts]
    return np.array(labels, dtype=bool).reshape(len(texts), len(rewards.OBSERVATIONS))


# ----------------------------------------------------------------------------------------------------------
# metrics of a test set: statistics are functions of (resampled) record indices, then bootstrapped

def mean_of(values):
    values = np.asarray(values, dtype=float)
    return lambda idx: float(values[idx].mean())


def f1(tp, fp, fn, average):
    """Micro or macro F1 from per-label counts; macro averages the labels that occur in gold or prediction."""
    if average == "micro":
        tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    seen = tp + fp + fn > 0
    return float(np.mean(2 * tp[seen] / (2 * tp + fp + fn)[seen])) if seen.any() else math.nan


def f1_statistics(name, predicted, gold, columns=slice(None), suffix=""):
    """{name_micro, name_macro}: F1 pooled over records, on some label columns of [N, C] boolean matrices."""
    p, g = predicted[:, columns], gold[:, columns]
    counts = np.stack([p & g, p & ~g, ~p & g]).astype(np.int64)  # tp, fp, fn per record and label
    return {f"{name}_{average}{suffix}": (lambda idx, average=average: f1(*counts[:, idx].sum(1), average))
            for average in ("micro", "macro")}


def with_ci(statistic, n, n_boot, seed):
    """The statistic on all n records, and the 2.5 / 97.5 percentiles over n_boot resamples of them (with
    replacement, seeded: every metric of a group sees the same resamples)."""
    value = statistic(np.arange(n))
    rng = np.random.default_rng(seed)
    boots = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=float)
    boots = boots[np.isfinite(boots)]
    result = {"value": float(value) if math.isfinite(value) else None}
    if n_boot:
        result["ci"] = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if len(boots) else None
    return result


def model_statistics(answers, references, metric_weights, radgraph_level):
    """The model-based report metrics (scorers.py), each in turn; one without its weights (or package) becomes a
    string: why."""
    def bertscore():
        return {"bertscore": mean_of(scorers.bert_scorer(metric_weights)(answers, references))}

    def chexbert():
        labels = scorers.chexbert_labels(answers + references, metric_weights)
        predicted, gold = labels[:len(answers)], labels[len(answers):]
        return {**f1_statistics("chexbert_f1", predicted, gold),
                **f1_statistics("chexbert_f1", predicted, gold, FIVE, "_5")}

    def radgraph():
        scorer = scorers.radgraph_scorer(metric_weights)
        scored = [i for i, (a, r) in enumerate(zip(answers, references)) if a.strip() and r.strip()]
        values = np.zeros(len(answers))  # an empty text has no entities: F1 0 (the package cannot annotate "")
        values[scored] = scorer([answers[i] for i in scored], [references[i] for i in scored],
                                level=radgraph_level)
        return {"radgraph_f1": mean_of(values)}

    def radcliq():
        try:
            values, _ = rewards.radcliq_rewards(answers, references, metric_weights, floor_on_failure=False)
        except RuntimeError as e:  # a number would hide that the metric's models failed
            return {"radcliq_v1": str(e)}
        return {"radcliq_v1": mean_of([-v for v in values])}

    def green():
        return {"green": mean_of(scorers.green_scores(answers, references, metric_weights))}

    stats = {}
    for metric, keys in ((bertscore, ["bertscore"]), (radgraph, ["radgraph_f1"]), (radcliq, ["radcliq_v1"]),
                         (chexbert, [f"chexbert_f1_{a}{s}" for s in ("", "_5") for a in ("micro", "macro")]),
                         (green, ["green"])):
        try:
            stats.update(metric())
        except scorers.MissingModelError as e:
            stats.update({key: str(e) for key in keys})
    return stats


def report_statistics(answers, records, metric_weights, radgraph_level):
    references = [reference_answer(r) for r in records]
    predicted, gold = rule_labels(answers), rule_labels(references)
    return {"rouge_l": mean_of([rouge_l(a, r) for a, r in zip(answers, references)]),
            "bleu4": mean_of([rewards.bleu4(a, r) for a, r in zip(answers, references)]),
            **f1_statistics("label_f1", predicted, gold), **f1_statistics("label_f1", predicted, gold, FIVE, "_5"),
            "label_f1_reward": mean_of([rewards.label_f1(a, r) for a, r in zip(answers, references)]),
            "answer_chars": mean_of([len(a) for a in answers]),
            **model_statistics(answers, references, metric_weights, radgraph_level)}


def grounding_statistics(answers, records):
    ap, ious = zip(*[average_precision_50(parse_boxes(a), r.get("boxes") or parse_boxes(reference_answer(r)))
                     for a, r in zip(answers, records)])
    iou_sum, n_matched = np.array([sum(x) for x in ious]), np.array([len(x) for x in ious])
    return {"map50": mean_of(ap),
            "miou": lambda idx: iou_sum[idx].sum() / n_matched[idx].sum() if n_matched[idx].sum() else math.nan,
            "soft_f1": mean_of([rewards.grounding_reward(a, reference_answer(r)) for a, r in zip(answers, records)]),
            "parsed": mean_of([bool(parse_boxes(a)) for a in answers])}  # answers in the box format at all


def classification_statistics(answers, records):
    predicted, gold = [abnormality_set(a) for a in answers], [abnormality_set(reference_answer(r)) for r in records]
    names = sorted(set().union(*predicted, *gold))
    matrix = lambda sets: np.array([[n in s for n in names] for s in sets], bool).reshape(len(sets), -1)  # noqa: E731
    sample_f1 = [rewards.classification_reward(a, reference_answer(r)) for a, r in zip(answers, records)]
    return {**f1_statistics("f1", matrix(predicted), matrix(gold)), "sample_f1": mean_of(sample_f1)}


def score(records, completions, thinking=False, n_boot=1000, seed=0, metric_weights="", radgraph_level="radcliq"):
    """results.json's metric sections for the records' raw completions (one per record)."""
    answers = [rewards.final_answer(c, thinking) for c in completions]
    tasks = [task_of(r) for r in records]

    def summarize(indices, statistics, *args):
        stats = statistics([answers[i] for i in indices], [records[i] for i in indices], *args)
        return {"n": len(indices), **{name: {"value": None, "unavailable": s} if isinstance(s, str) else
                                      with_ci(s, len(indices), n_boot, seed) for name, s in stats.items()}}
    results = {}
    reports = [i for i, t in enumerate(tasks) if t == "report"]
    if reports:
        results["report"] = summarize(reports, report_statistics, metric_weights, radgraph_level)
    grounding, groups = [i for i, t in enumerate(tasks) if t in GROUNDING_TASKS], {}
    for task, kind in GROUNDING_KINDS.items():  # each kind, each of its datasets, then all of them
        members = [i for i in grounding if tasks[i] == task]
        groups.update({kind: members} if members else {})
        for source in sorted({records[i].get("source") for i in members} - {None}):
            groups[f"{kind}/{source}"] = [i for i in members if records[i].get("source") == source]
    if grounding:
        results["grounding"] = {name: summarize(members, grounding_statistics)
                                for name, members in {**groups, "all": grounding}.items()}
    classification = [i for i, t in enumerate(tasks) if t == "classification"]
    if classification:
        results["classification"] = summarize(classification, classification_statistics)
    if thinking:
        well_formed = mean_of(["</think>" in c and bool(a.strip()) for c, a in zip(completions, answers)])
        results["thinking"] = summarize(list(range(len(records))), lambda a, r: {"well_formed": well_formed})
    return results


# ----------------------------------------------------------------------------------------------------------
# answers: generated here, or read from a predictions file

def generate_answers(model, processor, records, generate_batch, thinking, max_new_tokens, device, progress=True):
    """Greedy answers to the records' prompts, in record order; only the new tokens, special tokens dropped.
    Records with and without an image go in separate batches (one processor call cannot mix them). The tokens are
    generate(do_sample=False)'s, by engine.sample_groups at temperature 0: answers that have ended leave the batch
    (a batch of short boxes beside long reports no longer runs every row to the longest answer)."""
    stop = generation_kwargs(processor.tokenizer)
    groups = [[i for i, r in enumerate(records) if has_image(r) == image] for image in (True, False)]
    answers = [None] * len(records)
    size = generate_batch or max(1, len(records))
    for idx in tqdm([g[s:s + size] for g in groups for s in range(0, len(g), size)],
                    disable=not progress, desc="generate", dynamic_ncols=True):
        inputs = prompt_batch([records[i] for i in idx], processor, thinking).to(device)
        with torch.no_grad(), autocast(device):
            tokens, _ = sample_groups(model, inputs, 1, max_new_tokens, stop, temperature=0.0)
        texts = processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        for i, text in zip(idx, texts):
            answers[i] = text
    return answers


def held_out_prompts(source, n, image_size, tasks=tuple(TASK_GROUPS), rank=0, world=1):
    """{task: this rank's share of the first n prompts of the task ("report" or "grounding", TASK_GROUPS) in
    `source`'s validation split}: the fixed prompts that held_out_rewards answers at every evaluation of a training
    run; a task with no record there is left out."""
    prompts = {}
    for task in tasks:
        records = readable(open_records(source, "val", n, image_size, tasks=TASK_GROUPS[task], scored=True), n)
        shared = len(records) // world * world  # every rank the same number: they generate in step
        if shared:
            prompts[task] = [records[i] for i in range(rank, shared, world)]
    return prompts


def readable(records, n):
    """The first n of `records` whose image can be read, the others named: a prompt batch is read whole, so one
    unreadable image would stop every evaluation (training skips such a record when it meets it)."""
    kept = []
    for i, record in enumerate(records):
        if len(kept) == n:
            break
        try:
            if has_image(record):
                load_image(record, i)
        except RecordError as e:
            print0(f"held-out prompts: skipped {e}")
        else:
            kept.append(record)
    return kept


def held_out_rewards(model, processor, prompts, device, thinking, max_new_tokens, report_reward="label_f1",
                     metric_weights=""):
    """{"val_reward_<task>": mean GRPO reward of the greedy answers to `prompts` (held_out_prompts)}, over all ranks:
    a training curve without sampling noise. A sharded model is gathered once per task (distributed.gathered)."""
    out, training = {}, model.training
    model.eval()
    for task, records in prompts.items():
        with gathered(model):
            answers = generate_answers(model, processor, records, 0, thinking, max_new_tokens, device, progress=False)
        scores, _ = rewards.score(task, answers, [reference_answer(r) for r in records], reward=report_reward,
                                  thinking=thinking, metric_weights=metric_weights)
        out[f"val_reward_{task}"] = sum(scores) / len(scores)
    model.train(training)
    return all_reduce_mean(out)


def headroom_groups(model, processor, prompts, group_size, device, thinking, max_new_tokens, generate_batch,
                    report_reward="label_f1", metric_weights=""):
    """{task: [(reward of the greedy answer, [rewards of G answers sampled at temperature 1]) per prompt]} for
    `prompts` (held_out_prompts), each answer scored by the GRPO reward of its task; a report's row also holds the
    labeler's findings (rule_labels) of its gold report, of its greedy answer and the share of its samples stating
    each, for threshold_headroom."""
    groups = {}
    for task, records in prompts.items():
        references = [reference_answer(r) for r in records]
        greedy = generate_answers(model, processor, records, generate_batch, thinking, max_new_tokens, device,
                                  progress=False)
        _, sampled = sample_rollouts(model, processor, records, group_size, thinking, device, 1.0, 1.0,
                                     max_new_tokens, generate_batch)
        greedy_scores, _ = rewards.score(task, greedy, references, reward=report_reward, thinking=thinking,
                                         metric_weights=metric_weights)
        sampled_scores, _ = rewards.score(task, sampled, [r for r in references for _ in range(group_size)],
                                          reward=report_reward, thinking=thinking, metric_weights=metric_weights)
        groups[task] = [(g, sampled_scores[i * group_size:(i + 1) * group_size]) for i, g in enumerate(greedy_scores)]
        if task == "report":
            answers = [rewards.final_answer(a, thinking) for a in greedy + sampled]
            stated = rule_labels(answers)
            shares = stated[len(greedy):].reshape(len(greedy), group_size, -1).mean(1)
            groups[task] = [row + ((gold.tolist(), said.tolist(), share.tolist()),) for row, gold, said, share
                            in zip(groups[task], rule_labels(references), stated[:len(greedy)], shares)]
    return groups


def threshold_headroom(labels):
    """What a report reward on F1 can teach by thresholds alone: from [(gold, greedy, share)] per study (the
    labeler's findings of the gold report and of the greedy answer, and the share of the G samples stating each), the
    greedy answers' label F1 micro and the best one of stating every finding sampled in at least a share t of the
    answers, over t. A model decoded greedily leaves out the findings it is unsure of; the F1-optimal threshold of a
    calibrated one is below 1/2 (Lipton et al. 2014). Returns (greedy F1, best F1, its t)."""
    gold, greedy = (np.array([row[k] for row in labels], dtype=bool) for k in range(2))
    share = np.array([row[2] for row in labels])

    def micro_f1(predicted):
        return float(np.nan_to_num(f1((predicted & gold).sum(0), (predicted & ~gold).sum(0),
                                      (~predicted & gold).sum(0), "micro")))

    thresholds = np.unique(share[share > 0])
    best, at = max((micro_f1(share >= t), t) for t in thresholds) if len(thresholds) else (0.0, 1.0)
    return micro_f1(greedy), float(best), float(at)


def headroom_table(groups):
    """The headroom of each task as a markdown table: greedy, sampled mean and best-of-G rewards averaged over the
    prompts, and the share of groups that tie (every sample the same reward: GRPO gets no gradient) and of groups with
    a sample above the greedy answer; for reports (rows with labels) a line on the threshold headroom."""
    lines = ["| task | prompts | greedy | sampled mean | best of G | groups tied | groups with a sample above greedy |",
             "|---|---|---|---|---|---|---|"]
    stats, notes = {}, []
    for task, rows in groups.items():
        n = len(rows)
        stats[task] = {"prompts": n, "greedy": sum(row[0] for row in rows) / n,
                       "sampled_mean": sum(sum(row[1]) / len(row[1]) for row in rows) / n,
                       "best_of_g": sum(max(row[1]) for row in rows) / n,
                       "tied": sum(max(row[1]) - min(row[1]) < 1e-9 for row in rows) / n,
                       "above_greedy": sum(max(row[1]) > row[0] + 1e-9 for row in rows) / n}
        t = stats[task]
        lines.append(f"| {task} | {n} | {t['greedy']:.3f} | {t['sampled_mean']:.3f} | {t['best_of_g']:.3f} | "
                     f"{t['tied']:.0%} | {t['above_greedy']:.0%} |")
        if all(len(row) == 3 for row in rows):
            greedy_f1, best_f1, at = threshold_headroom([row[2] for row in rows])
            t.update(greedy_label_f1=greedy_f1, threshold_label_f1=best_f1, threshold=at)
            notes.append(f"\n{task}, threshold headroom: label F1 micro (14) of the greedy answers "
                         f"{100 * greedy_f1:.1f}; stating each finding that at least {at:.0%} of the samples state "
                         f"{100 * best_f1:.1f} (the best threshold): {100 * (best_f1 - greedy_f1):+.1f}\n")
    return "\n".join(lines) + "\n" + "".join(notes), stats


def blind_answers(records, train_records):
    """An answer to each test record that never looks at its image, from the training records: for a report or a
    classification the most frequent gold answer of that task in training; for grounding the median box (coordinate
    by coordinate) of the training records asking the same question, or of the whole task where none does. A model
    that does not beat these answers is answering from the question and the priors of its data, not from the image."""
    by_task, by_question = collections.defaultdict(list), collections.defaultdict(list)
    for record in train_records:
        by_task[task_of(record)].append(record)
        by_question[task_of(record), question(record)].append(record)

    def median_box(same):
        boxes = [box for record in same for box in record.get("boxes") or parse_boxes(reference_answer(record))]
        return [float(np.median([box[k] for box in boxes])) for k in range(4)] if boxes else None

    frequent = {task: collections.Counter(map(reference_answer, same)).most_common(1)[0][0]
                for task, same in by_task.items()}
    task_boxes = {task: median_box(same) for task, same in by_task.items() if task in GROUNDING_TASKS}
    question_boxes = {key: median_box(same) for key, same in by_question.items() if key[0] in GROUNDING_TASKS}
    answers = []
    for record in records:
        task = task_of(record)
        if task in GROUNDING_TASKS:
            box = question_boxes.get((task, question(record))) or task_boxes.get(task)
            answers.append(f"The region is located at the coordinates {format_boxes([box])} on the image." if box
                           else "")
        else:
            answers.append(frequent.get(task, ""))
    return answers


def read_predictions(path, ids):
    """The answers of a {"id", "answer"} JSONL file in the order of `ids`; a test record without one is an error."""
    answers = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("answer"), str):
                    raise SystemExit(f'{path}:{n}: expected {{"id": ..., "answer": "..."}}')
                answers[str(row["id"])] = row["answer"]
    missing = [i for i in ids if i not in answers]
    if missing:
        raise SystemExit(f"{path}: no answer for {len(missing)} of {len(ids)} test records "
                         f"(first: {', '.join(missing[:3])})")
    return [answers[i] for i in ids]


# ----------------------------------------------------------------------------------------------------------
# what people look at: the paper's tables, a contact sheet, training curves

def cell(metric, scale, fmt):
    if metric is None:  # not measured in this run
        return ""
    if not isinstance(metric, dict):  # a count
        return f"{metric:{fmt}}"
    if metric["value"] is None:  # no weights (n/a), or undefined (a mean IoU without a matched box)
        return "n/a" if "unavailable" in metric else "-"
    ci = metric.get("ci")
    return f"{metric['value'] * scale:{fmt}}" + (f" [{ci[0] * scale:{fmt}}, {ci[1] * scale:{fmt}}]" if ci else "")


def markdown_table(title, runs, columns):
    """A row per run that has any of the columns: (header, path into results.json, scale, format)."""
    def lookup(results, path):
        for key in path:
            results = results.get(key) if isinstance(results, dict) else None
        return results
    rows = [[name] + [cell(lookup(r, path), scale, fmt) for _, path, scale, fmt in columns] for name, r in runs
            if any(lookup(r, path) is not None for _, path, _, _ in columns)]
    head = [f"### {title}", "",
            "| run | " + " | ".join(c[0] for c in columns) + " |", "|---" * (1 + len(columns)) + "|"]
    return "\n".join(head + ["| " + " | ".join(row) + " |" for row in rows]) if rows else ""


def paper_tables(runs):
    """Markdown laid out like the paper's Tables 1 and 2 (a row per run, values with 95 % CIs), then the rest."""
    report = [("n", "n", 1, "d"), ("R-L", "rouge_l", 100, ".1f"), ("BLEU-4", "bleu4", 100, ".1f"),
              ("label F1 micro", "label_f1_micro", 100, ".1f"), ("label F1 macro", "label_f1_macro", 100, ".1f"),
              ("5-finding F1 micro", "label_f1_micro_5", 100, ".1f"),
              ("B-S", "bertscore", 100, ".1f"), ("CXb micro", "chexbert_f1_micro", 100, ".1f"),
              ("CXb macro", "chexbert_f1_macro", 100, ".1f"), ("RGF1", "radgraph_f1", 100, ".1f"),
              ("GREEN", "green", 100, ".1f"), ("RadCliQ", "radcliq_v1", 1, ".2f"), ("ANC", "answer_chars", 1, ".0f")]
    groups = list(dict.fromkeys(g for _, r in runs for g in r.get("grounding", {})))
    tables = [
        markdown_table("Report generation (Table 1): %; RadCliQ-v1 lower is better; ANC = mean characters; "
                       "n/a = no weights given", runs, [(h, ("report", k), s, f) for h, k, s, f in report]),
        markdown_table("Grounding (Table 2): mAP@0.5 %, mean IoU of the matched boxes %, soft-F1 reward %, answers "
                       "with a box %", runs,
                       [(f"mAP@0.5 {g}", ("grounding", g, "map50"), 100, ".1f") for g in groups]
                       + [("mIoU", ("grounding", "all", "miou"), 100, ".1f"),
                          ("soft-F1", ("grounding", "all", "soft_f1"), 100, ".1f"),
                          ("boxes", ("grounding", "all", "parsed"), 100, ".0f")]),
        markdown_table("Classification: F1 % of the listed abnormalities", runs,
                       [("n", ("classification", "n"), 1, "d")] + [(h, ("classification", k), 100, ".1f") for h, k in
                                                                  (("micro", "f1_micro"), ("macro", "f1_macro"),
                                                                   ("per sample", "sample_f1"))]),
        markdown_table("Thinking: % of outputs with a </think> and an answer after it", runs,
                       [("well-formed", ("thinking", "well_formed"), 100, ".1f")])]
    return "\n\n".join(t for t in tables if t) + "\n"


def contact_sheet_tiles(records, answers):
    """Tiles for pictures.contact_sheet: each test image with its gold boxes (green) and predicted boxes (red), its id
    and task, the answer (white) and the start of the gold answer (green)."""
    return [{"image": load_image(record), "lines": [(f"{record_id(record)} ({task_of(record)})", "#a0a0a0"),
                                                    (answer[:150] or "(blank answer)", "white"),
                                                    ("gold: " + reference_answer(record)[:90], "#30ff30")],
             "boxes": [(box, "#30ff30", "") for box in record.get("boxes") or parse_boxes(reference_answer(record))]
             + [(box, "#ff3030", "") for box in parse_boxes(answer)]}
            for record, answer in zip(records, answers)]


def compare(dirs):
    """The paper's tables with a row per evaluation folder (each holding a results.json)."""
    return paper_tables([(d, json.load(open(os.path.join(d, "results.json")))) for d in dirs])


# ----------------------------------------------------------------------------------------------------------

def load_evaluated_model(device):
    """The model of init_from on `device`, in eval mode, or a SystemExit saying there is none (as grpo.py: load_model
    resolves a training output dir to its newest step, or says why it cannot)."""
    try:
        model, processor = load_model(init_from, device=device, min_pixels=min_pixels, max_pixels=max_pixels,
                                      seed=seed, tiny_corpus=tiny_corpus)
    except (OSError, RuntimeError) as e:
        raise SystemExit(f"no checkpoint at {init_from!r} ({e}): run `python sft.py` first (or pass --init_from=...)")
    return model.to(device).eval(), processor


def gathered_shards(mine, world):
    """Every rank's `mine`, in rank order, on every rank (just [mine] in one process)."""
    if world == 1:
        return [mine]
    shards = [None] * world
    torch.distributed.all_gather_object(shards, mine)
    return shards


def main():
    if sys.argv[1:2] == ["--compare"]:  # not a setting: a different command
        print(compare(sys.argv[2:]))
        return
    settings = configure(globals())
    rank, _, world, device = init_distributed()
    if headroom:
        model, processor = load_evaluated_model(device)
        torch.manual_seed(seed + rank)
        mine = headroom_groups(model, processor, held_out_prompts(data, n_test, image_size, rank=rank, world=world),
                               headroom, device, thinking, max_new_tokens, generate_batch,
                               metric_weights=metric_weights)
        shards = gathered_shards(mine, world)
        if rank == 0:
            table, stats = headroom_table({task: [row for shard in shards for row in shard[task]] for task in mine})
            table = f"Headroom of {init_from}: G = {headroom} samples at temperature 1 per validation prompt\n\n{table}"
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "headroom.json"), "w") as f:
                json.dump({"model": init_from, **stats, "settings": settings}, f, indent=1)
            with open(os.path.join(out_dir, "headroom.md"), "w") as f:
                f.write(table)
            print(table)
        return
    source = open_records(data, split, n_test, image_size, tasks=SCORED_TASKS, scored=True)
    records = [source[i] for i in range(len(source))]  # synthetic records draw their image on access: once each
    ids = [record_id(record, i) for i, record in enumerate(records)]
    print0(f"evaluate: {len(records)} test records; {world} rank(s)")
    if predictions:
        completions = read_predictions(predictions, ids)
    elif blind:
        if data != "synthetic" and train_data == "synthetic":
            raise SystemExit(f"--blind=True on {data}: give its training records, --train_data=FILE")
        completions = blind_answers(records, open_records(train_data, "train", n_train, image_size,
                                                          tasks=SCORED_TASKS, scored=True, mix=mix))
    else:
        model, processor = load_evaluated_model(device)
        # each rank answers every world-th record with its own whole model: no collective until the gather
        mine = list(range(rank, len(records), world))
        answers = generate_answers(model, processor, [records[i] for i in mine], generate_batch, thinking,
                                   max_new_tokens, device, progress=rank == 0)
        shards = gathered_shards(list(zip(mine, answers)), world)
        completions = [answer for _, answer in sorted(pair for shard in shards for pair in shard)]
        del model  # the metric models may need the memory
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if rank == 0:
        results = {"model": predictions or ("blind: " + train_data if blind else init_from), "data": data,
                   **score(records, completions, thinking, bootstrap, seed, metric_weights, radgraph_level),
                   "settings": settings}
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
            for rid, record, completion in zip(ids, records, completions):
                prompt = [t["value"] for t in record["conversations"] if t["from"] == "human"][-1]
                f.write(json.dumps({"id": rid, "task": task_of(record), "prompt": prompt.replace("<image>", "").strip(),
                                    "answer": completion, "reference": reference_answer(record)}) + "\n")
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        table = paper_tables([(results["model"], results)])
        with open(os.path.join(out_dir, "table.md"), "w") as f:
            f.write(table)
        shown = [i for i, r in enumerate(records) if has_image(r)][:contact_sheet_n]
        if shown:
            answers = [rewards.final_answer(completions[i], thinking) for i in shown]
            contact_sheet(contact_sheet_tiles([records[i] for i in shown], answers),
                          os.path.join(out_dir, "contact_sheet.png"))
        own_log = os.path.join(init_from, "log.jsonl")  # the training log of the run evaluated, if that is one
        logs = log.split(",") if log else [own_log] if not (predictions or blind) and os.path.isfile(own_log) else []
        drew = bool(logs) and draw_curves(logs, os.path.join(out_dir, "curves.png"))
        print(table)
        print(f"wrote {out_dir}/results.json, table.md, predictions.jsonl" + (", contact_sheet.png" if shown else "")
              + (", curves.png" if drew else ""))


if __name__ == "__main__":
    main()
    end_distributed()
