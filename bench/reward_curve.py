"""
The reward curve of a GRPO run in numbers: per task, the mean sampled reward in five equal blocks of steps, and
the first 20 % of steps against the last 20 % (with the standard error of each block's mean over its steps).

    python bench/reward_curve.py out/grpo/log.jsonl
"""
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
print("| task | steps | reward by fifths of the run | first 20 % | last 20 % |")
print("|---|---|---|---|---|")
for task in sorted({r.get("task", "all") for r in rows}):
    rewards = [r["reward_mean"] for r in rows if r.get("task", "all") == task]
    k = max(1, len(rewards) // 5)
    fifths = [rewards[i * k:(i + 1) * k] for i in range(5)]

    def show(block):
        sem = statistics.stdev(block) / len(block) ** 0.5 if len(block) > 1 else 0.0
        return f"{statistics.mean(block):.3f} ± {sem:.3f}"
    print(f"| {task} | {len(rewards)} | {' / '.join(f'{statistics.mean(b):.3f}' for b in fifths if b)} | "
          f"{show(fifths[0])} | {show(fifths[-1])} |")
