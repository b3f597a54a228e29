"""Rewards: the paper's examples, the Hungarian assignment against brute force, the labeler, reward hacking,
RadCliQ's arithmetic, BERTScore against the bert-score package, and the GRPO entry point."""
import itertools
import math
import random

import pytest

import rewards
from rewards import (bleu4, box_iou, classification_reward, extract_labels, final_answer, gleu, grounding_reward,
                     label_f1, min_cost_assignment, radcliq_v1, score)

GOLD_BOX = "The finding is located at the coordinates [0.2, 0.2, 0.6, 0.6] on the image."
PRED_BOX = "The finding is located at the coordinates [0.2, 0.2, 0.64, 0.81] on the image."  # IoU 0.596 with gold
FAR_BOX = "[0.8, 0.8, 0.95, 0.95]"

# ----------------------------------------------------------------------------------------------------------
# Grounding


def test_paper_grounding_examples():
    assert box_iou([0.2, 0.2, 0.64, 0.81], [0.2, 0.2, 0.6, 0.6]) == pytest.approx(0.596, abs=5e-4)
    assert grounding_reward(PRED_BOX, GOLD_BOX) == pytest.approx(0.747, abs=5e-4)  # P = 1, R = 0.596
    assert grounding_reward(PRED_BOX + " and " + FAR_BOX, GOLD_BOX) == pytest.approx(0.459, abs=5e-4)
    assert grounding_reward(GOLD_BOX, GOLD_BOX) == 1.0


def test_assignment_matches_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        n, m = rng.randint(1, 5), rng.randint(1, 5)
        cost = [[rng.choice([rng.random(), 1.0, 0.0, 0.5]) for _ in range(m)] for _ in range(n)]  # ties included
        pairs = min_cost_assignment(cost)
        assert len(pairs) == min(n, m)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        if n <= m:
            best = min(sum(cost[i][cols[i]] for i in range(n)) for cols in itertools.permutations(range(m), n))
        else:
            best = min(sum(cost[rows[j]][j] for j in range(m)) for rows in itertools.permutations(range(n), m))
        assert sum(cost[i][j] for i, j in pairs) == pytest.approx(best, abs=1e-12)
    assert min_cost_assignment([]) == [] and min_cost_assignment([[]]) == []


def test_grounding_matches_one_to_one():
    gold = "[0.1, 0.1, 0.3, 0.3] and [0.6, 0.6, 0.9, 0.9]"
    assert grounding_reward("[0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.3, 0.3]", gold) == 1.0  # order does not matter
    # two copies of one gold box: only one can match, the other is a false positive
    twice = grounding_reward("[0.1, 0.1, 0.3, 0.3] and [0.1, 0.1, 0.3, 0.3]", gold)
    assert twice == pytest.approx(2 * 0.5 * 0.5 / (0.5 + 0.5))


def test_grounding_hit_is_one_only_when_every_box_is_hit_once_and_none_is_extra():
    gold = "[0.1, 0.1, 0.3, 0.3] and [0.6, 0.6, 0.9, 0.9]"
    assert rewards.grounding_hit("[0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.3, 0.3]", gold) == 1.0  # order does not matter
    assert rewards.grounding_hit(PRED_BOX, GOLD_BOX) == 1.0  # IoU 0.596 >= 0.5
    assert rewards.grounding_hit("[0.2, 0.2, 0.6, 0.9]", GOLD_BOX) == 1.0  # IoU 0.571
    assert rewards.grounding_hit("[0.2, 0.2, 0.8, 0.8]", GOLD_BOX) == 0.0  # IoU 0.444: overlaps, but a miss
    assert rewards.grounding_hit("[0.1, 0.1, 0.3, 0.3] and [0.1, 0.1, 0.3, 0.3]", gold) == 0.0  # one box twice
    assert rewards.grounding_hit("[0.1, 0.1, 0.3, 0.3]", gold) == 0.0  # a gold box missed
    assert rewards.grounding_hit(f"{GOLD_BOX} and {FAR_BOX}", GOLD_BOX) == 0.0  # a box extra
    assert rewards.grounding_hit("", GOLD_BOX) == 0.0 and rewards.grounding_hit(GOLD_BOX, "no box") == 0.0
    scored, _ = score("grounding", [PRED_BOX, FAR_BOX], [GOLD_BOX] * 2, grounding="hit")
    assert scored == [1.0, 0.0] and score("grounding", [PRED_BOX], [GOLD_BOX])[0][0] == pytest.approx(0.747, abs=5e-4)
    with pytest.raises(ValueError, match="unknown grounding reward"):
        score("grounding", [PRED_BOX], [GOLD_BOX], grounding="iou")


@pytest.mark.parametrize("completion", [
    "", "no boxes here", "[0.1, 0.2, 0.3]", "[nan, 0.1, 0.2, 0.3]", "[inf, 0, 1, 1]", "[1e308, 1e308, 1e309, 1e309]",
    "[-1e308, -1e308, 1e308, 1e308]", "[0.5, 0.5, 0.2, 0.2]", "[0.3, 0.3, 0.3, 0.3]", "[[[[",
    "[0.1, 0.1, 0.3, 0.3" * 50,
    "[-5, -5, 5, 5]", "[a, b, c, d]", "[1e-300, 1e-300, 2e-300, 2e-300]", "[ +0.2 , 2E-1, .6, 6e-1 ]",
])
def test_grounding_never_crashes_and_stays_in_range(completion):
    assert 0.0 <= grounding_reward(completion, GOLD_BOX) <= 1.0
    assert 0.0 <= grounding_reward(GOLD_BOX, completion) <= 1.0


def test_grounding_hacks_score_below_a_correct_answer():
    correct = grounding_reward(PRED_BOX, GOLD_BOX)
    grid = ", ".join(f"[{x / 10}, {y / 10}, {x / 10 + 0.2}, {y / 10 + 0.2}]" for x in range(8) for y in range(7))[:2000]
    hacks = {
        "empty": "", "one word": "Left.", "repeated tokens": "[0.2, " * 2000, "50 boxes": grid,
        "50 copies of the right box": ", ".join(["[0.2, 0.2, 0.64, 0.81]"] * 50),
        "whole image": "[0.0, 0.0, 1.0, 1.0]", "outside [0, 1]": "[-1.0, -1.0, 2.0, 2.0]",
        "inverted": "[0.64, 0.81, 0.2, 0.2]",
    }
    for name, completion in hacks.items():
        assert grounding_reward(completion, GOLD_BOX) < correct, name


def test_thinking_scores_only_the_final_answer():
    assert final_answer("<think>a</think>b</think>c", thinking=True) == "c"
    assert final_answer("<think>no end", thinking=True) == ""
    assert final_answer("<think>x</think>y", thinking=False) == "<think>x</think>y"
    thought = "<think>[0, 0, 1, 1]</think>" + PRED_BOX
    assert grounding_reward(thought, GOLD_BOX, thinking=True) == pytest.approx(0.7469, abs=1e-4)
    assert grounding_reward("<think>" + GOLD_BOX, GOLD_BOX, thinking=True) == 0.0  # no </think>: the floor
    report = "Moderate cardiomegaly."
    assert label_f1("<think>No cardiomegaly.</think> " + report, report, thinking=True) == 1.0
    assert label_f1("<think>" + report, report, thinking=True) == 0.0
    assert score("report", ["<think>" + report], [report], reward="radcliq", thinking=True)[0] == [-3.0]


# ----------------------------------------------------------------------------------------------------------
# Report labeler

@pytest.mark.parametrize("report, expected", [
    ("The heart size is normal.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("No pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0, "No Finding": 1}),
    ("Moderate cardiomegaly.", {"Cardiomegaly": 1}),
    ("Small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Right lower lobe consolidation.", {"Consolidation": 1}),
    ("Endotracheal tube terminates 4 cm above the carina.", {"Support Devices": 1}),
    ("Mild pulmonary edema.", {"Edema": 1}),
    ("Plate-like atelectasis at the left base.", {"Atelectasis": 1}),
    ("A 2 cm nodule in the right upper lobe.", {"Lung Lesion": 1}),
    ("Right apical pneumothorax.", {"Pneumothorax": 1}),
    ("Heart size and mediastinal contours are normal.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0,
                                                         "No Finding": 1}),
    ("The lungs are clear without focal consolidation, effusion or pneumothorax.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0, "No Finding": 1}),
    ("Lungs are free of consolidation.", {"Consolidation": 0, "No Finding": 1}),
    ("The previously seen pneumothorax has resolved.", {"Pneumothorax": 0, "No Finding": 1}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": -1}),
    ("Left basilar opacity may represent atelectasis.", {"Lung Opacity": -1, "Atelectasis": -1}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
    ("Atelectasis versus pneumonia.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("No change in the small left pleural effusion.", {"Pleural Effusion": 1}),  # "no change" is no negation
    ("No effusion, but there is a small pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 1}),
    ("Cardiomegaly without pulmonary edema.", {"Cardiomegaly": 1, "Edema": 0}),
    ("Small left pleural effusion. No right pleural effusion.", {"Pleural Effusion": 1}),
    ("Normal chest.", {"No Finding": 1}),
    ("Degenerative changes of the spine.", {}),
    ("", {}),
])
def test_extract_labels(report, expected):
    assert extract_labels(report) == expected


def test_extract_labels_returns_a_copy():
    extract_labels("Moderate cardiomegaly.")["Cardiomegaly"] = 0
    assert extract_labels("Moderate cardiomegaly.") == {"Cardiomegaly": 1}


# ----------------------------------------------------------------------------------------------------------
# Offline report reward and its resistance to hacking

EFFUSION_REPORT = "The heart size is normal. Small left pleural effusion. No pneumothorax."
NORMAL_REPORT = "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax."
EVERYTHING = ("Cardiomegaly. Widened mediastinum. Lung opacity. Lung nodule. Pulmonary edema. Consolidation. "
              "Pneumonia. Atelectasis. Pneumothorax. Pleural effusion. Pleural thickening. Rib fracture. "
              "Endotracheal tube.")
DEGENERATE = {
    "empty": "", "whitespace": "  \n ", "one word": "Effusion.", "repeated token": "effusion " * 2000,
    "repeated sentence": "Small left pleural effusion. " * 300, "every finding": EVERYTHING,
    "contradiction": "There is a pleural effusion. No pleural effusion.",
    "contradicting everything": EVERYTHING + " " + "No " + EVERYTHING.lower().replace(". ", ". No "),
    "hedging everything": "Possible " + EVERYTHING.lower().replace(". ", ". Possible "),
    "noise": "asdf qwer zxcv " * 20, "brackets": "[" * 3000, "unicode": "\u00e9\u4e2d\U0001f600 " * 500,
}


def test_label_f1_scores_correct_reports():
    assert label_f1(EFFUSION_REPORT, EFFUSION_REPORT) == 1.0
    # the right finding without the reference's negations ("No pneumothorax", normal heart) gets 0.75 only
    assert label_f1("Left pleural effusion is present.", EFFUSION_REPORT) == 0.75
    assert label_f1("Left pleural effusion. No pneumothorax. Normal heart size.", EFFUSION_REPORT) == 1.0
    assert label_f1("No acute cardiopulmonary process.", NORMAL_REPORT) == 0.75  # normal, negations unsaid
    assert label_f1("No acute process. Normal heart size. No pneumothorax or effusion.", NORMAL_REPORT) == 1.0
    # positives: P 1/2, R 1 -> 2/3; negatives: "No pneumothorax" only -> P 1 (1/1), R 1/2 -> 2/3
    assert label_f1("Small left pleural effusion. Moderate cardiomegaly. No pneumothorax.",
                    EFFUSION_REPORT) == pytest.approx(0.75 * 2 / 3 + 0.25 * 2 / 3)
    assert label_f1("Moderate cardiomegaly.", EFFUSION_REPORT) == 0.0
    assert label_f1("Normal study.", EFFUSION_REPORT) == 0.0
    assert label_f1("Small left pleural effusion.", NORMAL_REPORT) == 0.0
    assert label_f1("Degenerative changes of the spine.", "Mild scoliosis.") == 1.0  # neither states a finding


@pytest.mark.parametrize("reference", [EFFUSION_REPORT, NORMAL_REPORT])
@pytest.mark.parametrize("name", list(DEGENERATE))
def test_label_f1_resists_hacking(name, reference):
    hacked = label_f1(DEGENERATE[name], reference)
    assert 0.0 <= hacked <= 1.0
    assert hacked < label_f1(reference, reference), name  # "Effusion." too: it leaves the negations unsaid
    if name in ("empty", "whitespace", "repeated token", "repeated sentence", "contradiction", "noise"):
        assert hacked == 0.0, name


def test_label_f1_contradiction_needs_the_same_side():
    report = "Small left pleural effusion. No right pleural effusion. No pneumothorax. Normal heart size."
    assert label_f1(report, EFFUSION_REPORT) == 1.0
    assert label_f1("Small left pleural effusion. No left pleural effusion.", EFFUSION_REPORT) == 0.0


def test_classification_reward():
    gold = "The following abnormalities are identified: cardiomegaly, edema and pleural effusion."
    normal = "No abnormalities are identified on this chest X-ray."
    assert classification_reward(gold, gold) == 1.0
    assert classification_reward("The following abnormalities are identified: edema and cardiomegaly.", gold) == 0.8
    assert classification_reward(normal, normal) == 1.0
    assert classification_reward("The following abnormalities are identified: edema.", normal) == 0.0
    listing = "The following abnormalities are identified: " + ", ".join(
        ["cardiomegaly", "edema", "pleural effusion", "pneumothorax", "atelectasis", "consolidation", "fracture",
         "lung opacity", "lung lesion", "pneumonia", "pleural other", "support devices"]) + "."
    for hack in ["", "cardiomegaly", listing, "::::", "Normal. " * 1000, "edema: " * 500]:
        assert classification_reward(hack, gold) < 1.0
    assert classification_reward(gold[:-1] + ", edema, edema, edema.", gold) == 1.0  # repeating a name gains nothing
    assert classification_reward("", normal) == 0.0


# ----------------------------------------------------------------------------------------------------------
# N-gram rewards and RadCliQ

def test_bleu4_and_gleu():
    text = "small left pleural effusion and mild cardiomegaly"
    assert bleu4(text, text) == pytest.approx(1.0) and gleu(text, text) == pytest.approx(1.0)
    assert bleu4("", text) == 0.0 and gleu("", text) == 0.0 and gleu("", "") == 0.0
    assert bleu4("no acute process", text) == 0.0 and gleu("no acute process", text) == 0.0
    # hand count: hyp "a b c d" vs ref "a b c e": 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1
    assert gleu("a b c d", "a b c e") == pytest.approx((3 + 2 + 1) / (4 + 3 + 2 + 1))
    assert bleu4("a b c d e", "a b c d f") == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    assert bleu4("a b c d", "a b c d e f g h") == pytest.approx(math.exp(1 - 8 / 4))  # brevity penalty


def test_radcliq_v1_by_hand():
    # the published RadCliQ-v1: standardized features (mean, scale) times coefficients, intercept ~0
    features = dict(radgraph=0.25, bertscore=0.5, semb=0.6, bleu=0.3)
    by_hand = (-0.377083683 * (0.25 - 0.53792312) / 0.30282584 - 0.370300100 * (0.5 - 0.61757256) / 0.22430938
               - 0.252616218 * (0.6 - 0.76479421) / 0.25394391 + 4.31504841e-12 * (0.3 - 0.44738335) / 0.29892717
               + 2.46655256e-10)
    assert radcliq_v1(**features) == pytest.approx(by_hand, abs=1e-12)
    assert by_hand == pytest.approx(0.358 + 0.194 + 0.164, abs=2e-3)  # the same from the paper's rounded table
    assert radcliq_v1(0.53792312, 0.61757256, 0.76479421, 0.44738335) == pytest.approx(0.0, abs=1e-9)


def test_ngram_rewards_equal_nltk():
    from nltk.translate import bleu_score, gleu_score as nltk  # requirements-test.txt: no skipping without it
    rng = random.Random(0)
    words = "the heart size is normal no pleural effusion small left right mild edema".split()
    for _ in range(50):
        hyp, ref = (" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(2))
        assert gleu(hyp, ref) == pytest.approx(nltk.sentence_gleu([ref.split()], hyp.split()))
        assert bleu4(hyp, ref) == pytest.approx(bleu_score.sentence_bleu([ref.split()], hyp.split()))


# ----------------------------------------------------------------------------------------------------------
# The GRPO entry point

def test_score_dispatches_by_task():
    boxes = [PRED_BOX, GOLD_BOX]
    for task in ("grounding", "anatomical_grounding", "abnormality_grounding", "phrase_grounding"):
        values, parts = score(task, boxes, [GOLD_BOX, GOLD_BOX])
        assert values == [pytest.approx(0.7469, abs=1e-4), 1.0] and parts["n_boxes"] == [1.0, 1.0]
    values, parts = score("report", [EFFUSION_REPORT, ""], [EFFUSION_REPORT, EFFUSION_REPORT])
    assert values == [1.0, 0.0] and parts["label_f1"] == values and parts["n_findings"] == [1.0, 0.0]
    assert score("report", ["a b c d"], ["a b c e"], reward="gleu")[0] == [pytest.approx(0.6)]
    gold = "The following abnormalities are identified: edema."
    assert score("classification", [gold], [gold]) == ([1.0], {"classification": [1.0]})
    # a mixed batch: one call, each completion scored by its own task, nan where a component does not apply
    values, parts = score(["report", "phrase_grounding", "classification"], [EFFUSION_REPORT, PRED_BOX, gold],
                          [EFFUSION_REPORT, GOLD_BOX, gold])
    assert values == [1.0, pytest.approx(0.7469, abs=1e-4), 1.0]
    assert parts["label_f1"][0] == 1.0 and math.isnan(parts["label_f1"][1]) and math.isnan(parts["grounding"][2])
    with pytest.raises(ValueError, match="conversation"):
        score("conversation", ["hi"], ["hello"])
    with pytest.raises(ValueError, match="unknown report reward"):
        score("report", ["a"], ["b"], reward="rouge")
    with pytest.raises(ValueError, match="must match"):
        score("report", ["a", "b"], ["c"])


def test_positive_f1_sees_only_the_findings_stated_present():
    """The partial reward of the Table 3 miniature: dropping every negation costs label_f1 but not positive_f1."""
    reference = "Small left pleural effusion. No pneumothorax. The heart size is normal. No focal consolidation."
    terse = "Small left pleural effusion."
    assert rewards.positive_f1(terse, reference) == 1.0 and rewards.label_f1(terse, reference) == 0.75
    assert rewards.positive_f1(reference, reference) == rewards.label_f1(reference, reference) == 1.0
    assert rewards.positive_f1("Mild cardiomegaly.", reference) == 0.0
    assert score("report", [terse], [reference], reward="positive_f1")[0] == [1.0]
