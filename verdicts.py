"""
verdicts.py: the paper's claims decided on the miniature's evaluations, paired on the same records, over seeds.

Each claim compares two evaluations (evaluate.py's predictions.jsonl) on the same test records, by the GRPO reward of
each record's answer (label F1 for reports, soft-F1 IoU for grounding): the mean per-record difference. A run trained
with several seeds gives one difference per seed (each is printed), and the seeds are combined by one rule, fixed
before the grid of 2026-12-07 was run (docs/results.md, "The seed rule"): the mean over seeds and records with a 95 %
interval from a crossed bootstrap, each draw resampling the seeds and, independently, the test records (the same
records for every seed, since every seed answers the same records). The claim is "yes" when the interval lies above
0, "no" when it lies below, and "not resolved" otherwise. Runs are deterministic on one machine but not across
machines (float results differ between CPUs and training amplifies them), so the seeds' spread belongs in the
interval: a verdict that one seed decides can flip elsewhere.

    python verdicts.py out/repro                 # the claims of reproduce.sh's grid
    python verdicts.py out/repro --table3        # Table 3: every report reward's run scored by every report reward
    python verdicts.py out/repro --tune          # the learning rates of GRPO and the control, on the validation split
    python verdicts.py out/repro --power         # the test records each claim needs to resolve 0.02 (N_TEST)

Table 3 scores each run (GRPO with one report reward) by every reward of the table, against the SFT model it started
from, and decides the diagonal: does the run trained on a reward raise that reward more than every other run does
(paired, run against run, on the same records)?
"""

import functools
import glob
import json
import math
import os
import random
import sys

import numpy as np

import rewards
from records import GROUNDING_TASKS

N_BOOT = 2000
# what the SFT model must reach against the blind answers (evaluate.py --blind=True) on the test records to count as a
# model that sees (#36): a blind report states no finding (five-finding F1 0), the grounding and classification
# margins are in the reward's units and in F1 points
SEES_BAR = {"five-finding F1 micro": 40.0, "abnormality grounding reward above the blind box": 0.15,
            "phrase grounding reward above the blind box": 0.15, "classification F1 micro above the blind answer": 20.0}


def predictions(folder):
    """An evaluation's predictions.jsonl rows, and whether its answers think first (only the text after the last
    </think> is scored then)."""
    thinking = json.load(open(os.path.join(folder, "results.json")))["settings"].get("thinking", False)
    return [json.loads(line) for line in open(os.path.join(folder, "predictions.jsonl"))], thinking


def per_record(folder, kind, report_reward="label_f1"):
    """{record id: reward of its answer} over an evaluation's report records (scored by report_reward, the GRPO
    reward by default), grounding records (soft-F1 IoU) or classification records (F1 of the listed abnormalities),
    exactly as rewards.score scores them in training."""
    rows, thinking = predictions(folder)
    rows = [row for row in rows if (row["task"] in GROUNDING_TASKS if kind == "grounding" else row["task"] == kind)]
    values, _ = rewards.score([row["task"] for row in rows], [row["answer"] for row in rows],
                              [row["reference"] for row in rows], reward=report_reward, thinking=thinking)
    return {row["id"]: value for row, value in zip(rows, values)}


def five_finding_f1(folder):
    """The label F1 micro of an evaluation over the five usual CheXpert findings (atelectasis, cardiomegaly,
    consolidation, edema, pleural effusion), as evaluate.py pooled it over the test reports."""
    return json.load(open(os.path.join(folder, "results.json")))["report"]["label_f1_micro_5"]["value"]


def answer_chars(folder):
    """ANC, the mean length in characters of an evaluation's report answers, as evaluate.py measured it."""
    return json.load(open(os.path.join(folder, "results.json")))["report"]["answer_chars"]["value"]


def paired(a, b, seed=0):
    """Mean of b - a over the records both scored, and its 95 % bootstrap interval."""
    ids = sorted(set(a) & set(b))
    diffs = [b[i] - a[i] for i in ids]
    rng = random.Random(seed)
    boots = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(N_BOOT))
    return sum(diffs) / len(diffs), boots[int(0.025 * N_BOOT) - 1], boots[int(0.975 * N_BOOT) - 1], len(ids)


def over_seeds(pairs, seed=0):
    """b - a over seeds and records for [(a, b) per seed] ({record id: reward} each): (mean, 2.5 % and 97.5 %
    bounds of the crossed bootstrap, records, [mean of each seed]). A draw picks as many seeds as there are, with
    replacement, and as many of the records all seeds scored, with replacement, the same ones for every seed."""
    ids = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs)))
    diffs = np.array([[b[i] - a[i] for i in ids] for a, b in pairs])
    rng = np.random.default_rng(seed)
    boots = np.sort([diffs[rng.integers(0, len(pairs), len(pairs))][:, rng.integers(0, len(ids), len(ids))].mean()
                     for _ in range(N_BOOT)])
    return (float(diffs.mean()), float(boots[int(0.025 * N_BOOT) - 1]), float(boots[int(0.975 * N_BOOT) - 1]),
            len(ids), diffs.mean(1).tolist())


def decided(lo, hi):
    """The claim's verdict from its interval."""
    return "yes" if lo > 0 else "no" if hi < 0 else "not resolved"


def seeds_of(out, pattern):
    """The evaluation folders of a run's seeds, eval_sft_rl_s0, eval_sft_rl_s1, ... (or the one folder)."""
    return sorted(glob.glob(os.path.join(out, pattern + "_s*"))) or [os.path.join(out, pattern)]


def verdict(intervals, of="comparisons"):
    """Several comparisons that must all hold (Table 3's diagonal: one run against each other run): "yes" when every
    interval lies above 0, "no" when every one lies below, else "not resolved"."""
    if all(lo > 0 for _, lo, _, _ in intervals):
        return "yes"
    if all(hi < 0 for _, _, hi, _ in intervals):
        return "no"
    return f"not resolved ({sum(lo > 0 for _, lo, _, _ in intervals)} of {len(intervals)} {of} above 0)"


def ran(out, folders, text):
    """Whether every evaluation a claim needs exists; if not, a line saying which did not run (reproduce.sh's stages
    can be run one at a time)."""
    missing = [os.path.relpath(f, out) for f in folders if not os.path.exists(os.path.join(f, "predictions.jsonl"))]
    if missing:
        print(f"- {text}: not run ({', '.join(missing)} missing)")
    return not missing


def seed_pairs(out, first, second, text):
    """[(first's folder, second's folder) per seed], paired seed by seed (a run without seeds pairs with each seed of
    the other); None, with a line saying what did not run, when an evaluation is missing."""
    a_runs, b_runs = seeds_of(out, first), seeds_of(out, second)
    if not ran(out, a_runs + b_runs, text):
        return None
    return list(zip(a_runs, b_runs)) if len(a_runs) == len(b_runs) else [(a, b) for a in a_runs for b in b_runs]


def claim(text, out, first, second, kind):
    """One claim, "second beats first": a line with each seed's mean difference, the mean over seeds and records with
    its interval (over_seeds), and the verdict (seed_pairs)."""
    pairs = seed_pairs(out, first, second, text)
    if not pairs:
        return
    mean, lo, hi, n, per_seed = over_seeds([(per_record(a, kind), per_record(b, kind)) for a, b in pairs])
    print(f"- {text} ({second} - {first}, {n} records, {len(pairs)} seed(s)): "
          f"{', '.join(f'{m:+.3f}' for m in per_seed)}; {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] -> {decided(lo, hi)}")
    if kind == "report":  # a constant normal report earns label F1 (14 labels) but not this: it never states a finding
        five = lambda folder: f"{five_finding_f1(folder) * 100:.1f}"  # noqa: E731
        print(f"  five-finding F1 micro, {first} -> {second}: "
              + "; ".join(f"{five(a)} -> {five(b)}" for a, b in pairs))


def gap_closed(out):
    """RL on the general model closes more of its gap to the SFT model on grounding than on reports: per seed, the
    fraction of the gap closed, (general + RL - general) / (SFT - general), on each task; the seeds combined as in
    every claim (over_seeds): grounding's fraction minus the reports', averaged over the seeds, with a crossed
    bootstrap (each draw resamples the seeds, and each task's records on their own)."""
    general, sft = os.path.join(out, "eval_general"), os.path.join(out, "eval_sft")
    rl_runs = seeds_of(out, "eval_general_rl")
    if not ran(out, [general, sft] + rl_runs, "RL on the general model closes more of the gap"):
        return
    scores = {}  # kind: (general [records], RL [seeds, records], SFT [records])
    for kind in ("grounding", "report"):
        g, s, rl = per_record(general, kind), per_record(sft, kind), [per_record(r, kind) for r in rl_runs]
        ids = sorted(set(g) & set(s) & set.intersection(*map(set, rl)))
        scores[kind] = (np.array([g[i] for i in ids]), np.array([[r[i] for i in ids] for r in rl]),
                        np.array([s[i] for i in ids]))

    def closed(kind, seeds, records):
        g, rl, s = scores[kind]
        g, s = g[records].mean(), s[records].mean()
        return float(np.mean([(rl[k, records].mean() - g) / (s - g) if s != g else 0.0 for k in seeds]))

    every = {kind: np.arange(len(scores[kind][0])) for kind in scores}
    n_seeds, rng = len(rl_runs), np.random.default_rng(0)
    per_seed = [(closed("grounding", [k], every["grounding"]), closed("report", [k], every["report"]))
                for k in range(n_seeds)]
    value = closed("grounding", range(n_seeds), every["grounding"]) - closed("report", range(n_seeds), every["report"])
    boots = []
    for _ in range(N_BOOT):
        seeds = rng.integers(0, n_seeds, n_seeds)
        boots.append(closed("grounding", seeds, rng.integers(0, len(every["grounding"]), len(every["grounding"])))
                     - closed("report", seeds, rng.integers(0, len(every["report"]), len(every["report"]))))
    boots.sort()
    lo, hi = boots[int(0.025 * N_BOOT) - 1], boots[int(0.975 * N_BOOT) - 1]
    shown = ", ".join(f"{grounding:.0%} / {report:.0%}" for grounding, report in per_seed)
    print(f"- RL on the general model closes more of the gap to SFT on grounding than on reports (fraction of the gap "
          f"closed per seed, grounding / reports: {shown}; grounding minus reports over {n_seeds} seed(s) and "
          f"{len(every['grounding'])} grounding / {len(every['report'])} report records: {value:+.2f} "
          f"[{lo:+.2f}, {hi:+.2f}]) -> {decided(lo, hi)}")


def table3(out):
    """Table 3: GRPO on reports from the SFT model with each reward (eval_table3_<reward>). Each run is scored by every
    reward of the table, as the per-record difference from the SFT model; the paper's lessons are the diagonal (each
    reward raises its own metric most: paired against every other run on that metric) and the length (ANC) of a
    reward that sees only part of a report."""
    runs = {os.path.basename(f).removeprefix("eval_table3_"): f for f in sorted(glob.glob(f"{out}/eval_table3_*"))}
    sft = os.path.join(out, "eval_sft")
    scores = {(run, metric): per_record(folder, "report", metric) for run, folder in runs.items() for metric in runs}
    start = {metric: per_record(sft, "report", metric) for metric in runs}
    print(f"Table 3 in miniature: GRPO on reports from the SFT model with each reward (rows), scored by each reward "
          f"(columns) as the mean per-record difference from the SFT model [95 % bootstrap]; ANC: mean answer "
          f"characters\n\n| reward | {' | '.join(runs)} | ANC |\n|---|{'---|' * len(runs)}---|")
    print(f"| (the SFT model, mean) | {' | '.join(f'{sum(s.values()) / len(s):.3f}' for s in start.values())} | "
          f"{answer_chars(sft):.0f} |")
    for run, folder in runs.items():
        cells = (paired(start[metric], scores[run, metric]) for metric in runs)
        print(f"| {run} | {' | '.join(f'{m:+.3f} [{lo:+.3f}, {hi:+.3f}]' for m, lo, hi, _ in cells)} | "
              f"{answer_chars(folder):.0f} |")
    print()
    for metric in runs:
        others = [run for run in runs if run != metric]
        intervals = [paired(scores[other, metric], scores[metric, metric]) for other in others]
        shown = "; ".join(f"vs {other} {m:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                          for other, (m, lo, hi, _) in zip(others, intervals))
        print(f"- RL with {metric} raises {metric} more than RL with any other reward ({intervals[0][3]} records): "
              f"{shown} -> {verdict(intervals)}")


def saturated(log_file):
    """SFT has saturated: its best evaluation on the validation split (by the mean of the greedy val_reward_*, what
    sft.py selects out_dir/best on) comes before its last, and so does its lowest val_loss. Prints the curve."""
    rows = [r for r in map(json.loads, open(log_file)) if any(k.startswith("val_reward_") for k in r)]
    mean = lambda r: sum(v for k, v in r.items() if k.startswith("val_reward_")) / 2  # noqa: E731  report, grounding
    best, lowest, last = max(rows, key=mean), min(rows, key=lambda r: r["val_loss"]), rows[-1]
    print(f"- SFT has saturated: best mean val reward {mean(best):.3f} at step {best['step']} of {last['step']} "
          f"({mean(last):.3f} at the end), lowest val_loss {lowest['val_loss']:.3f} at step {lowest['step']} "
          f"({last['val_loss']:.3f} at the end) -> {'yes' if best is not last and lowest is not last else 'no'}")
    print("  step | val_loss | val_reward_report | val_reward_grounding")
    for r in rows:
        print(f"  {r['step']} | {r['val_loss']:.3f} | {r['val_reward_report']:.3f} | {r['val_reward_grounding']:.3f}"
              + (" (best)" if r is best else ""))


def sees_by_the_bar(out):
    """Whether the SFT model beats the blind answers by SEES_BAR's margins on the test records: "beats" alone lets a
    model pass that states one finding more than a constant normal report."""
    blind, sft = os.path.join(out, "eval_blind"), os.path.join(out, "eval_sft")
    if not ran(out, [blind, sft], "the SFT model sees by the bar"):
        return
    def above(task):
        return paired(per_record(blind, task), per_record(sft, task))[0]

    def f1_micro(folder):
        return json.load(open(os.path.join(folder, "results.json")))["classification"]["f1_micro"]["value"]
    values = {"five-finding F1 micro": five_finding_f1(sft) * 100,
              "abnormality grounding reward above the blind box": above("abnormality_grounding"),
              "phrase grounding reward above the blind box": above("phrase_grounding"),
              "classification F1 micro above the blind answer": (f1_micro(sft) - f1_micro(blind)) * 100}
    met = {name: values[name] >= bar for name, bar in SEES_BAR.items()}
    records = {task: len(per_record(sft, task)) for task in ("report", "abnormality_grounding", "phrase_grounding",
                                                             "classification")}
    print(f"- the SFT model sees by the bar (SEES_BAR; {', '.join(f'{n} {task}' for task, n in records.items())} "
          "records): " + "; ".join(
        f"{name} {values[name]:.3g} (at least {bar:g}: {'met' if met[name] else 'not met'})"
        for name, bar in SEES_BAR.items()) + f" -> {'yes' if all(met.values()) else 'no'}")


def skills_kept(out):
    """The thinking model before RL against the SFT model, on the same test records: grounding mAP@0.5, report label
    F1 micro and five-finding F1 micro as a fraction of the SFT model's (the cold start should keep at least 80 % of
    each). The last because label F1 with No Finding rewards a constant normal report (#36)."""
    if not ran(out, [os.path.join(out, name) for name in ("eval_sft", "eval_thinking")], "the cold start keeps skills"):
        return
    results = {name: json.load(open(os.path.join(out, name, "results.json"))) for name in ("eval_sft", "eval_thinking")}
    for label, path in (("grounding mAP@0.5", ("grounding", "all", "map50")),
                        ("report label F1 micro", ("report", "label_f1_micro")),
                        ("report five-finding F1 micro", ("report", "label_f1_micro_5"))):
        sft, thinking = (functools.reduce(dict.get, path, results[name]) for name in ("eval_sft", "eval_thinking"))
        share = thinking["value"] / sft["value"]
        n = len(per_record(os.path.join(out, "eval_sft"), path[0]))
        print(f"- the cold start keeps the SFT model's {label}: {thinking['value'] * 100:.1f} against "
              f"{sft['value'] * 100:.1f} ({n} records), {share:.0%} -> {'yes' if share >= 0.8 else 'no'} "
              "(80 % or more)")


def validation_row(name, lr, folder):
    """Print one row of the tune table for an evaluation on the validation split; return its mean of both tasks."""
    rewards_of = [per_record(folder, task) for task in ("report", "grounding")]
    report, grounding = (sum(r.values()) / max(1, len(r)) for r in rewards_of)
    print(f"| {name} | {lr} | {sum(map(len, rewards_of))} | {report:.3f} | {grounding:.3f} | "
          f"{(report + grounding) / 2:.3f} |")
    return (report + grounding) / 2


def tune(out):
    """The learning rates of reproduce.sh's tune stage: each GRPO and control run of seed 0 at a candidate rate
    (grpo_sft_lr<rate>_s0, sft_more_lr<rate>_s0) scored by its greedy answers on the validation split (evaluate.py
    --split=val into val_<run>; the SFT model's in val_sft for reference): the mean reward of the report records and
    of the grounding records, and the mean of the two; each kind's choice is the rate with the highest. Thousands of
    validation studies, not the 64 prompts per task of the training logs, which ranked GRPO's 5e-5 above 1.5e-4
    where 2,600 studies put 1.5e-4 0.024 ahead on reports (docs/results.md, #38). The test split is never looked
    at. The last line, "GRPO_LR=... CONTROL_LR=...", is what reproduce.sh reads."""
    print("| run | learning rate | records | reports | grounding | mean of both |\n|---|---|---|---|---|---|")
    if os.path.isdir(os.path.join(out, "val_sft")):
        validation_row("sft", "-", os.path.join(out, "val_sft"))
    chosen = {}
    for kind, name in (("GRPO_LR", "grpo_sft"), ("CONTROL_LR", "sft_more")):
        for folder in sorted(glob.glob(os.path.join(out, f"val_{name}_lr*_s0"))):
            lr = os.path.basename(folder)[len(f"val_{name}_lr"):-len("_s0")]
            chosen[kind] = max(chosen.get(kind, (-1.0, None)), (validation_row(name, lr, folder), lr))
    print("\n" + " ".join(f"{kind}={lr}" for kind, (_, lr) in chosen.items()))


def power(out, effect=0.02):
    """The test records each of the grid's RL claims needs: per claim and task, the standard deviation of the paired
    per-record differences (over its seeds' pairs, pooled), and the records for which a difference of `effect`
    is resolved with 80 % power by a two-sided 95 % interval, n = ((1.96 + 0.84) sd / effect)^2; then the N_TEST
    (test studies: each is one record of one task) that gives each task that many records, at this run's share."""
    print(f"| claim | task | records | mean | sd | records for {effect} | N_TEST for it |")
    print("|---|---|---|---|---|---|---|")
    for first, second in (("eval_sft", "eval_sft_rl"), ("eval_sft_more", "eval_sft_rl"),
                          ("eval_sft_rl", "eval_thinking_rl"), ("eval_general", "eval_general_rl")):
        pairs = seed_pairs(out, first, second, f"{second} - {first}")
        if not pairs:
            continue
        n_test = json.load(open(os.path.join(pairs[0][1], "results.json")))["settings"]["n_test"]
        for kind in ("report", "grounding"):
            diffs = [[b[i] - a[i] for i in sorted(set(a) & set(b))]
                     for a, b in ((per_record(x, kind), per_record(y, kind)) for x, y in pairs)]
            if len(diffs[0]) < 2:
                continue
            sd = float(np.sqrt(np.mean([np.var(d, ddof=1) for d in diffs])))
            needed = math.ceil(((1.96 + 0.84) * sd / effect) ** 2)
            print(f"| {second} - {first} | {kind} | {len(diffs[0])} | {np.mean(diffs):+.3f} | {sd:.3f} | {needed} | "
                  f"{math.ceil(needed * n_test / len(diffs[0]))} |")


def main(out):
    print("The paper: RL adds to SFT on both tasks; thinking does not improve further; RL on a general model closes")
    print("much of the gap on grounding, less on reports. This run (paired differences, each seed's mean; over seeds")
    print("and records, a 95 % crossed bootstrap):")
    saturated(os.path.join(out, "sft", "log.jsonl"))
    for kind in ("report", "grounding", *GROUNDING_TASKS, "classification"):  # blind: evaluate.py --blind=True
        claim(f"the SFT model sees: it beats the blind answers (no image) on {kind.replace('_', ' ')}", out,
              "eval_blind", "eval_sft", kind)
    sees_by_the_bar(out)
    for kind in ("reports", "grounding"):
        k = kind.removesuffix("s")
        claim(f"SFT + RL beats SFT on {kind}", out, "eval_sft", "eval_sft_rl", k)
        claim(f"SFT + RL beats more epochs of SFT on the same data, for as long, on {kind}", out, "eval_sft_more",
              "eval_sft_rl", k)
        claim(f"thinking + RL beats SFT + RL on {kind}", out, "eval_sft_rl", "eval_thinking_rl", k)
        claim(f"RL improves the general model on {kind}", out, "eval_general", "eval_general_rl", k)
        claim(f"SFT beats the general model + RL on {kind}", out, "eval_general_rl", "eval_sft", k)
    gap_closed(out)
    skills_kept(out)


if __name__ == "__main__":
    if "--table3" in sys.argv[2:]:
        table3(sys.argv[1])
    elif "--tune" in sys.argv[2:]:
        tune(sys.argv[1])
    elif "--power" in sys.argv[2:]:
        power(sys.argv[1])
    else:
        main(sys.argv[1])
