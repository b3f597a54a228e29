"""
What a model's answers look like, beside their scores: per evaluation and task, how many answers there are and how
many differ, how many distinct thinking traces come before them, how many report answers state no finding (and how
many gold reports do), and the most common opening of an answer with its count. A model that writes one template
for every study, or one trace for every question, shows here before it shows in a metric.

    python bench/answers.py out/repro/eval_sft out/repro/eval_table3_bleu4 out/repro/eval_thinking
"""
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rewards  # noqa: E402
from verdicts import predictions  # noqa: E402


def states_no_finding(text):
    """No observation other than "No Finding" stated present or uncertain."""
    return not any(v != 0 for k, v in rewards.extract_labels(text).items() if k != "No Finding")


print("| evaluation | task | answers | distinct answers | distinct traces | no finding stated (gold) | "
      "most common opening (count) |")
print("|---|---|---|---|---|---|---|")
for folder in sys.argv[1:]:
    rows, thinking = predictions(folder)
    for task in sorted({row["task"] for row in rows}):
        mine = [row for row in rows if row["task"] == task]
        answers = [rewards.final_answer(row["answer"], thinking).strip() for row in mine]
        traces = len({row["answer"].rsplit("</think>", 1)[0] for row in mine}) if thinking else "-"
        normal = (f"{sum(map(states_no_finding, answers))} ({sum(states_no_finding(r['reference']) for r in mine)})"
                  if task == "report" else "-")
        opening, count = collections.Counter(" ".join(a.split()[:5]) for a in answers).most_common(1)[0]
        print(f"| {os.path.basename(folder)} | {task} | {len(mine)} | {len(set(answers))} | {traces} | {normal} | "
              f"{opening!r} ({count}) |")
