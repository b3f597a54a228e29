"""evaluate.py: mAP@0.5 against a brute-force reference, ROUGE-L / BLEU-4 / GREEN parsing on hand-computed
examples, the predictions-file mode end to end, "unavailable" (never 0) without weights, the model-based metrics
on tiny local weights, and generation with a tiny checkpoint."""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import rewards
from conftest import favour_eos, write_records
from records import load_records, reference_answer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_METRICS = ("bertscore", "chexbert_f1_micro", "chexbert_f1_macro", "chexbert_f1_micro_5", "chexbert_f1_macro_5",
                 "radgraph_f1", "radcliq_v1", "green")
torch.set_num_threads(1)


def run_evaluate(*args, check=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def report_record(rid, answer):
    return {"id": rid, "task": "report", "conversations": [{"from": "human", "value": "Write a radiology report."},
                                                           {"from": "gpt", "value": answer}]}


# ---------------------------------------------------------------------------------------------------
# mAP@0.5

def brute_force_ap(predicted, gold):
    """The paper's AP@0.5 written out as its authors' evaluate_boxes does: predictions in order, each taking the gold
    box of highest IoU (numpy's argmax over all of them), a hit if that IoU is >= 0.5 and the box is not matched yet;
    then VOC's all-point interpolated AP the classic way (recall padded with 0 and 1, precision with 0 and 0,
    precision made non-increasing from the right, summed over the points where recall changes)."""
    def iou(a, b):
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union
    if not gold or not predicted:
        return 0.0
    matched, recalls, precisions, hits = set(), [], [], 0
    for k, p in enumerate(predicted, 1):
        ious = np.array([iou(p, g) for g in gold])
        best = int(np.argmax(ious))
        if ious[best] >= 0.5 and best not in matched:
            matched.add(best)
            hits += 1
        recalls.append(hits / len(gold))
        precisions.append(hits / k)
    mrec, mpre = [0.0] + recalls + [1.0], [0.0] + precisions + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def random_box(rng, around=None, jitter=0.06):
    if around is None:
        x0, y0 = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
        return [x0, y0, x0 + rng.uniform(0.05, 0.3), y0 + rng.uniform(0.05, 0.3)]
    x0, y0, x1, y1 = (v + rng.uniform(-jitter, jitter) for v in around)
    return [min(x0, x1 - 0.01), min(y0, y1 - 0.01), x1, y1]


def test_map50_matches_a_brute_force_reference_on_random_cases():
    rng = random.Random(0)
    values = []
    for _ in range(500):
        gold = [random_box(rng) for _ in range(rng.randint(0, 4))]
        gold += [random_box(rng, g, 0.04) for g in gold if rng.random() < 0.3]  # a second reader's box: overlapping
        predicted = [random_box(rng, g, rng.choice([0.02, 0.06, 0.15])) for g in gold if rng.random() < 0.8]
        predicted += [random_box(rng) for _ in range(rng.randint(0, 3))]  # false positives
        predicted += [list(p) for p in predicted if rng.random() < 0.2]  # duplicates: the second one is a FP
        rng.shuffle(predicted)
        ap, matched = evaluate.average_precision_50(predicted, gold)
        assert ap == pytest.approx(brute_force_ap(predicted, gold), abs=1e-12)
        assert len(matched) <= len(gold) and all(x >= 0.5 for x in matched)
        values.append(ap)
    assert 0.1 < np.mean([0 < v < 1 for v in values])  # the cases cover partial APs, not only 0 and 1


def test_map50_hand_cases():
    gold = [[0.1, 0.1, 0.5, 0.5]]
    assert evaluate.average_precision_50([gold[0], gold[0]], gold)[0] == 1.0  # a duplicate after the hit costs nothing
    assert evaluate.average_precision_50([[0.7, 0.7, 0.9, 0.9], gold[0]], gold)[0] == 0.5  # a miss before it halves it
    assert evaluate.average_precision_50([], gold) == (0.0, [])
    assert evaluate.average_precision_50(gold, []) == (0.0, [])
    assert evaluate.average_precision_50([], []) == (0.0, [])  # the paper's rule: no box on either side scores 0


def test_map50_takes_the_best_gold_box_even_if_it_is_used():
    """Where the paper's rule differs from "the best still-unused gold box": overlapping gold boxes (two readers,
    adjacent findings). Gold A = [0, 0, 0.4, 0.4] and B = [0.05, 0, 0.45, 0.4] overlap (IoU 0.14 / 0.18 = 0.78)."""
    a, b = [0.0, 0.0, 0.4, 0.4], [0.05, 0.0, 0.45, 0.4]
    near_a = [0.02, 0.0, 0.42, 0.4]  # IoU 0.152 / 0.168 = 0.905 with A, 0.148 / 0.172 = 0.860 with B
    # 1st prediction: A (IoU 1), a hit. 2nd: its best box is A again, already matched, so a false positive, although
    # B is unused at IoU 0.86. Precision 1, 1/2 at recall 1/2, 1/2: AP = 1/2 x 1 = 0.5 (best unused box: 1.0)
    ap, matched = evaluate.average_precision_50([a, near_a], [a, b])
    assert ap == pytest.approx(0.5) and matched == [1.0]
    # the same duplicate after a prediction of B: B, then near_a -> A (0.905), both hits: AP 1
    assert evaluate.average_precision_50([b, near_a], [a, b])[0] == pytest.approx(1.0)
    # a duplicate of A on the two overlapping boxes: A (hit), A again (its best box is A, used: a miss) -> 0.5
    assert evaluate.average_precision_50([a, a], [a, b])[0] == pytest.approx(0.5)
    # ties go to the first gold box: a box exactly between two gold boxes, at IoU 0.1875 / 0.3125 = 0.6 with each,
    # takes the first (a hit); its twin takes the first again (a miss), so the second is never found: AP 0.5
    left, right, middle = [0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.125, 0.0, 0.625, 0.5]
    assert evaluate.box_iou(middle, left) == evaluate.box_iou(middle, right) == 0.6
    ap, matched = evaluate.average_precision_50([middle, middle], [left, right])
    assert ap == pytest.approx(0.5) and matched == [0.6]


# ---------------------------------------------------------------------------------------------------
# text metrics and GREEN's parser on hand-computed examples

def test_rouge_l_and_bleu4_on_known_examples():
    # LCS "the cat on the mat" = 5 of 6 and 6 words: F = 5/6
    assert evaluate.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # case and punctuation ignored: LCS "no effusion" = 2, P = 2/3, R = 1, F = 0.8
    assert evaluate.rouge_l("No pleural effusion.", "no effusion") == pytest.approx(0.8)
    assert evaluate.rouge_l("", "no effusion") == 0.0
    # BLEU-4: 1..4-gram precisions 4/6, 3/5, 2/4, 1/3, no brevity penalty (the prediction is longer)
    bleu = (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert rewards.bleu4("the heart is normal in size", "the heart is normal") == pytest.approx(bleu)
    records = [report_record("a", "the heart is normal"), report_record("b", "the cat is on the mat")]
    results = evaluate.score(records, ["the heart is normal in size", "the cat sat on the mat"], n_boot=0)
    assert results["report"]["bleu4"]["value"] == pytest.approx(bleu / 2)  # the cat pair has no common 4-gram
    assert results["report"]["rouge_l"]["value"] == pytest.approx((2 * 4 / 10 + 5 / 6) / 2)
    assert results["report"]["answer_chars"]["value"] == pytest.approx((27 + 22) / 2)


def test_label_f1_is_pooled_micro_and_macro_over_the_rule_based_labels():
    records = [report_record("a", "Moderate cardiomegaly. Small left pleural effusion."),
               report_record("b", "Mild pulmonary edema."), report_record("c", "The lungs are clear.")]
    answers = ["Moderate cardiomegaly.", "Mild pulmonary edema. Possible pneumothorax.", "The lungs are clear."]
    report = evaluate.score(records, answers, n_boot=0)["report"]
    # labels: cardiomegaly TP, effusion FN, edema TP, pneumothorax FP (uncertain counts), no finding TP
    assert report["label_f1_micro"]["value"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert report["label_f1_macro"]["value"] == pytest.approx((1 + 0 + 1 + 0 + 1) / 5)
    assert report["label_f1_micro_5"]["value"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))


def test_classification_f1_micro_macro_and_per_sample_by_hand():
    from records import classification_answer
    cases = [(["cardiomegaly", "edema"], ["cardiomegaly"]), (["pleural effusion"], ["pleural effusion", "edema"]),
             ([], []), (["edema"], ["pneumothorax"]), (["cardiomegaly"], ["cardiomegaly"]),
             (["atelectasis"], ["atelectasis"]), (["atelectasis", "cardiomegaly"], ["cardiomegaly"])]
    records = [{"id": i, "task": "classification", "conversations": [
        {"from": "human", "value": "Are there any abnormalities on this Chest X-ray?"},
        {"from": "gpt", "value": classification_answer(gold)}]} for i, (gold, _) in enumerate(cases)]
    results = evaluate.score(records, [classification_answer(predicted) for _, predicted in cases], n_boot=0)
    # per label: cardiomegaly tp 3; pleural effusion tp 1; "no finding" (the normal study) tp 1; edema fp 1, fn 2;
    # pneumothorax fp 1; atelectasis tp 1, fn 1 (F1 2/3, precision 1). micro: 2 x 6 / (2 x 6 + 2 + 3) = 12/17;
    # macro: (1 + 1 + 1 + 0 + 0 + 2/3) / 6 = 11/18; per sample: 2/3, 2/3, 1, 0, 1, 1, 2/3 -> 5/7
    classification = results["classification"]
    assert classification["n"] == 7
    assert classification["f1_micro"]["value"] == pytest.approx(12 / 17)
    assert classification["f1_macro"]["value"] == pytest.approx(11 / 18)
    assert classification["sample_f1"]["value"] == pytest.approx(5 / 7)


# ---------------------------------------------------------------------------------------------------
# the predictions-file mode, end to end

@pytest.fixture(scope="module")
def scored_predictions(tmp_path_factory):
    """Gold answers as predictions, except one grounding record answered with a far-off box."""
    folder = tmp_path_factory.mktemp("pred")
    records_path = write_records(str(folder / "data"), 9)  # 6 reports, 3 anatomical grounding records
    records = load_records(records_path)
    with open(folder / "preds.jsonl", "w") as f:
        for r in records:
            answer = "The heart is located at [0.9, 0.9, 0.95, 0.95]." if r["id"] == "g8" else reference_answer(r)
            f.write(json.dumps({"id": r["id"], "answer": answer}) + "\n")
    out = str(folder / "eval")
    proc = run_evaluate(f"--data={records_path}", f"--predictions={folder / 'preds.jsonl'}", f"--out_dir={out}",
                        "--bootstrap=200")
    return out, records_path, folder, proc


def test_predictions_mode_scores_a_file_of_answers(scored_predictions):
    out, _, folder, proc = scored_predictions
    results = json.load(open(os.path.join(out, "results.json")))
    grounding = results["grounding"]
    assert set(grounding) == {"anatomical", "all"} and grounding["all"]["n"] == 3
    assert grounding["all"]["map50"]["value"] == pytest.approx(2 / 3)  # two perfect boxes, one miss
    assert grounding["all"]["miou"]["value"] == pytest.approx(1.0)  # of the matched boxes
    assert grounding["all"]["soft_f1"]["value"] == pytest.approx(2 / 3)
    lo, hi = grounding["all"]["map50"]["ci"]
    assert 0 <= lo <= 2 / 3 <= hi <= 1 and lo < hi
    report = results["report"]
    assert report["n"] == 6
    for name in ("rouge_l", "label_f1_micro", "label_f1_macro", "label_f1_reward"):
        assert report[name]["value"] == pytest.approx(1.0) and report[name]["ci"] == pytest.approx([1.0, 1.0])
    assert results["model"].endswith("preds.jsonl")
    lines = [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]
    assert [x["id"] for x in lines] == ["r0", "r1", "g2", "r3", "r4", "g5", "r6", "r7", "g8"]
    assert (set(lines[0]) == {"id", "task", "prompt", "answer", "reference"}
            and lines[0]["answer"] == lines[0]["reference"])
    table = open(os.path.join(out, "table.md")).read()
    assert "| R-L |" in table and "66.7 [" in table and "n/a" in table and table in proc.stdout
    assert Image.open(os.path.join(out, "contact_sheet.png")).size[0] == 4 * (192 + 4) + 4


def test_missing_weights_are_reported_unavailable_never_zero(scored_predictions, tmp_path):
    out = scored_predictions[0]
    report = json.load(open(os.path.join(out, "results.json")))["report"]
    for name in MODEL_METRICS:
        assert report[name]["value"] is None and "--metric_weights" in report[name]["unavailable"], name
    # a folder without the weights, and a radgraph folder without the radgraph package: unavailable too
    (tmp_path / "radgraph" / "radgraph-xl").mkdir(parents=True)
    report = evaluate.score([report_record("a", "No effusion.")], ["No effusion."], n_boot=10,
                            metric_weights=str(tmp_path))["report"]
    assert all(report[name] == {"value": None, "unavailable": report[name]["unavailable"]} for name in MODEL_METRICS)


def test_predictions_file_must_answer_every_test_record(scored_predictions):
    _, records_path, folder, _ = scored_predictions
    with open(folder / "partial.jsonl", "w") as f:
        f.write(json.dumps({"id": "r0", "answer": "No acute cardiopulmonary process."}) + "\n")
    proc = run_evaluate(f"--data={records_path}", f"--predictions={folder / 'partial.jsonl'}",
                        f"--out_dir={folder / 'eval2'}", check=False)
    assert proc.returncode != 0 and "no answer for 8 of 9 test records" in proc.stderr


# ---------------------------------------------------------------------------------------------------
# generation with a tiny checkpoint

def test_generate_answers_with_and_without_images(tiny, tmp_path):
    model, processor = tiny
    records = load_records(write_records(str(tmp_path), 4))
    records.insert(1, report_record("text-only", "No acute cardiopulmonary process."))
    answers = evaluate.generate_answers(model, processor, records, generate_batch=3, thinking=False, max_new_tokens=6,
                                        device=torch.device("cpu"), progress=False)
    assert len(answers) == 5 and all(isinstance(a, str) for a in answers)
    alone = evaluate.generate_answers(model, processor, records[1:2], 1, False, 6, torch.device("cpu"), progress=False)
    assert alone == answers[1:2]  # a text-only prompt is batched apart from the image prompts


def test_greedy_answers_are_generates_while_ended_answers_leave_the_batch(tiny, tmp_path):
    """generate_answers decodes through engine.sample_groups at temperature 0, dropping ended rows from the batch:
    with answers that end at different steps (some after a few tokens, some not at all) its texts are exactly
    generate(do_sample=False)'s. Sampling instead of the argmax, or a row's cache or positions mixed up after a
    drop, fails it."""
    from data import generation_kwargs, prompt_batch
    model, processor = tiny
    records = load_records(write_records(str(tmp_path), 8))
    hook = favour_eos(model, processor, bias=1.2)  # with this bias the tiny model's greedy answers end at steps 0-10
    answers = evaluate.generate_answers(model, processor, records, 0, False, 16, torch.device("cpu"), progress=False)
    inputs = prompt_batch(records, processor)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=16, **generation_kwargs(processor.tokenizer))
    hook.remove()
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    ends = (new_tokens == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")).int().argmax(1)
    assert (ends == 0).sum() * 4 >= len(records) and ends.max() >= 8, ends  # a quarter leave at once, others run on
    assert answers == processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def test_the_blind_answers_come_from_the_training_mix(tmp_path):
    """evaluate.py --blind hands --mix to the training records it takes its answers from (a file's records take none:
    the error shows it was handed on)."""
    records_path = write_records(str(tmp_path / "data"), 4)
    proc = run_evaluate("--blind=True", f"--data={records_path}", f"--train_data={records_path}", "--mix=report=1",
                        f"--out_dir={tmp_path / 'eval'}", check=False)
    assert proc.returncode != 0 and "applies to the synthetic world" in proc.stderr


def test_headroom_table_from_hand_made_groups():
    """Four report prompts, 3 samples each: tied at the greedy answer's reward; spread with a sample above greedy;
    the same samples below a better greedy answer (above their own mean, not above greedy); tied away from greedy.
    Tied 2 of 4, above greedy 1 of 4. "Above" measured against the sampled mean (2 of 4) or "tied" meaning every
    sample equals the greedy reward (1 of 4) fails it."""
    table, stats = evaluate.headroom_table({"report": [(0.5, [0.5, 0.5, 0.5]), (0.3, [0.0, 0.2, 0.7]),
                                                       (0.8, [0.0, 0.2, 0.7]), (0.9, [0.6, 0.6, 0.6])]})
    assert stats["report"] == pytest.approx({"prompts": 4, "greedy": 0.625, "sampled_mean": 0.425, "best_of_g": 0.625,
                                             "tied": 0.5, "above_greedy": 0.25})
    assert "| report | 4 | 0.625 | 0.425 | 0.625 | 50% | 25% |" in table


def test_threshold_headroom_states_findings_the_samples_hint_at():
    """Three studies, two findings: the greedy answer leaves out a finding 3 of 8 samples state (study 1); stating
    what at least 3/8 of the samples state gets every finding right (F1 1.0 against the greedy 6/7). Thresholds taken
    over the greedy answers' findings, or the best F1 taken as the lowest threshold's (8/9), fail it."""
    labels = [([1, 0], [0, 0], [0.375, 0.0]), ([0, 1], [0, 1], [0.25, 0.875]), ([1, 1], [1, 1], [0.5, 1.0])]
    assert evaluate.threshold_headroom(labels) == pytest.approx((6 / 7, 1.0, 0.375))
    table, stats = evaluate.headroom_table({"report": [(0.5, [0.5, 0.4], row) for row in labels]})
    assert stats["report"]["threshold_label_f1"] == 1.0 and "at least 38% of the samples state 100.0" in table
    assert "+14.3" in table


def test_headroom_of_a_checkpoint_on_validation_prompts(tiny_checkpoint, tmp_path):
    run_evaluate(f"--init_from={tiny_checkpoint}", "--headroom=3", "--n_test=2", "--max_new_tokens=4",
                 f"--out_dir={tmp_path}")
    stats = json.load(open(tmp_path / "headroom.json"))
    for task in ("report", "grounding"):
        assert stats[task]["prompts"] == 2 and stats[task]["best_of_g"] >= stats[task]["sampled_mean"]
    assert 0 <= stats["report"]["greedy_label_f1"] <= 1 and 0 <= stats["report"]["threshold_label_f1"] <= 1
    assert "G = 3 samples" in (tmp_path / "headroom.md").read_text()


def test_evaluate_a_checkpoint_end_to_end_and_compare_runs(tiny_checkpoint, scored_predictions, tmp_path):
    records_path = write_records(str(tmp_path / "data"), 4)
    with open(tmp_path / "log.jsonl", "w") as f:
        for step in range(1, 6):
            f.write(json.dumps({"step": step, "reward_report": 0.1 * step, "loss": 1 / step}) + "\n")
        f.write(json.dumps({"step": 5, "val_loss": 0.3}) + "\n")
    out = str(tmp_path / "eval")
    run_evaluate(f"--init_from={tiny_checkpoint}", f"--data={records_path}", f"--out_dir={out}", "--max_new_tokens=6",
                 "--generate_batch=2", "--bootstrap=20", "--thinking=True", f"--log={tmp_path / 'log.jsonl'}")
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["report"]["n"] == 3 and results["grounding"]["all"]["n"] == 1
    assert results["thinking"]["well_formed"]["value"] is not None
    assert results["settings"]["max_new_tokens"] == 6
    assert Image.open(os.path.join(out, "curves.png")).size == (720, 600)  # two panels: sampled reward, loss / val_loss
    assert Image.open(os.path.join(out, "contact_sheet.png"))
    table = evaluate.compare([scored_predictions[0], out])
    assert table.count(f"| {out} |") == 3 and table.count(f"| {scored_predictions[0]} |") == 2  # + thinking for `out`


# ---------------------------------------------------------------------------------------------------
# the blind answers: what a model that never looks at the image would say

def grounding_record(rid, question, boxes, task="anatomical_grounding"):
    from records import format_boxes
    return {"id": rid, "task": task, "boxes": boxes,
            "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                              {"from": "gpt", "value": f"It is at {format_boxes(boxes)}."}]}


def test_blind_answers_are_the_training_priors_by_hand():
    """Reports and classification: the most frequent training answer of the task; grounding: the coordinate-wise
    median of the training boxes of the same question, else of the task (never the test record's own boxes)."""
    from records import parse_boxes
    train = [report_record("a", "Effusion."), report_record("b", "Normal."), report_record("c", "Normal."),
             {**report_record("d", "No abnormalities."), "task": "classification"},
             grounding_record("g1", "Where is the heart?", [[0.1, 0.2, 0.5, 0.6]]),
             grounding_record("g2", "Where is the heart?", [[0.3, 0.2, 0.7, 0.8]]),
             grounding_record("g3", "Where is the heart?", [[0.2, 0.4, 0.6, 0.7]]),
             grounding_record("g4", "Where is the aorta?", [[0.0, 0.0, 0.1, 0.1], [0.05, 0.05, 0.15, 0.15]])]
    test = [report_record("t1", "Effusion."), {**report_record("t2", "Edema."), "task": "classification"},
            grounding_record("t3", "Where is the heart?", [[0.5, 0.5, 0.9, 0.9]]),
            grounding_record("t4", "Where is the spine?", [[0.4, 0.1, 0.6, 0.9]])]
    answers = evaluate.blind_answers(test, train)
    assert answers[:2] == ["Normal.", "No abnormalities."]
    assert parse_boxes(answers[2]) == [[0.2, 0.2, 0.6, 0.7]]  # the heart question's median, not the test box
    assert parse_boxes(answers[3]) == [[0.1, 0.2, 0.5, 0.6]]  # no training "spine": the task's 5 boxes' median
    assert evaluate.blind_answers([grounding_record("t5", "Where?", [[0, 0, 1, 1]], "phrase_grounding")], train) == [""]


def test_blind_evaluation_scores_the_priors_on_a_synthetic_split(tmp_path):
    """--blind=True end to end, on the validation split (--split=val: its studies, not the test split's)."""
    out = str(tmp_path / "blind")
    run_evaluate("--blind=True", "--n_train=60", "--n_test=24", "--split=val", f"--out_dir={out}", "--bootstrap=10")
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["model"] == "blind: synthetic"
    rows = [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]
    assert all(row["id"].startswith("synth-100000") for row in rows)  # val studies are seeds 10,000,000 on
    reports = {row["answer"] for row in rows if row["task"] == "report"}
    assert len(reports) == 1 and results["report"]["label_f1_micro_5"]["value"] is not None
    assert all(row["answer"] != row["reference"] for row in rows if row["task"].endswith("grounding"))
