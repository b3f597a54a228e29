"""verdicts.py on hand-made evaluations whose answers have known rewards: the paired interval, the verdict rule,
seeds paired seed by seed, the fraction of the gap closed, and Table 3's diagonal and answer lengths."""
import json
import os
import random

import pytest

import evaluate
import verdicts
from records import format_boxes

REFERENCE = ("The heart is enlarged. There is a small left pleural effusion. No pneumothorax. "
             "The lungs are otherwise clear.")
SHORT = "Cardiomegaly. Left pleural effusion."  # every positive finding, almost none of the wording
REWORDED = REFERENCE.replace("enlarged", "normal in size")  # the wording, a finding missed
NOTHING = "No acute findings."
GOLD = format_boxes([[0.1, 0.1, 0.5, 0.5]])
MISS = format_boxes([[0.6, 0.6, 0.9, 0.9]])
CLASSES = "The following abnormalities are identified: cardiomegaly, pleural effusion."


def write_eval(folder, reports=(), boxes=(), thinking=False, classes=()):
    """An evaluation folder as evaluate.py writes it: report answers against REFERENCE, grounding answers against
    GOLD, classification answers against CLASSES, scored by evaluate.score into results.json."""
    os.makedirs(folder)
    golds = ([("report", REFERENCE)] * len(reports) + [("anatomical_grounding", GOLD)] * len(boxes)
             + [("classification", CLASSES)] * len(classes))
    records = [{"task": task, "conversations": [{"from": "human", "value": "<image>\nq"},
                                                {"from": "gpt", "value": gold}]} for task, gold in golds]
    results = evaluate.score(records, [*reports, *boxes, *classes], thinking, n_boot=0)
    json.dump({**results, "settings": {"thinking": thinking}}, open(os.path.join(folder, "results.json"), "w"))
    with open(os.path.join(folder, "predictions.jsonl"), "w") as f:
        for i, answer in enumerate(reports):
            f.write(json.dumps({"id": f"r{i}", "task": "report", "answer": answer, "reference": REFERENCE}) + "\n")
        for i, answer in enumerate(boxes):
            f.write(json.dumps({"id": f"g{i}", "task": "anatomical_grounding", "answer": answer,
                                "reference": GOLD}) + "\n")
        for i, answer in enumerate(classes):
            f.write(json.dumps({"id": f"c{i}", "task": "classification", "answer": answer,
                                "reference": CLASSES}) + "\n")


def test_paired_difference_and_verdict():
    mean, lo, hi, n = verdicts.paired({i: 0.0 for i in range(5)}, {i: 0.5 for i in range(5)})
    assert (mean, lo, hi, n) == (0.5, 0.5, 0.5, 5)
    mean, lo, hi, n = verdicts.paired({0: 0.0, 1: 1.0, 2: 0.0}, {1: 0.0, 2: 1.0, 3: 1.0})  # records both scored
    assert (mean, n) == (0.0, 2) and lo == -1.0 and hi == 1.0
    assert verdicts.verdict([(0.2, 0.1, 0.3, 9), (0.1, 0.01, 0.2, 9)]) == "yes"
    assert verdicts.verdict([(-0.2, -0.3, -0.1, 9)]) == "no"
    assert verdicts.verdict([(0.2, 0.1, 0.3, 9), (0.1, -0.01, 0.2, 9)]) == "not resolved (1 of 2 comparisons above 0)"


def test_thinking_answers_are_scored_after_the_last_think(tmp_path):
    write_eval(tmp_path / "e", reports=[f"<think>{NOTHING}</think>{REFERENCE}", REFERENCE],
               boxes=[f"<think>{MISS}</think>{GOLD}", "no think"], thinking=True)
    assert verdicts.per_record(str(tmp_path / "e"), "report") == {"r0": 1.0, "r1": 0.0}
    assert verdicts.per_record(str(tmp_path / "e"), "grounding") == {"g0": 1.0, "g1": 0.0}
    assert verdicts.answer_chars(str(tmp_path / "e")) == len(REFERENCE) / 2


def test_claim_combines_the_seeds_by_a_crossed_bootstrap(tmp_path, capsys):
    """Seeds pair seed by seed and each seed's mean is printed; the verdict is the interval over seeds and records.
    With a third seed that gains nothing (means +1, +0.5, 0) every draw of three times that seed gives 0, 1 in 27 of
    the draws: above 2.5 %, so the interval reaches 0 and the claim is not resolved, where an interval over the
    records alone (the seeds' spread left out) would say yes."""
    write_eval(tmp_path / "eval_sft", reports=[NOTHING] * 8)
    write_eval(tmp_path / "eval_sft_rl_s0", reports=[REFERENCE] * 8)
    write_eval(tmp_path / "eval_sft_rl_s1", reports=[REFERENCE] * 4 + [NOTHING] * 4)
    verdicts.claim("RL helps", str(tmp_path), "eval_sft", "eval_sft_rl", "report")
    line, five = capsys.readouterr().out.splitlines()
    assert "(eval_sft_rl - eval_sft, 8 records, 2 seed(s)): +1.000, +0.500; +0.750 [" in line
    assert line.endswith("-> yes")
    # the findings pooled over the reports: none stated, then both of REFERENCE's in all 8, then in 4 of 8
    assert five == "  five-finding F1 micro, eval_sft -> eval_sft_rl: 0.0 -> 100.0; 0.0 -> 66.7"
    write_eval(tmp_path / "eval_sft_rl_s2", reports=[NOTHING] * 8)
    verdicts.claim("RL helps", str(tmp_path), "eval_sft", "eval_sft_rl", "report")
    line = capsys.readouterr().out.splitlines()[0]
    assert "+1.000, +0.500, +0.000; +0.500 [+0.000, " in line and line.endswith("-> not resolved")


def test_over_seeds_resamples_the_same_records_for_every_seed():
    """Two seeds that answered every record alike carry no more information than one: resampling the records
    together for both keeps the interval as wide as one seed's, where drawing each seed's records on their own would
    narrow it by about 1 / sqrt(2) (as if the seeds were independent looks at other records)."""
    rng = random.Random(0)
    a = {f"r{i}": 0.0 for i in range(300)}
    b = {i: float(rng.random() < 0.5) for i in a}
    one = verdicts.over_seeds([(a, b)])
    two = verdicts.over_seeds([(a, b), (a, b)])
    assert two[0] == one[0] and two[4] == [one[0]] * 2
    assert (two[2] - two[1]) > 0.9 * (one[2] - one[1])


def test_the_sft_model_sees_when_it_beats_the_blind_answers_on_each_task(tmp_path, capsys):
    """The claim "the SFT model sees" pairs eval_sft with eval_blind (evaluate.py --blind=True) on each task,
    classification included (F1 of the listed abnormalities, record by record)."""
    write_eval(tmp_path / "eval_blind", reports=[NOTHING] * 8, boxes=[MISS] * 8, classes=[NOTHING] * 8)
    write_eval(tmp_path / "eval_sft", reports=[REFERENCE] * 8, boxes=[GOLD] * 8, classes=[CLASSES] * 4 + [NOTHING] * 4)
    assert verdicts.per_record(str(tmp_path / "eval_sft"), "classification") == {
        **{f"c{i}": 1.0 for i in range(4)}, **{f"c{i}": 0.0 for i in range(4, 8)}}
    for kind in ("report", "grounding", "classification"):
        verdicts.claim(f"sees on {kind}", str(tmp_path), "eval_blind", "eval_sft", kind)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("- sees")]
    means = [line.split("): ")[1].split(" [")[0] for line in lines]
    assert means == ["+1.000; +1.000", "+1.000; +1.000", "+0.500; +0.500"]
    assert all(line.endswith("-> yes") for line in lines)


def test_the_bar_for_seeing_needs_each_margin_not_only_a_difference(tmp_path, capsys):
    """SEES_BAR: the SFT model states both findings of every report (five-finding F1 100), classifies 4 of 8 records
    (F1 micro 57.1 points over the blind answer's 0: the other 4 say "no finding") and finds every abnormality box,
    but gains only 0.125 on phrase grounding (1 of 8 boxes right): one margin short, so "no"; with 2 of 8 (+0.25)
    "yes". A bar checked on the pooled grounding reward, or on any single margin, passes the first."""
    def grounding(out, folder, task, answers):
        with open(out / folder / "predictions.jsonl", "a") as f:
            for i, answer in enumerate(answers):
                f.write(json.dumps({"id": f"{task}{i}", "task": task, "answer": answer, "reference": GOLD}) + "\n")

    for phrases_right in (1, 2):
        out = tmp_path / f"right{phrases_right}"
        write_eval(out / "eval_blind", reports=[NOTHING] * 8, classes=[NOTHING] * 8)
        write_eval(out / "eval_sft", reports=[REFERENCE] * 8, classes=[CLASSES] * 4 + [NOTHING] * 4)
        for task in ("abnormality_grounding", "phrase_grounding"):
            grounding(out, "eval_blind", task, [MISS] * 8)
        grounding(out, "eval_sft", "abnormality_grounding", [GOLD] * 8)
        grounding(out, "eval_sft", "phrase_grounding", [GOLD] * phrases_right + [MISS] * (8 - phrases_right))
        verdicts.sees_by_the_bar(str(out))
    one, two = capsys.readouterr().out.strip().splitlines()
    assert "five-finding F1 micro 100 (at least 40: met)" in one
    assert "abnormality grounding reward above the blind box 1 (at least 0.15: met)" in one
    assert "phrase grounding reward above the blind box 0.125 (at least 0.15: not met)" in one
    assert "classification F1 micro above the blind answer 57.1 (at least 20: met)" in one and one.endswith("-> no")
    assert "phrase grounding reward above the blind box 0.25 (at least 0.15: met)" in two and two.endswith("-> yes")


def test_power_gives_the_records_and_n_test_that_resolve_002(tmp_path, capsys):
    """Differences 1, 1, 1, 1, 0, 0, 0, 0 over 8 report records: sd 0.5345 (n - 1 in the variance), so
    (2.8 x 0.5345 / 0.02)^2 = 5600 records; the run had 8 report records of n_test = 20 studies, so N_TEST 14000.
    Two seeds alike pool to the same sd. An sd over n, or the N_TEST not scaled by the task's share, fails it."""
    write_eval(tmp_path / "eval_sft", reports=[NOTHING] * 8)
    for s in (0, 1):
        write_eval(tmp_path / f"eval_sft_rl_s{s}", reports=[REFERENCE] * 4 + [NOTHING] * 4)
        results = json.load(open(tmp_path / f"eval_sft_rl_s{s}" / "results.json"))
        results["settings"]["n_test"] = 20
        json.dump(results, open(tmp_path / f"eval_sft_rl_s{s}" / "results.json", "w"))
    verdicts.power(str(tmp_path))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| eval_sft_rl - eval_sft ")]
    assert rows == ["| eval_sft_rl - eval_sft | report | 8 | +0.500 | 0.535 | 5600 | 14000 |"]


def test_gap_closed(tmp_path, capsys):
    """The general model scores 0, SFT 1 on every record; RL on the general model gets 30 of 40 grounding records
    and 10 of 40 reports right: it closes 75 % of the gap on grounding, 25 % on reports."""
    write_eval(tmp_path / "eval_general", reports=[NOTHING] * 40, boxes=[MISS] * 40)
    write_eval(tmp_path / "eval_sft", reports=[REFERENCE] * 40, boxes=[GOLD] * 40)
    write_eval(tmp_path / "eval_general_rl_s0", reports=[REFERENCE] * 10 + [NOTHING] * 30,
               boxes=[GOLD] * 30 + [MISS] * 10)
    verdicts.gap_closed(str(tmp_path))
    line = capsys.readouterr().out
    assert ("grounding / reports: 75% / 25%; grounding minus reports over 1 seed(s) and 40 grounding / 40 report "
            "records: +0.50 [") in line
    assert line.strip().endswith("-> yes")


def test_table3_diagonal_and_lengths(tmp_path, capsys):
    write_eval(tmp_path / "eval_sft", reports=[NOTHING] * 6)
    write_eval(tmp_path / "eval_table3_positive_f1", reports=[SHORT] * 6)
    write_eval(tmp_path / "eval_table3_bleu4", reports=[REWORDED] * 6)
    verdicts.table3(str(tmp_path))
    out = capsys.readouterr().out
    assert "| reward | bleu4 | positive_f1 | ANC |" in out
    assert f"| (the SFT model, mean) | 0.000 | 0.000 | {len(NOTHING)} |" in out
    assert f"| positive_f1 | +0.037 [+0.037, +0.037] | +1.000 [+1.000, +1.000] | {len(SHORT)} |" in out
    assert "RL with bleu4 raises bleu4 more than RL with any other reward (6 records): vs positive_f1 +0.757" in out
    assert out.count("-> yes") == 2
    write_eval(tmp_path / "eval_table3_gleu", reports=[REWORDED] * 6)  # bleu4's answers: no longer alone on top
    verdicts.table3(str(tmp_path))
    out = capsys.readouterr().out
    assert "RL with bleu4 raises bleu4 more than RL with any other reward" in out
    assert out.count("-> yes") == 1 and "not resolved (1 of 2 comparisons above 0)" in out


@pytest.mark.parametrize("kind", ["report", "grounding"])
def test_per_record_is_the_training_reward(tmp_path, kind):
    import rewards
    write_eval(tmp_path / "e", reports=[SHORT, REWORDED, NOTHING], boxes=[GOLD, MISS, GOLD + " " + MISS])
    scores = verdicts.per_record(str(tmp_path / "e"), kind)
    if kind == "report":
        assert scores == {f"r{i}": rewards.label_f1(a, REFERENCE) for i, a in enumerate([SHORT, REWORDED, NOTHING])}
    else:
        assert scores == {f"g{i}": rewards.grounding_reward(a, GOLD) for i, a in enumerate([GOLD, MISS, GOLD + " " +
                                                                                          MISS])}


def test_answers_bench_counts_templates_and_traces(tmp_path):
    """bench/answers.py on an evaluation whose answers repeat: distinct answers, distinct traces before them, reports
    stating no finding against gold reports that state some, the most common opening."""
    import subprocess
    import sys
    write_eval(tmp_path / "e", reports=[f"<think>A</think>{NOTHING}", f"<think>B</think>{NOTHING}",
                                        f"<think>C</think>{REFERENCE}", "<think>D</think>Possible pneumonia."],
               boxes=[f"<think>A</think>{GOLD}"], thinking=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "bench", "answers.py"), str(tmp_path / "e")],
                         capture_output=True, text=True, check=True).stdout
    assert f"| e | report | 4 | 3 | 4 | 2 (0) | {NOTHING!r} (2) |" in out  # "possible" states a finding
    assert "| e | anatomical_grounding | 1 | 1 | 1 | - |" in out


def test_saturation_is_the_best_validation_before_the_end(tmp_path, capsys):
    """SFT's curve from its log: saturated when both the best mean val reward and the lowest val_loss come before
    the last evaluation; a curve still improving at its end is not. Guards against picking the best by the last
    evaluation, or by one task's reward alone."""
    def log(rows):
        path = tmp_path / "log.jsonl"
        path.write_text("".join(json.dumps({"step": s, "val_loss": loss, "val_reward_report": r,
                                            "val_reward_grounding": g}) + "\n" for s, loss, r, g in rows)
                        + json.dumps({"step": 99, "loss": 0.1}) + "\n")
        return str(path)
    verdicts.saturated(log([(0, 6.0, 0.0, 0.0), (50, 1.0, 0.5, 0.6), (100, 1.2, 0.6, 0.4)]))
    out = capsys.readouterr().out
    assert "at step 50 of 100" in out and "-> yes" in out and "(best)" in out
    verdicts.saturated(log([(0, 6.0, 0.0, 0.0), (50, 1.0, 0.5, 0.6), (100, 0.9, 0.6, 0.6)]))
    assert "-> no" in capsys.readouterr().out


def test_skills_kept_compares_the_thinking_model_with_sft_on_the_same_measures(tmp_path, capsys):
    """The thinking model keeps 80 % of SFT's grounding mAP and label F1 or it does not; each measure on its own.
    Guards against comparing a thinking model's raw outputs (with their traces) instead of its answers."""
    answer = "Cardiomegaly. There is a small left pleural effusion. Pneumothorax."  # a finding not of the five
    write_eval(tmp_path / "eval_sft", reports=[REFERENCE] * 4, boxes=[GOLD] * 4)
    write_eval(tmp_path / "eval_thinking", reports=[f"<think>{NOTHING}</think>{answer}"] * 4,
               boxes=[f"<think>look</think>{GOLD}"] * 3 + [f"<think>look</think>{MISS}"], thinking=True)
    verdicts.skills_kept(str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert "75%" in out[0] and out[0].endswith("-> no (80 % or more)")
    assert "label F1" in out[1] and "80%" in out[1] and "-> yes" in out[1]
    assert "five-finding F1" in out[2] and "100%" in out[2] and "-> yes" in out[2]


def test_tune_chooses_each_kinds_rate_by_its_validation_answers_on_both_tasks(tmp_path, capsys):
    """Each kind (grpo, control) gets the rate whose seed-0 run answers the validation records best, by the mean of
    its report and grounding rewards: never mixing kinds, never a seed other than 0, never one task alone, and never
    the training log's 64-prompt validation reward (which here ranks the rates the other way)."""
    for name, reports, boxes in (("val_sft", [REWORDED] * 2, [GOLD, MISS]),
                                 ("val_grpo_sft_lr2e-5_s0", [REFERENCE, REWORDED], [GOLD, MISS]),
                                 ("val_grpo_sft_lr5e-5_s0", [REFERENCE] * 2, [GOLD, MISS]),
                                 ("val_grpo_sft_lr1e-3_s1", [REFERENCE] * 2, [GOLD] * 2),
                                 ("val_sft_more_lr1e-3_s0", [REFERENCE] * 2, [MISS] * 2),  # best reports alone
                                 ("val_sft_more_lr2e-4_s0", [REWORDED] * 2, [GOLD] * 2)):
        write_eval(tmp_path / name, reports=reports, boxes=boxes)
    for name, after in (("grpo_sft_lr2e-5_s0", 0.9), ("grpo_sft_lr5e-5_s0", 0.5)):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "log.jsonl").write_text(json.dumps(
            {"step": 60, "val_reward_report": after, "val_reward_grounding": after}) + "\n")
    verdicts.tune(str(tmp_path))
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "GRPO_LR=5e-5 CONTROL_LR=2e-4"
    assert out[2].startswith("| sft | - | 4 |")  # the SFT model's row, for reference
