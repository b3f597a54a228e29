"""
logs.py: a run's log, log.jsonl: one JSON line a step, written by rank 0, read by pictures.draw_curves and verdicts.py.
"""

import json
import os


def open_training_log(out_dir, step, name="log.jsonl"):
    """out_dir/name (a JSONL file whose lines each hold a "step") opened for appending, holding only the lines of the
    steps up to `step`, where this run starts: a run that resumes from a checkpoint trains the steps after it again, so
    their lines (and one cut short by a kill) go, and the log ends as an uninterrupted run's; a run from step 0 starts
    a new log."""
    path = os.path.join(out_dir, name)
    kept = []
    if step and os.path.exists(path):
        for line in open(path):
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short
                continue
            if entry["step"] <= step:
                kept.append(line.rstrip("\n") + "\n")
    with open(path + ".tmp", "w") as f:
        f.write("".join(kept))
    os.replace(path + ".tmp", path)
    return open(path, "a")
