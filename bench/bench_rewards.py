"""
Throughput of the offline rewards on one CPU core (they are plain Python: one process, one thread).

    python bench/bench_rewards.py [--n 20000]

Completions are drawn at random (seeded) so that nearly all are distinct, as sampled completions are;
every 8 completions share one gold answer, as a GRPO group does. Reports are ~200 characters of standard
radiology sentences; grounding answers carry 1-3 boxes. Prints a markdown table: reward, completions/s.
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rewards  # noqa: E402
from records import format_boxes  # noqa: E402

GROUP_SIZE = 8
REPORT_SENTENCES = [
    "The heart size is normal.", "Moderate cardiomegaly.", "No pleural effusion or pneumothorax.",
    "Small {side} pleural effusion.", "{Side} lower lobe consolidation.", "Mild pulmonary edema.",
    "Endotracheal tube terminates {cm} cm above the carina.", "Plate-like atelectasis at the {side} base.",
    "A {cm} cm nodule in the {side} upper lobe.", "{Side} apical pneumothorax.", "The lungs are clear.",
    "No focal consolidation.", "The mediastinal contours are within normal limits.",
    "Possible early pneumonia in the {side} lower lobe.", "There is no acute osseous abnormality.",
]
FINDINGS = ["cardiomegaly", "edema", "pleural effusion", "pneumothorax", "atelectasis", "consolidation",
            "lung opacity", "fracture", "support devices"]


def random_report(rng):
    sentences = rng.sample(REPORT_SENTENCES, rng.randint(4, 7))
    side = rng.choice(["left", "right"])
    return " ".join(s.format(side=side, Side=side.capitalize(), cm=f"{rng.uniform(1, 6):.1f}") for s in sentences)


def random_boxes(rng, n):
    boxes = []
    for _ in range(n):
        x0, y0 = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
        boxes.append([x0, y0, x0 + rng.uniform(0.05, 0.3), y0 + rng.uniform(0.05, 0.3)])
    return "The finding is located at the coordinates " + format_boxes(boxes) + " on the image."


def random_classification(rng):
    names = rng.sample(FINDINGS, rng.randint(1, 3))
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"The following abnormalities are identified: {listed}."


def workloads(n, rng):
    """{reward: (function, completions, golds)} with one gold per group of GROUP_SIZE completions."""
    def grouped(make_completion, make_gold):
        golds = [gold for gold in (make_gold() for _ in range(n // GROUP_SIZE)) for _ in range(GROUP_SIZE)]
        return [make_completion() for _ in golds], golds
    reports = grouped(lambda: random_report(rng), lambda: random_report(rng))
    return {
        "grounding": (rewards.grounding_reward, *grouped(lambda: random_boxes(rng, rng.randint(1, 3)),
                                                          lambda: random_boxes(rng, rng.randint(1, 2)))),
        "label_f1": (rewards.label_f1, *reports),
        "classification": (rewards.classification_reward, *grouped(lambda: random_classification(rng),
                                                                    lambda: random_classification(rng))),
        "bleu4": (rewards.bleu4, *reports),
        "gleu": (rewards.gleu, *reports),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="completions per reward")
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"| reward | completions/s (one core, {args.n} completions, groups of {GROUP_SIZE}) |\n|---|---|")
    for name, (reward, completions, golds) in workloads(args.n, rng).items():
        rewards._read_report.cache_clear()  # no warm cache from an earlier run
        start = time.perf_counter()
        for completion, gold in zip(completions, golds):
            reward(completion, gold)
        print(f"| {name} | {len(completions) / (time.perf_counter() - start):,.0f} |")


if __name__ == "__main__":
    main()
