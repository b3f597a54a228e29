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
