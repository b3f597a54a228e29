"""
One GRPO step of grpo.py, timed: where the time goes (generate / reward / old+reference log-probs / policy
updates), completions per second and peak memory; optionally side by side with TRL's GRPOTrainer on the same
model, prompts, reward, group size, lengths and update schedule (bench/trl_grpo.py, in its own environment).

    python bench/bench_grpo.py                                         # CPU: the SFT'd tiny model (python sft.py)
    python bench/bench_grpo.py --trl_python=.venv-trl/bin/python       # + TRL (see bench/trl_grpo.py for the venv)
    python bench/bench_grpo.py --shape=2b --image_size=512 --max_pixels=262144 --max_new_tokens=256   # 1 GPU

--shape=2b|4b|8b times a randomly initialised model of Qwen3-VL's real size instead (saved once to out/bench):
its answers are noise and mostly run to max_new_tokens, which is the slow case. Each implementation runs in a
fresh process, so the peak memory is its own.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configurator import configure  # noqa: E402

init_from = "out/sft"     # the checkpoint to start from (ignored with shape)
shape = ""                # "", or "2b" / "4b" / "8b": a random model of that Qwen3-VL size
steps = 6                 # GRPO steps; the first is left out as warm-up
prompts_per_step = 16
group_size = 8
max_new_tokens = 96
mini_batch = 8
micro_batch = 16
image_size = 128          # synthetic image side
max_pixels = 16384
trl_python = ""           # a python with trl installed: also run bench/trl_grpo.py with the same settings
out_dir = "out/bench"
configure(globals())

# a child process that runs a script as __main__ and then reports its own peak memory
CHILD = ("import json, resource, runpy, sys, torch; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
         "run_name='__main__'); print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss "
         "/ 1024, 'peak_gpu_gb': torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0}))")


def last_json(stdout):
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


if shape:  # a random model of the real size, written once in the real checkpoint layout
    init_from = os.path.join(out_dir, f"qwen3vl_{shape}_random")
    if not os.path.exists(os.path.join(init_from, "config.json")):
        import torch
        from checkpoints import save_checkpoint
        from model import build_random
        model, processor = build_random(shape, device="cpu", dtype=torch.bfloat16, max_pixels=max_pixels)
        save_checkpoint(model, processor, init_from)
        del model

run_dir = os.path.join(out_dir, "grpo")
common = [f"--init_from={init_from}", f"--prompts_per_step={prompts_per_step}", f"--group_size={group_size}",
          f"--max_new_tokens={max_new_tokens}", f"--mini_batch={mini_batch}", f"--micro_batch={micro_batch}",
          f"--image_size={image_size}"]
subprocess.run(["rm", "-rf", run_dir], check=True)
ours = subprocess.run([sys.executable, "-c", CHILD, "grpo.py", *common, "--task=report", f"--max_steps={steps}",
                       f"--max_pixels={max_pixels}", "--eval_every=0", "--save_every=0",
                       f"--n_train={prompts_per_step * steps}", f"--out_dir={run_dir}"],
                      cwd=ROOT, capture_output=True, text=True)
if ours.returncode:
    raise SystemExit(ours.stderr[-3000:])
log = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))][1:]  # the first step: warm-up
mean = lambda key: sum(r[key] for r in log) / len(log)  # noqa: E731
memory = last_json(ours.stdout)
results = [{"implementation": "grpo.py", "s_per_step": mean("time_step"),
            "completions_per_s": prompts_per_step * group_size / mean("time_step"),
            "response_length": mean("response_length"), **memory,
            **{k: mean(f"time_{k}") for k in ("generate", "reward", "reference", "train")}}]
if trl_python:
    trl = subprocess.run([trl_python, "bench/trl_grpo.py", *common, f"--steps={steps}",
                          f"--out_dir={os.path.join(out_dir, 'trl')}"], cwd=ROOT, capture_output=True, text=True)
    if trl.returncode:
        raise SystemExit(trl.stderr[-3000:])
    results.append(last_json(trl.stdout))

print(f"{steps - 1} timed steps of {prompts_per_step} prompts x {group_size} samples, max_new_tokens "
      f"{max_new_tokens}, {prompts_per_step // mini_batch} optimizer steps per GRPO step, model {init_from}\n")
print("| implementation | s / step | generate | reward | old + ref log-probs | updates | completions/s | "
      "mean length | peak RSS | peak GPU |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in results:
    split = " | ".join(f"{r[k]:.2f} s" if k in r else "-" for k in ("generate", "reward", "reference", "train"))
    gpu = f"{r['peak_gpu_gb']:.1f} GiB" if r.get("peak_gpu_gb") else "-"
    print(f"| {r['implementation']} | {r['s_per_step']:.2f} s | {split} | {r['completions_per_s']:.1f} | "
          f"{r['response_length']:.1f} | {r['peak_rss_mb']:.0f} MiB | {gpu} |")
if len(results) == 2:
    print(f"\ngrpo.py / TRL time per step: {results[0]['s_per_step'] / results[1]['s_per_step']:.2f}; "
          f"peak memory: {results[0]['peak_rss_mb'] / results[1]['peak_rss_mb']:.2f}")
