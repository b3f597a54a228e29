"""sample.py: answers sampled as GRPO samples them, with their rewards and group-relative advantages, and a PNG."""
import os
import re
import subprocess
import sys

from PIL import Image

from conftest import gray_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sample(*args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_synthetic_study_with_its_gold_answer_shows_rewards_and_advantages(tiny_checkpoint, tmp_path):
    out = run_sample(f"--init_from={tiny_checkpoint}", "--task=anatomical_grounding", "--study=1", "--num_samples=4",
                     "--max_new_tokens=12", "--answer=The heart is located at the coordinates [0.3, 0.4, 0.7, 0.8].",
                     f"--out={tmp_path / 'sample.png'}")
    scores = [(float(r), float(a)) for r, a in re.findall(r"reward (-?[\d.]+), advantage ([-+][\d.]+)", out)]
    assert len(scores) == 4
    assert abs(sum(a for _, a in scores)) < 0.05  # advantages are centred on the group's mean
    assert Image.open(tmp_path / "sample.png").size[0] == 4 * (192 + 4) + 4


def test_an_image_file_without_an_answer_just_samples(tiny_checkpoint, tmp_path):
    gray_image(96, 128).save(tmp_path / "cxr.png")
    out = run_sample(f"--init_from={tiny_checkpoint}", f"--image={tmp_path / 'cxr.png'}", "--num_samples=2",
                     "--max_new_tokens=6", f"--out={tmp_path / 'sample.png'}")
    assert "--- sample 1" in out and "advantage" not in out and (tmp_path / "sample.png").exists()


def test_a_group_grpo_logged_is_drawn_with_the_rewards_and_advantages_it_had(tmp_path):
    """--rollouts: a group of a rollouts.jsonl as grpo.rollout_lines writes it (a synthetic study made in memory, so
    logged by its seed) is printed with its logged rewards and advantages and drawn on the study's image, made again.
    Fails if sample.py reads another step or group than asked (0: the last step), or cannot read what grpo.py
    writes (a field renamed on one side, an in-memory image that cannot be made again)."""
    import json

    import torch

    import engine
    import grpo
    import synthetic
    records = [synthetic.SyntheticRecords("train", 4, size=64, tasks=("anatomical_grounding",))[i] for i in (1, 2)]
    answer = "The heart is located at the coordinates [0.3, 0.4, 0.7, 0.8] on the image."
    rollouts = engine.Rollouts(input_ids=None, attention_mask=None, mm_token_type_ids=None, image_grid_thw=None,
                               pixel_chunks=[], answer_mask=torch.ones(4, 5, dtype=torch.bool),
                               group_ids=torch.tensor([0, 0, 1, 1]), sampled_logprobs=None,
                               truncated=torch.tensor([True, False, True, False]), prompt_len=0)
    with open(tmp_path / "rollouts.jsonl", "w") as f:
        for step, rewards in ((6, [0.1, 0.3, 0.2, 0.4]), (7, [0.1, 0.3, 0.9, 0.5])):
            advantages = grpo.group_advantages(rewards, rollouts.group_ids)
            for line in grpo.rollout_lines(step, records, [answer, "none"] * 2, rewards, {"grounding": rewards},
                                           advantages, rollouts, 2, 64):
                f.write(json.dumps(line) + "\n")
    assert "image_array" not in line and line["study_seed"] == records[1]["study_seed"]
    out = run_sample(f"--rollouts={tmp_path / 'rollouts.jsonl'}", "--group=1", f"--out={tmp_path / 'logged.png'}")
    assert f"step 7, group 1: record {records[1]['id']}" in out
    assert f"gold: {records[1]['conversations'][1]['value']}" in out
    assert re.findall(r"reward (-?[\d.]+), advantage ([-+][\d.]+)", out) == [("0.900", "+0.71"), ("0.500", "-0.71")]
    assert Image.open(tmp_path / "logged.png").size == (4 * (192 + 4) + 4, 192 + 12 * 8 + 4 + 2 * 4)
