"""
logs.py: a run's log: out_dir/log.jsonl, one JSON line a step, written by rank 0 and read by pictures.draw_curves and
verdicts.py; and, when asked (wandb_log=True in sft.py and grpo.py), the same rows in Weights & Biases, where a group
watches a long run in the browser and compares runs. wandb is imported only then.

    python grpo.py --wandb_log=True --wandb_project=radvlm-grpo --wandb_run_name=report-lr1e-6
    WANDB_MODE=offline python grpo.py --wandb_log=True     # no network: out_dir/wandb/, `wandb sync` it later
"""

import json
import os


class RunLog:
    """log.jsonl of a run (open_training_log) and, with wandb_log, a W&B run in out_dir/wandb named `wandb_run_name`
    (default: the out_dir's name) whose config is the run's settings, each row at its "step". A resumed run starts a
    new W&B run of the same name from the step it resumes at."""

    def __init__(self, out_dir, step, settings, wandb_log=False, wandb_project="", wandb_run_name=""):
        self.file = open_training_log(out_dir, step)
        self.wandb = None
        if wandb_log:
            import wandb
            self.wandb = wandb.init(project=wandb_project, dir=out_dir, config=settings,
                                    name=wandb_run_name or os.path.basename(os.path.normpath(out_dir)))

    def write(self, row, groups=()):
        """The row in log.jsonl and W&B; in W&B also a table of the sampled answers of `groups` (rollouts.jsonl's
        lines: grpo.rollout_lines), one row an answer, with its prompt, reward and advantage."""
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.wandb:
            import wandb
            columns = ["step", "id", "task", "prompt", "reference", "answer", "reward", "advantage"]
            answers = [[g["step"], g["id"], g["task"], g["prompt"], g["reference"], a["text"], a["reward"],
                        a["advantage"]] for g in groups for a in g["completions"]]
            self.wandb.log({**row, **({"completions": wandb.Table(columns=columns, data=answers)} if answers else {})},
                           step=row["step"])

    def close(self):
        self.file.close()
        if self.wandb:
            self.wandb.finish()


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
