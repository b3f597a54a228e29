import json
import os
import subprocess
import sys

import coldstart
import synthetic
from data import prompt_messages, to_messages
from records import (CHEXPERT_LABELS, GROUNDING_TASKS, THINK_SUFFIX, location_answer, make_record, parse_boxes,
                     question, reference_answer)


def _records(n=12):
    return synthetic.SyntheticRecords("train", n, tasks=("report", *GROUNDING_TASKS))


def test_thinking_record_format_and_image(tmp_path):
    record = _records()[0]
    out = coldstart.thinking_record(record, "  Heart: normal size. Lungs: clear.  ", str(tmp_path))
    assert out["conversations"][0]["value"].endswith(THINK_SUFFIX)
    assert (reference_answer(out)
            == "<think>\nHeart: normal size. Lungs: clear.\n</think>\n\n" + reference_answer(record))
    assert "image_array" not in out and out["image"].startswith(str(tmp_path))
    json.dumps(out)  # the record file stands on its own


def test_rule_teacher_reviews_what_the_study_holds():
    records = _records(30)
    for record in records:
        study = synthetic.study_of(record)
        trace = coldstart.rule_trace(record, study)
        if record["task"] in GROUNDING_TASKS:  # the question and its target, no review (answer_steps says why)
            assert trace.startswith(f"The question asks: {question(record)} The target is in the")
            assert trace.count("The target is in the") == len(parse_boxes(reference_answer(record)))
            continue
        for finding in study["findings"]:
            assert finding["name"] in trace
        if not study["findings"]:
            assert "Lungs: clear." in trace and "Heart: normal size." in trace


def test_rule_teacher_traces_of_the_synthetic_world_are_unchanged():
    """The synthetic world's traces, on which the cold start of reproduce.sh and its recorded results rest, word for
    word (grounding traces lost their review on 2026-12-06: docs/results.md, the thinking model)."""
    records = _records(12)
    assert coldstart.rule_review(records[7], 128) == (
        "Lines and tubes: none. Heart: normal size. Lungs: clear. Pleura: no effusion, no pneumothorax. The report "
        "states each finding with its side and size, and the normal findings.")
    assert coldstart.rule_review(records[0], 128) == (
        "The question asks: Locate the mass on this chest radiograph. The target is in the patient's right middle zone, "
        "the image's left side.")


def test_rule_teacher_writes_traces_from_a_converted_records_annotations(tmp_path):
    """The rule-based teacher knew only the synthetic world (it regenerates a study from its seed), so on converted
    datasets the cold start stopped, and on a CPU, where a teacher VLM is a random tiny model whose traces are all
    dropped, runs/paper.sh had no stage 2. A record's own CheXpert labels and boxes are its ground truth now; a record
    with neither is dropped with that reason, not stopped on."""
    image = str(tmp_path / "cxr.png")
    labels = {name: int(name in ("Cardiomegaly", "Edema")) for name in CHEXPERT_LABELS}
    report = make_record("r", image, "Write a radiology report for this Chest X-ray.",
                         "The heart is mildly enlarged. There is mild pulmonary edema. No pneumothorax.", "report",
                         labels=labels)
    box = [0.1, 0.1, 0.45, 0.8]
    grounding = make_record("g", image, "Where is the right lung located in this Chest X-ray?",
                            location_answer("right lung", [box]), "anatomical_grounding", boxes=[box])
    unlabeled = make_record("u", image, "Write a radiology report for this Chest X-ray.", "Lungs are clear.", "report")
    assert coldstart.annotation_trace(report) == (
        "Lines and tubes: none. Heart: cardiomegaly. Lungs: edema. Pleura: no effusion, no pneumothorax. Bones: no "
        "fracture. The report states each finding with its side and size, and the normal findings.")
    assert coldstart.annotation_trace(grounding).endswith(
        "The target is in the patient's right middle zone, the image's left side.")
    assert coldstart.annotation_trace(unlabeled) is None
    grouped = [name for names, _ in coldstart.LABEL_REVIEW.values() for name in names]
    assert sorted(grouped) == sorted(set(CHEXPERT_LABELS) - {"No Finding"})  # every observation, once
    part = str(tmp_path / "traces.rank0.jsonl")
    teach = lambda batch: coldstart.teacher_outputs(batch, None, None, None, 128, 0, 20)  # noqa: E731
    coldstart.write_traces([report, grounding, unlabeled], part, teach, generate_batch=4, min_words=20, min_score=0.5)
    lines = [json.loads(line) for line in open(part)]
    assert [(line["id"], line["kept"], line["reason"]) for line in lines] == [
        ("r", True, None), ("g", True, None), ("u", False, "no trace")]
    assert reference_answer(lines[1]["record"]).endswith(reference_answer(grounding))


def test_filter_keeps_good_traces_and_names_the_reason_for_others():
    check = lambda record, trace, final: coldstart.check_trace(record, trace, final, 5, 0.5)  # noqa: E731
    record = next(r for r in _records(30) if r["task"] in GROUNDING_TASKS)
    gold = reference_answer(record)
    good = "Lungs: clear. Heart: normal size. The target is in the right upper zone."
    assert check(record, good, gold) is None
    assert check(record, "Too short.", gold) == "too short"
    assert check(record, good + " <think>again</think>", gold) == "nested think tags"
    assert check(record, good, None) == "no final answer"
    assert check(record, good, "It is at [0.9, 0.9, 0.95, 0.95].") == "final answer scores low"
    assert coldstart.split_final_answer("step one. step two.\nFinal answer: [0.1, 0.2, 0.3, 0.4]") == (
        "step one. step two.", "[0.1, 0.2, 0.3, 0.4]")
    assert coldstart.split_final_answer("no conclusion") == ("no conclusion", None)


def test_restart_skips_records_already_written(tmp_path):
    records = [_records(10)[i] for i in range(10)]
    part = str(tmp_path / "traces.rank0.jsonl")

    def write(records):
        teach = lambda batch: coldstart.teacher_outputs(batch, None, None, None, 128, 0, 10)  # noqa: E731
        return coldstart.write_traces(records, part, teach, generate_batch=4, min_words=10, min_score=0.5)
    assert write(records[:6]) == 6
    assert write(records) == 4  # a restart continues where the first run stopped
    lines = [json.loads(line) for line in open(part)]
    assert [line["id"] for line in lines] == [r["id"] for r in records]
    assert all(line["kept"] for line in lines)


def test_thinking_switch_reaches_the_chat_template(tiny):
    _, processor = tiny
    record = _records()[0]
    plain = processor.apply_chat_template(prompt_messages(record), tokenize=False, add_generation_prompt=True)
    asked = processor.apply_chat_template(prompt_messages(record, thinking=True), tokenize=False,
                                          add_generation_prompt=True)
    assert asked == plain.replace("<|im_end|>\n<|im_start|>assistant\n",
                                  THINK_SUFFIX + "<|im_end|>\n<|im_start|>assistant\n")
    assert to_messages(record, thinking=True)[0]["content"][1]["text"].endswith(THINK_SUFFIX)


def test_the_replayed_sft_records_follow_sfts_task_mix(tmp_path):
    """coldstart.py --mix replays the records SFT trained on under that mix: with every weight on reports, each
    replayed record (the ones without " /think") is a report; --mix read and not handed to open_records would replay
    classification, anatomy and conversation records too."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    only_reports = ",".join(f"{task}={int(task == 'report')}" for task in synthetic.DEFAULT_MIX)
    subprocess.run([sys.executable, os.path.join(root, "coldstart.py"), "--n_records=30", f"--mix={only_reports}",
                    f"--out_dir={tmp_path}"], check=True, cwd=root, capture_output=True, timeout=300,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    records = [json.loads(line) for line in open(tmp_path / "coldstart.jsonl")]
    replayed = [r for r in records if THINK_SUFFIX not in question(r)]
    assert len(replayed) == 30 and {r["task"] for r in replayed} == {"report"}
