"""The benchmark scripts' CPU paths, so that the GPU check does not rot between the sessions that have a GPU."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "check.md"
    run("bench/gpu_check.py", "--shape=tiny", "--image_size=64", "--max_pixels=4096", "--n_samples=3",
        f"--out_file={out}")
    text = out.read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in text.splitlines()
            if line.startswith(("| sdpa |", "| eager |"))}
    for impl, (vs_sdpa, vs_alone) in rows.items():  # max / mean log-prob differences, bf16 on a CPU
        assert float(vs_alone.split("/")[0]) < 0.05, impl  # packed rows keep their samples apart
    assert 0 < float(rows["eager"][0].split("/")[0]) < 0.05  # a second implementation, not sdpa against itself
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()
            if line.startswith(("| plain |", "| sharded"))}
    plain, sharded = rows["plain"], rows["sharded"]
    per_token = next(v for k, v in rows.items() if "per token" in k)
    assert sharded[:3] == plain[:3]  # loss, grad norm, loss after the step
    assert sharded[4] == "yes"  # greedy tokens of the image prompt after the step equal the plain model's
    # gathered once per generate call: one all-gather per decoder layer and vision block of the tiny model (4 + 2),
    # where per-token gathering repeats the 4 decoder layers for each of the 32 tokens
    assert int(sharded[6]) <= 7 and int(per_token[6]) >= 32 * 4


def test_sft_benchmark_counts_every_real_token_once():
    text = run("bench/bench_sft.py", "--records=24")
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| pack")
            or line.startswith("| padd")}
    real = int(text.split(" real tokens")[0].split()[-1])
    assert int(rows["packed"][3]) == real < int(rows["padded"][3])  # packing computes no padding


def test_generation_benchmark_times_both_paths_on_the_same_image_tokens():
    text = run("bench/generation_prefill.py", "--image_size=64", "--max_pixels=4096", "--prompts=2", "--group_size=2",
               "--max_new_tokens=2", "--repeats=1")
    assert "4 visual tokens per image" in text
    seconds = [float(line.split("|")[2]) for line in text.splitlines() if line.startswith("| generate")
               or line.startswith("| engine.sample_groups")]
    assert len(seconds) == 2 and all(s > 0 for s in seconds)


def test_greedy_evaluation_benchmark_gives_both_paths_the_same_answers():
    text = run("bench/greedy_eval.py", "--init_from=tiny", "--n_test=6", "--generate_batch=3", "--max_new_tokens=4",
               "--repeats=1")
    assert "the same answer from both paths: " in text
    same, total = text.split("the same answer from both paths: ")[1].split()[0:3:2]
    assert same == total and int(total) >= 6  # a scored test record of each task the world draws
    seconds = [float(line.split("|")[2]) for line in text.splitlines() if line.startswith(("| generate", "| evaluate"))]
    assert len(seconds) == 2 and all(s >= 0 for s in seconds)  # 6 short answers can take under 5 ms
