"""Run by test_grpo.py: grpo.py's whole main loop, with a reward that the tiny random model does earn (minus the
difference in words between an answer and its gold answer, over 10), recording what each step hands on: the prompts'
gold answers, the sampled answers, what was scored against what, and the advantages the update received (one file
per rank under torchrun: OUT.rank0, OUT.rank1, ...)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import grpo  # noqa: E402
from distributed import end_distributed  # noqa: E402
from records import reference_answer, task_of  # noqa: E402

out = sys.argv.pop(1)
steps = []
sample_rollouts, policy_update = grpo.sample_rollouts, grpo.policy_update


def sample(model, processor, records, *args, **kwargs):
    rollouts, texts = sample_rollouts(model, processor, records, *args, **kwargs)
    steps.append({"golds": [reference_answer(r) for r in records], "tasks": [task_of(r) for r in records],
                  "texts": texts, "group_ids": rollouts.group_ids.tolist()})
    return rollouts, texts


def score(task, completions, gold_answers, reward=None, thinking=False, metric_weights="", grounding="soft_f1"):
    values = [-abs(len(c.split()) - len(a.split())) / 10 for c, a in zip(completions, gold_answers)]
    steps[-1].update(completions=completions, answers=gold_answers, rewards=values, grounding=grounding)
    return values, {"words": [float(len(c.split())) for c in completions]}  # a component, as rewards.score gives


def update(policy, optimizer, rollouts, old_logprobs, ref_logprobs, advantages, **kwargs):
    steps[-1]["advantages"] = advantages.tolist()
    return policy_update(policy, optimizer, rollouts, old_logprobs, ref_logprobs, advantages, **kwargs)


grpo.sample_rollouts, grpo.policy_update, grpo.rewards.score = sample, update, score
grpo.main()
json.dump(steps, open(out + (f".rank{os.environ['RANK']}" if "RANK" in os.environ else ""), "w"))
end_distributed()
