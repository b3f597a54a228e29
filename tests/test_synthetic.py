"""Tests of the synthetic chest X-ray world: determinism, boxes on what was drawn, records, splits, labels."""

import re

import numpy as np
import pytest
from PIL import Image

import synthetic
from records import GROUNDING_TASKS, TASKS, box_is_valid, load_records, parse_boxes, validate_record

SEEDS = range(60)


@pytest.fixture(scope="module")
def studies():
    return [synthetic.generate_study(seed) for seed in SEEDS]


def test_same_seed_same_study_other_seed_other_study():
    a, b, c = synthetic.generate_study(5), synthetic.generate_study(5), synthetic.generate_study(6)
    assert np.array_equal(a["image"], b["image"]) and a["report"] == b["report"] and a["findings"] == b["findings"]
    assert not np.array_equal(a["image"], c["image"])
    assert a["image"].dtype == np.uint8 and a["image"].shape == (128, 128)


@pytest.mark.parametrize("size", [64, 256])
def test_other_sizes(size):
    study = synthetic.generate_study(3, size=size)
    assert study["image"].shape == (size, size)
    assert all(box_is_valid(f["box"]) for f in study["findings"])


def test_boxes_are_valid_and_contain_what_was_drawn(studies):
    n_checked = 0
    for study in studies:
        for name, box in study["anatomy"].items():
            assert box_is_valid(box), (study["seed"], name, box)
        for i, finding in enumerate(study["findings"]):
            box = finding["box"]
            assert box_is_valid(box) and box == [round(v, 2) for v in box], (study["seed"], finding)
            without = synthetic.generate_study(study["seed"], omit=(i,))["image"]
            diff = np.abs(study["image"].astype(np.int16) - without.astype(np.int16))
            assert diff.sum() > 0, f"study {study['seed']}: {finding['name']} is not visible"
            S = diff.shape[0]  # the box, widened by the 1 px of rounding to 2 decimals
            x0, y0 = max(int(box[0] * S) - 1, 0), max(int(box[1] * S) - 1, 0)
            x1, y1 = int(np.ceil(box[2] * S)) + 1, int(np.ceil(box[3] * S)) + 1
            inside = diff[y0:y1, x0:x1].sum() / diff.sum()
            assert inside > 0.97, f"study {study['seed']}: only {inside:.2f} of {finding['name']} inside its box"
            n_checked += 1
    assert n_checked > 40


def test_radiological_convention(studies):
    for study in studies:
        a = study["anatomy"]
        assert a["right lung"][2] < a["left lung"][0]  # the patient's right lung is on the image left
        assert a["heart"][0] + a["heart"][2] > a["right lung"][2] + a["left lung"][0]  # heart leans to the left
        for f in study["findings"]:
            if f["attrs"].get("side") in ("right", "left") and f["name"] != "central venous catheter":
                centre = (f["box"][0] + f["box"][2]) / 2
                assert (centre < 0.5) == (f["attrs"]["side"] == "right"), (study["seed"], f)


# words the reports use for each label; a sentence is negative when it says "no", "without" or "normal"
KEYWORDS = {"Cardiomegaly": ("cardiomegaly", "heart", "cardiac"), "Enlarged Cardiomediastinum": ("mediastinal",),
            "Lung Opacity": ("opacity",), "Lung Lesion": ("nodule", "mass"), "Edema": ("edema",),
            "Consolidation": ("consolidation",), "Pneumonia": ("pneumonia",), "Atelectasis": ("atelectasis",),
            "Pneumothorax": ("pneumothorax",), "Pleural Effusion": ("pleural effusion",), "Fracture": ("fracture",),
            "Support Devices": ("tube", "catheter", "line", "pacemaker")}


def test_labels_match_report_and_findings(studies):
    for study in studies:
        labels, report = study["labels"], study["report"].lower()
        assert set(labels) <= set(synthetic.CHEXPERT_LABELS) and set(labels.values()) <= {0, 1}
        positives = {k for k, v in labels.items() if v == 1} - {"No Finding"}
        assert positives == {synthetic.LABEL_OF[f["name"]] for f in study["findings"]}, study["seed"]
        assert labels.get("No Finding") == (1 if not positives - {"Support Devices"} else None)
        sentences = [s.strip() for s in re.split(r"(?<=\.) ", report)]
        negative = [s for s in sentences if re.search(r"\bno\b|normal|without", s)]
        for label, value in labels.items():
            if label == "No Finding":
                continue
            said = [s for s in (negative if value == 0 else set(sentences) - set(negative))
                    if any(k in s for k in KEYWORDS[label])]
            assert said, f"study {study['seed']}: {label}={value} not said in: {report}"
        for key in ("Pleural Effusion", "Pneumothorax", "Consolidation", "Cardiomegaly"):
            assert key in labels, f"study {study['seed']}: {key} neither reported nor negated"


def test_records_validate_and_boxes_parse_back(studies):
    ids = set()
    seen_tasks = set()
    for study in studies:
        records = synthetic.build_records(study, f"synthetic://train/{study['seed']:08d}", study["seed"])
        normal = not any(f["name"] not in synthetic.DEVICES for f in study["findings"])
        assert ("abnormality_grounding" in {r["task"] for r in records}) != normal
        for record in records:
            validate_record(record)
            assert record["id"] not in ids
            ids.add(record["id"])
            seen_tasks.add(record["task"])
            answers = " ".join(t["value"] for t in record["conversations"] if t["from"] == "gpt")
            if record["task"] in GROUNDING_TASKS:
                assert record["boxes"] and parse_boxes(answers) == record["boxes"], record
            if record["task"] in ("report", "classification"):
                assert record["labels"] == study["labels"]
        classification = next(r for r in records if r["task"] == "classification")["conversations"][1]["value"]
        for label in {k for k, v in study["labels"].items() if v == 1} - {"No Finding"}:
            assert label.lower() in classification
    assert seen_tasks == set(TASKS)


def test_answer_formats():
    study = next(s for s in map(synthetic.generate_study, range(200))
                 if len({f["name"] for f in s["findings"] if f["name"] not in synthetic.DEVICES}) >= 2)
    answers = {}
    for seed in range(30):
        for r in synthetic.build_records(study, "x.png", seed):
            answers.setdefault(r["task"], set()).add(r["conversations"][1]["value"])
    assert any(a.startswith("The following abnormalities are identified: ") for a in answers["classification"])
    assert all(re.fullmatch(r"The [a-z ]+ is located at the coordinates \[.*\] on the image\.", a)
               for a in answers["anatomical_grounding"])
    assert any(a.startswith("There is a") and "; " in a for a in answers["abnormality_grounding"])
    assert all(re.fullmatch(r"This finding is located at \[.*\] in the image\.", a)
               for a in answers["phrase_grounding"])


def test_splits_are_disjoint_and_made_the_same_every_time():
    ranges = [range(synthetic.SPLIT_OFFSET[s], synthetic.SPLIT_OFFSET[s] + synthetic.SPLIT_SIZE)
              for s in ("train", "val", "test")]
    assert all(a.stop <= b.start or b.stop <= a.start for a in ranges for b in ranges if a is not b)
    split = synthetic.SyntheticRecords("test", 6, tasks=["report", "abnormality_grounding"])
    assert len(split) == 6 and {split[i]["task"] for i in range(6)} <= {"report", "abnormality_grounding"}
    for i in range(6):
        record = split[i]
        assert record["study_seed"] in ranges[2] and record["image"].startswith("synthetic://test/")
        assert record["image_array"].dtype == np.uint8 and record["image_array"].shape == (128, 128)
        assert record["conversations"] == split[i]["conversations"]  # made on access, the same every time
        validate_record(record)


def test_main_writes_what_the_training_stages_read(tmp_path, capsys):
    """`python data.py synth` writes the very records SyntheticRecords gives sft.py, with their images."""
    synthetic.main(["--n", "6", "--out", str(tmp_path), "--split", "val"])
    written = load_records(str(tmp_path / "records.jsonl"))
    source = synthetic.SyntheticRecords("val", 6)
    assert [r["conversations"] for r in written] == [source[i]["conversations"] for i in range(6)]
    for i, record in enumerate(written):
        image = np.asarray(Image.open(record["image"]))
        assert np.array_equal(image, source[i]["image_array"])
    assert (tmp_path / "contact_sheet.png").exists()
    assert "records per task" in capsys.readouterr().out


def test_corpus_texts():
    texts = synthetic.corpus_texts(n=5)
    assert "Write a radiology report for this Chest X-ray." in texts
    assert not any("<image>" in t for t in texts) and len(texts) > 30


def test_records_of_any_tasks_come_from_the_first_n_studies_only():
    """A finite training set: SFT's n records and GRPO's prompts of each task (abnormality and phrase grounding apply
    to abnormal studies only) are drawn from the same first n studies, never from studies past them. Guards against
    a task filter that moves a normal study's record to a study outside the training set, and against is_abnormal
    (read off the first random draws, without rendering) disagreeing with the records build_records makes."""
    n = 120
    everything = synthetic.SyntheticRecords("train", n)
    assert [r["study_seed"] for r in everything] == list(range(n))
    for task in synthetic.NEEDS_ABNORMALITY:
        pool = synthetic.SyntheticRecords("train", n, tasks=(task,))
        seeds = [r["study_seed"] for r in pool]
        assert all(r["task"] == task for r in pool) and seeds == sorted(set(seeds)) and max(seeds) < n
        applies = [s for s in range(n) if synthetic.build_records(synthetic.generate_study(s), "x", s, [task])]
        assert seeds == applies and 0.5 * n < len(pool) < 0.9 * n


def test_a_task_mix_weighs_the_studies_tasks_and_bad_ones_are_named(tmp_path):
    """--mix reaches the records through data.open_records: "abnormality_grounding=0.45" gives 400 studies more than
    twice the abnormality records of the default weights, the same studies (a mix parsed and then dropped fails it).
    A misspelt task, a weight that is no number or below 0 are named; a file's records take no mix."""
    from data import open_records
    heavy = open_records("synthetic", "train", 400, mix="abnormality_grounding=0.45,report=0.2")
    default = open_records("synthetic", "train", 400)
    count = lambda records: sum(records[i]["task"] == "abnormality_grounding" for i in range(len(records)))
    assert count(heavy) > 2 * count(default) > 0 and heavy.studies == default.studies
    assert synthetic.parse_mix("") == synthetic.DEFAULT_MIX
    nothing = ",".join(f"{task}=0" for task in synthetic.DEFAULT_MIX)
    for bad in ("abnormality=0.4", "report=x", "report=-1", "report", nothing):
        with pytest.raises(ValueError, match="mix"):
            synthetic.parse_mix(bad)
    path = tmp_path / "records.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match="synthetic world"):
        open_records(str(path), mix="report=1")
