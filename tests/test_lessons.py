"""lessons.py: every lesson runs end to end for one step (so none rots), and its section states what it measured."""

import json
import os
import re
import subprocess
import sys

import lessons

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_lesson_runs_one_step_and_writes_its_section_and_figure(tiny_checkpoint, tmp_path):
    out, docs = tmp_path / "runs", tmp_path / "docs"
    # the session's tiny checkpoint: --init_from=tiny would train its tokenizer again in each of the 10 runs
    command = [sys.executable, "lessons.py", f"--init_from={tiny_checkpoint}", "--steps=1", "--seeds=[0]",
               f"--out_dir={out}", f"--docs={docs}", "--grpo_args=--n_eval=2 --max_new_tokens=8"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    page = (docs / "lessons.md").read_text()
    names = [f.__name__ for f in lessons.LESSONS]
    assert len(names) >= 5
    for name in names:
        assert f"python lessons.py --only={name}" in page and (docs / "lessons" / f"{name}.png").exists()
        runs = [folder for folder in (out / name).iterdir() if folder.is_dir()]
        assert len(runs) >= 2 and all(json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 1
                                      for run in runs)
    # every measure of every run is a number, and every claim is stated with the seed's difference
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| measure")]
    assert rows and all(re.fullmatch(r"\| [^|]+ \|( [-+0-9.e]+ \|)+", row) for row in rows)
    assert page.count("**Measured:**") == len(names) and page.count("(seed 0)") == len(names)
    # the KL lesson measured every sampled answer: the share of distinct ones lies in (0, 1]
    measured = [json.loads(line) for line in open(out / "kl" / "beta0_s0" / "rollout_measures.jsonl")]
    assert [row["step"] for row in measured] == [1] and 0 < measured[0]["distinct_answers"] <= 1


def test_the_seeds_agree_only_when_every_seed_moves_the_same_way(tmp_path, monkeypatch):
    monkeypatch.setattr(lessons, "out_dir", str(tmp_path / "runs"))
    monkeypatch.setattr(lessons, "docs", str(tmp_path / "docs"))
    monkeypatch.setattr(lessons, "seeds", [0, 1])
    variants = {"a": {}, "b": {}}
    claim = ("length", "a", "b")

    def measured(values_b):
        logs = {"a": [[{"step": 1, "response_length": 10.0}]] * 2,
                "b": [[{"step": 1, "response_length": v}] for v in values_b]}
        return lessons.section("demo", "## demo", variants, logs,
                               [("length", lessons.mean_over_steps("response_length"))], claim, 60.0, [])

    assert "+2 (seed 0), +5 (seed 1); the seeds agree" in measured([12.0, 15.0])
    assert "the seeds do not agree" in measured([12.0, 8.0])
    assert "the seeds do not agree" in measured([12.0, 10.0])  # no effect in one seed is no agreement


def test_lessons_draw_from_the_grids_training_set():
    """lessons.py runs GRPO from reproduce.sh's SFT model on the prompts that model trained on: its n_train is the
    grid's N_TRAIN. Fails when one is changed without the other."""
    grid = re.search(r"^N_TRAIN=\$\{N_TRAIN:-(\d+)\}", open(os.path.join(ROOT, "reproduce.sh")).read(), re.M)
    assert grid and lessons.n_train == int(grid.group(1))
