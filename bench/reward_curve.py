"""
The reward curve of a GRPO run in numbers: per task, the mean sampled reward in five equal blocks of steps, and
the first 20 % of steps against the last 20 % (with the standard error of each block's mean over its steps, and
the difference in units of its standard error);
then the greedy reward on the fixed held-out prompts, when the run logged it.

    python bench/reward_curve.py out/grpo/log.jsonl
"""
import json
import statistics
import sys

log = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in log if "reward_mean" in r]
print("| task | steps | reward by fifths of the run | first 20 % | last 20 % | last - first |")
print("|---|---|---|---|---|---|")
for task in sorted({r.get("task", "all") for r in rows}):
    rewards = [r["reward_mean"] for r in rows if r.get("task", "all") == task]
    k = max(1, len(rewards) // 5)
    fifths = [rewards[i * k:(i + 1) * k] for i in range(5)]

    def sem(block):
        return statistics.stdev(block) / len(block) ** 0.5 if len(block) > 1 else 0.0

    def show(block):
        return f"{statistics.mean(block):.3f} ± {sem(block):.3f}"
    gain = statistics.mean(fifths[-1]) - statistics.mean(fifths[0])
    gain_sem = (sem(fifths[0]) ** 2 + sem(fifths[-1]) ** 2) ** 0.5
    print(f"| {task} | {len(rewards)} | {' / '.join(f'{statistics.mean(b):.3f}' for b in fifths if b)} | "
          f"{show(fifths[0])} | {show(fifths[-1])} | {gain:+.3f} ({gain / gain_sem if gain_sem else 0:.1f} SE) |")

held_out = [r for r in log if any(k.startswith("val_reward_") for k in r)]
if held_out:
    print("\ngreedy reward on the fixed held-out prompts (grpo.py eval_every):\n")
    keys = sorted({k for r in held_out for k in r if k.startswith("val_reward_")})
    print("| step | " + " | ".join(k[len("val_reward_"):] for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for r in held_out:
        print(f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" if k in r else "" for k in keys) + " |")
