"""
lessons.py: why each piece of GRPO is there. Each lesson runs grpo.py from the saturated SFT model in the regime
where one piece matters, with and without it, two seeds each, and writes what it measured to docs/lessons.md: its
question (the lesson's docstring), its command and time, a figure (docs/lessons/<lesson>.png) and a table of each
run's numbers, with whether the seeds agree on the sign of the effect.

    bash reproduce.sh general sft        # once: the SFT model every lesson starts from (out/repro/sft/best)
    python lessons.py                    # every lesson, two runs at a time, each on one core (docs/lessons.md)
    python lessons.py --only=clip,kl     # some of them; the page keeps the other lessons' last sections
    python lessons.py --init_from=tiny --steps=1 --seeds=[0] --out_dir=/tmp/lessons --docs=/tmp/lessons/docs  # tests

A run whose out_dir holds `finished` is kept, so a lesson run again only redraws its figure and section; delete
out/lessons/<lesson> to measure it afresh. The runs use no GPU settings: on a GPU machine they run as well, but the
lessons are sized for a CPU.
"""

import inspect
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from configurator import configure
from pictures import draw_curves
import rewards

init_from = "out/repro/sft/best"  # the saturated SFT model of reproduce.sh (its best validation checkpoint)
n_train = 6000                    # the training studies GRPO draws prompts from, as in reproduce.sh
seeds = [0, 1]                    # every variant of every lesson runs once per seed
steps = 0                         # GRPO steps of every run (0: each lesson's own); the tests use 1
only = ""                         # comma-separated lessons to run ("": all of LESSONS)
lanes = 2                         # runs at a time, each with one thread (OMP_NUM_THREADS=1)
grpo_args = ""                    # more grpo.py arguments for every run, after the lesson's own (the tests: smaller)
out_dir = "out/lessons"           # one folder per lesson, one per run inside it
docs = "docs"                     # lessons.md goes here, the figures in its lessons/ folder


# ---------------------------------------------------------------------------------------------------
# running, reading and comparing runs

def train(lesson, variants, n_steps, extra):
    """Run grpo.py for every variant {name: {setting: value}} and seed, `lanes` at a time, into
    out_dir/lesson/<name>_s<seed> (kept if it finished before: `finished` holds its seconds); return
    {name: [log rows of each seed]} and the runs' seconds."""
    jobs = [(name, s) for name in variants for s in seeds]

    def run(job):
        name, s = job
        folder = os.path.join(out_dir, lesson, f"{name}_s{s}")
        if not os.path.exists(os.path.join(folder, "finished")):
            os.makedirs(folder, exist_ok=True)
            start = time.time()
            command = [sys.executable, "grpo.py", f"--init_from={init_from}", f"--n_train={n_train}",
                       f"--max_steps={steps or n_steps}", f"--seed={s}", "--save_every=0", f"--out_dir={folder}",
                       *extra, *(f"--{k}={v}" for k, v in variants[name].items()), *grpo_args.split()]
            with open(os.path.join(folder, "run.log"), "w") as log:
                done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode:
                raise SystemExit(f"{' '.join(command)} failed: see {folder}/run.log")
            with open(os.path.join(folder, "finished"), "w") as f:
                f.write(f"{time.time() - start:.1f}\n")
        seconds = float(open(os.path.join(folder, "finished")).read())
        return [json.loads(line) for line in open(os.path.join(folder, "log.jsonl")) if line.strip()], seconds

    with ThreadPoolExecutor(lanes) as pool:
        done = list(pool.map(run, jobs))
    logs = {name: [rows for (n, _), (rows, _) in zip(jobs, done) if n == name] for name in variants}
    return logs, sum(seconds for _, seconds in done)


def mean_over_steps(key, last=0):
    """The mean of `key` over the run's training steps, or over its `last` ones."""
    def measure(rows):
        values = [row[key] for row in rows if key in row and row.get("step", 0) > 0][-last:]
        return sum(values) / len(values)
    return measure


def at_end(key):
    return lambda rows: [row[key] for row in rows if key in row][-1]


def with_rollout_measures(rows, folder):
    """A run's log rows, each with two measures of its step's answers in folder/rollouts.jsonl: the share of distinct
    answers (1: all differ, 1/n: one answer for all) and their label F1 against the gold report, which a BLEU-4 reward
    does not see. The measures are also written to folder/rollout_measures.jsonl, for the figure."""
    by_step = {}
    for line in open(os.path.join(folder, "rollouts.jsonl")):
        group = json.loads(line)
        by_step.setdefault(group["step"], []).extend((c["text"], group["reference"]) for c in group["completions"])
    measured = {step: {"step": step, "distinct_answers": len({text for text, _ in pairs}) / len(pairs),
                       "label_f1": sum(rewards.label_f1(text, gold) for text, gold in pairs) / len(pairs)}
                for step, pairs in sorted(by_step.items())}
    with open(os.path.join(folder, "rollout_measures.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in measured.values())
    return [{**row, **measured.get(row.get("step"), {})} for row in rows]


def figure(lesson, variants, panels):
    logs = [os.path.join(out_dir, lesson, f"{name}_s{s}", file) for name in variants for s in seeds
            for file in ("log.jsonl", "rollout_measures.jsonl")]
    path = os.path.join(docs, "lessons", f"{lesson}.png")
    draw_curves([log for log in logs if os.path.exists(log)], path, height=240, panels=panels)
    return os.path.relpath(path, docs)


def section(lesson, doc, variants, logs, measures, claim, seconds, panels):
    """The lesson's part of docs/lessons.md: its docstring, command, time (its runs' seconds over the lanes),
    figure, each run's measures, and the claim (measure, variant A, variant B): B - A per seed, and whether every seed
    gives it the same sign."""
    header = "| measure | " + " | ".join(f"{name} s{s}" for name in variants for s in seeds) + " |"
    lines = [inspect.cleandoc(doc), "", f"    python lessons.py --only={lesson}    # {seconds / 60 / lanes:.1f} min: "
             f"{len(variants) * len(seeds)} runs, {lanes} at a time, {seconds / 60:.1f} min in all", "",
             f"![{lesson}]({figure(lesson, variants, panels)})", "", header,
             "|---|" + "---|" * (len(variants) * len(seeds))]
    values = {label: {name: [measure(rows) for rows in logs[name]] for name in variants} for label, measure in measures}
    for label, by_name in values.items():
        lines.append(f"| {label} | " + " | ".join(f"{v:.3g}" for name in variants for v in by_name[name]) + " |")
    label, a, b = claim
    diffs = [vb - va for va, vb in zip(values[label][a], values[label][b])]
    agree = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    lines += ["", f"**Measured:** {label}, {b} minus {a}: " + ", ".join(f"{d:+.3g} (seed {s})"
                                                                            for d, s in zip(diffs, seeds))
              + ("; the seeds agree on the sign." if agree else "; the seeds do not agree on the sign.")]
    return "\n".join(lines) + "\n"


def lesson(name, variants, n_steps, measures, claim, panels, extra=(), measure_rollouts=False):
    """Train a lesson's runs (with measure_rollouts, logging every group's answers and measuring them), then write its
    section to out_dir/name/section.md, from which the page is made."""
    if measure_rollouts:
        extra = (*extra, "--log_rollouts=1000")  # more than any step's groups: all of them
    logs, seconds = train(name, variants, n_steps, extra)
    if measure_rollouts:
        logs = {v: [with_rollout_measures(rows, os.path.join(out_dir, name, f"{v}_s{s}"))
                    for rows, s in zip(logs[v], seeds)] for v in variants}
    text = section(name, globals()[name].__doc__, variants, logs, measures, claim, seconds, panels)
    with open(os.path.join(out_dir, name, "section.md"), "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------------------
# the lessons: each one's settings at its top

def clip():
    """## 1. The clip

    PPO's clipped ratio exists for the off-policy regime: when one batch of rollouts is reused for many updates,
    the policy drifts away from the one that sampled them, and the ratio pi_theta / pi_old of a token can grow without
    bound. Here each step's 16 groups are split into 8 mini-batches (8 updates per rollout batch, against the
    default 2) at 6 times the default rate. "no_clip" sets eps_low = 1, eps_high = 1e9 and no dual clip: the plain
    importance-weighted policy gradient."""
    off_policy = dict(task="report", mini_batch=2, lr=3e-4)
    variants = {"clip": off_policy, "no_clip": {**off_policy, "eps_low": 1.0, "eps_high": 1e9, "dual_clip": 0.0}}
    measures = [("largest ratio in a step, mean over steps", mean_over_steps("ratio_max")),
                ("clipped tokens, mean over steps", mean_over_steps("clip_frac")),
                ("KL to the reference, mean over steps", mean_over_steps("kl")),
                ("held-out greedy label F1 at the end", at_end("val_reward_report"))]
    panels = [("largest ratio pi_theta / pi_old in the step", ("ratio_max",), True),
              ("sampled report reward (label F1)", ("reward_report",), False),
              ("clipped tokens", ("clip_frac",), False)]
    lesson("clip", variants, 30, measures, ("largest ratio in a step, mean over steps", "clip", "no_clip"), panels,
           extra=("--eval_every=15",))


def kl():
    """## 2. The KL to the reference

    A reward that can be hacked: BLEU-4 against the gold report rewards n-grams, not findings, and the policy can
    raise it by writing one safe template for every image. The KL term (beta) pulls the policy back toward the SFT
    model. Runs at beta 0 and 0.1, reports only, 60 steps at 3 times the default rate ("beta0" is beta 1e-6: the
    frozen reference is loaded only to measure the KL). Besides the KL and the reward, two measures the reward does
    not see, from every sampled answer (rollouts.jsonl): the share of distinct answers in the step (the hack is
    their collapse), and their label F1 (findings right). (The first version ran 40 steps at beta 0 and 0.1: at
    beta 0 one seed had collapsed to 48 % distinct answers and the other not yet, so its claim, distinct answers at
    the last step, split the seeds; it now runs 60 steps and averages the last 10.)"""
    hackable = dict(task="report", report_reward="bleu4", lr=1.5e-4)
    variants = {"beta0": {**hackable, "beta": 1e-6}, "beta0.1": {**hackable, "beta": 0.1}}
    measures = [("KL to the reference, mean over the last 10 steps", mean_over_steps("kl", 10)),
                ("sampled BLEU-4, mean over the last 10 steps", mean_over_steps("reward_report", 10)),
                ("distinct answers, mean over the last 10 steps", mean_over_steps("distinct_answers", 10)),
                ("label F1 of the answers, mean over the last 10 steps", mean_over_steps("label_f1", 10))]
    panels = [("distinct answers in the step (share)", ("distinct_answers",), False),
              ("KL to the reference", ("kl",), True),
              ("sampled reward (BLEU-4)", ("reward_report",), False),
              ("label F1 of the sampled answers (not rewarded)", ("label_f1",), False)]
    lesson("kl", variants, 60, measures, ("distinct answers, mean over the last 10 steps", "beta0", "beta0.1"),
           panels, extra=("--eval_every=0",), measure_rollouts=True)


def group_size():
    """## 3. Group size

    The advantage of an answer is its reward minus its group's mean: a group whose answers all score the same
    teaches nothing. With a fixed budget of 64 samples per step, G = 2, 4, 8 or 16 answers to 32, 16, 8 or 4
    prompts (2 updates a step in each). Small groups tie more often; large groups see fewer prompts."""
    variants = {f"G{g}": dict(group_size=g, prompts_per_step=64 // g, mini_batch=32 // g) for g in (2, 4, 8, 16)}
    measures = [("groups with no spread, mean over steps", mean_over_steps("zero_var_frac")),
                ("sampled reward, mean over steps", mean_over_steps("reward_mean")),
                ("held-out greedy grounding reward at the end", at_end("val_reward_grounding")),
                ("seconds per step", mean_over_steps("time_step"))]
    panels = [("groups with no spread (share)", ("zero_var_frac",), False),
              ("seconds per step", ("time_step",), False)]
    lesson("group_size", variants, 30, measures, ("groups with no spread, mean over steps", "G16", "G2"), panels,
           extra=("--eval_every=15",))


def dynamic_sampling():
    """## 4. Dynamic sampling

    A binary, verifiable reward, as in math RL: 1 when every gold box is hit at IoU >= 0.5 and no box is extra
    (`--grounding_reward=hit`), else 0. A prompt the model always or never gets right gives a group of 8 equal
    rewards, all advantages 0: it costs generation and teaches nothing. DAPO's dynamic sampling draws more prompts
    (here 2 x 16) and keeps the first 16 groups whose rewards spread. Grounding only; the held-out reward is the
    paper's soft-F1, which the training reward does not see. (The first version of this lesson used reports and label
    F1: no group tied in 30 steps of either seed, so there was nothing to filter.)"""
    binary = dict(task="grounding", grounding_reward="hit")
    variants = {"all_groups": binary, "filter_groups": {**binary, "filter_groups": 2}}
    measures = [("groups with no spread among those trained on, mean over steps", mean_over_steps("zero_var_frac")),
                ("prompts drawn per step", mean_over_steps("prompts_drawn")),
                ("held-out greedy soft-F1 at the end", at_end("val_reward_grounding")),
                ("seconds per step", mean_over_steps("time_step"))]
    panels = [("groups with no spread among those trained on (share)", ("zero_var_frac",), False),
              ("held-out greedy grounding soft-F1", ("val_reward_grounding",), False),
              ("prompts drawn per step", ("prompts_drawn",), False)]
    lesson("dynamic_sampling", variants, 30, measures,
           ("groups with no spread among those trained on, mean over steps", "all_groups", "filter_groups"), panels,
           extra=("--eval_every=10",))


def std_scaling():
    """## 5. Std scaling

    GRPO divides each advantage by its group's reward std; Dr. GRPO drops the division. With a binary reward (the hit
    reward of lesson 4), a group with 1 hit in 8 has std 0.35, so the hit's advantage is 2.5 with the division and
    0.875 without, while a group with 4 hits gives 0.93 against 0.5: the division weighs up the prompts the model
    almost always or almost never gets right, and makes every advantage, and so the gradient, larger. Does the
    policy then move further at the same rate? AdamW divides each step by the gradient's running scale, so a larger
    gradient need not make a larger step: the KL to the reference tells. Grounding only, 30 steps; the held-out
    reward is soft-F1.

    Two lessons were tried in this place and dropped, their effect not showing: overlong masking, with 32 tokens for
    reports of ~37 (a third of the answers stayed cut with or without the mask, the seeds disagreeing: a cut report
    keeps most of its label F1, so keeping it in the loss hardly punishes length; the mask matters where a cut answer
    scores the floor, as a thought cut before `</think>` does), and seq-mean against token-mean aggregation at 3 times
    the rate (answer length 37.5 / 36.0 against 37.4 / 36.9 tokens over 30 steps, the seeds disagreeing: these
    answers are too short and too alike in length for the weighting to matter)."""
    binary = dict(task="grounding", grounding_reward="hit")
    variants = {"std": binary, "no_std": {**binary, "scale_std": False}}
    measures = [("KL to the reference, mean over the last 10 steps", mean_over_steps("kl", 10)),
                ("gradient norm before clipping, mean over steps", mean_over_steps("grad_norm")),
                ("held-out greedy soft-F1 at the end", at_end("val_reward_grounding"))]
    panels = [("KL to the reference", ("kl",), True),
              ("gradient norm before clipping", ("grad_norm",), False),
              ("held-out greedy grounding soft-F1", ("val_reward_grounding",), False)]
    lesson("std_scaling", variants, 30, measures, ("KL to the reference, mean over the last 10 steps", "no_std", "std"),
           panels, extra=("--eval_every=10",))


LESSONS = [clip, kl, group_size, dynamic_sampling, std_scaling]


def page(names):
    """docs/lessons.md: every lesson's last section, in LESSONS' order."""
    parts = ["# Lessons: why each piece of GRPO is there", "",
             "Each lesson below is one function of `lessons.py`: GRPO from the saturated SFT model of `reproduce.sh`, "
             "in the regime where one piece matters, with and without it, seeds " + ", ".join(map(str, seeds)) +
             ". `python lessons.py` runs them all, two runs at a time, each on one core, and writes this page and its "
             "figures; every number comes from the runs of the command above its figure, and the time beside it is "
             "its runs' time over the two lanes. Each table ends with one claim, chosen with the lesson before it ran: "
             "its difference in each seed, and whether the seeds agree on its sign (two lessons were rebuilt after "
             "their first version showed nothing: each says how, and its claim was chosen again before the rebuilt "
             f"runs). Last written on {date.today()} on {platform.machine()} ({os.cpu_count()} cores).", ""]
    for name in names:
        path = os.path.join(out_dir, name, "section.md")
        if os.path.exists(path):
            parts.append(open(path).read())
    os.makedirs(docs, exist_ok=True)
    with open(os.path.join(docs, "lessons.md"), "w") as f:
        f.write("\n".join(parts))


def main():
    configure(globals())
    chosen = [f for f in LESSONS if not only or f.__name__ in only.split(",")]
    unknown = set(only.split(",")) - {f.__name__ for f in LESSONS} if only else set()
    if unknown:
        raise SystemExit(f"unknown lesson(s) {', '.join(sorted(unknown))} (lessons: "
                         f"{', '.join(f.__name__ for f in LESSONS)})")
    start = time.time()
    for run_lesson in chosen:
        print(f"=== {run_lesson.__name__} ({time.strftime('%H:%M:%S')})", flush=True)
        run_lesson()
    page([f.__name__ for f in LESSONS])
    print(f"done in {(time.time() - start) / 60:.1f} min: {os.path.join(docs, 'lessons.md')}")


if __name__ == "__main__":
    main()
