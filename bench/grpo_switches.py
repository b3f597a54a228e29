"""
GRPO's switches, one at a time, on the default synthetic run: the same starting model, seed and steps as the baseline,
each run in its own process, one after the other (nothing else may run: step times are compared). Prints a markdown
table: the sampled reward of the first and last fifth of the steps per task, the greedy reward on the held-out
prompts at the end, the mean zero-variance, truncated and clipped fractions, the rollout / training mismatch and the
time per step.

    python bench/grpo_switches.py --init_from=out/repro/sft            # after the SFT of reproduce.sh (~15 min)
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configurator import configure  # noqa: E402

init_from = "out/sft"     # the SFT model GRPO starts from
steps = 40                # GRPO steps per run (alternating report / grounding)
eval_every = 20
out_dir = "out/switches"
configure(globals())

SWITCHES = [("baseline (the paper's GRPO)", []), ("GSPO: --ratio_level=sequence", ["--ratio_level=sequence"]),
            ("TIS: --tis_cap=2", ["--tis_cap=2.0"]),
            ("DAPO dynamic sampling: --filter_groups=2", ["--filter_groups=2"]),
            ("overlong masking: --overlong=mask", ["--overlong=mask"])]


def fifths(rows, key):
    values = [r[key] for r in rows if key in r]
    k = max(1, len(values) // 5)
    return sum(values[:k]) / k, sum(values[-k:]) / k


print(f"GRPO from {init_from}, {steps} steps, seed 0; sampled reward first -> last fifth of the steps; greedy "
      f"held-out reward at step 0 -> {steps}\n")
print("| run | report, sampled | grounding, sampled | report, held-out | grounding, held-out | zero-variance groups | "
      "truncated | clipped low / high | mismatch KL | prompts drawn / step | s / step |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name, args in SWITCHES:
    run = os.path.join(out_dir, name.split(":")[0].split(" ")[0].lower())
    subprocess.run(["rm", "-rf", run], check=True)
    done = subprocess.run([sys.executable, "grpo.py", f"--init_from={init_from}", f"--max_steps={steps}",
                           f"--eval_every={eval_every}", "--save_every=0", f"--out_dir={run}", *args], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    rows = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))]
    trained = [r for r in rows if "task" in r]
    mean = lambda key: sum(r[key] for r in trained) / len(trained)  # noqa: E731
    held = [r for r in rows if "val_reward_report" in r]
    cells = [f"{a:.3f} -> {b:.3f}" for a, b in (fifths(trained, "reward_report"), fifths(trained, "reward_grounding"))]
    cells += [f"{held[0][k]:.3f} -> {held[-1][k]:.3f}" for k in ("val_reward_report", "val_reward_grounding")]
    cells += [f"{mean('zero_var_frac'):.2f}", f"{mean('truncated_frac'):.3f}",
              f"{mean('clip_frac_low'):.4f} / {mean('clip_frac_high'):.4f}", f"{mean('mismatch_kl'):.4f}",
              f"{mean('prompts_drawn'):.1f}", f"{mean('time_step'):.2f}"]
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
