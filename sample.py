"""
sample.py: try a model on one image. It samples answers as GRPO samples its rollouts, prints them and draws their
boxes; given the gold answer it also prints each answer's reward and its advantage over the others, which is all
of GRPO's idea on one prompt: answers better than their group's mean are pushed up, the others down.

    python sample.py                                                  # out/grpo on synthetic test study 0
    python sample.py --init_from=out/sft --study=3 --task=abnormality_grounding
    python sample.py --image=cxr.png --prompt="Write a radiology report for this Chest X-ray."
    python sample.py --image=cxr.png --task=anatomical_grounding \\
        --prompt="Where is the heart located in this Chest X-ray?" \\
        --answer="The heart is located at the coordinates [0.35, 0.45, 0.75, 0.8] on the image."

Or look at what GRPO itself sampled: a group that grpo.py --log_rollouts=N wrote, with the rewards and advantages
it got at that step (no model is loaded; a synthetic image is made again from its study's seed):

    python sample.py --rollouts=out/grpo/rollouts.jsonl --step=10 --group=0

The picture (out) shows the image once per answer: gold boxes green, the answer's boxes red.
"""

import json
import os

import torch

import rewards
from configurator import configure
from data import load_image, tiny_corpus
from distributed import default_device
from engine import sample_rollouts
from grpo import group_advantages
from model import load_model
from pictures import contact_sheet
from records import PROMPTS, make_record, parse_boxes, question, reference_answer

init_from = "out/grpo"    # a training output dir (its latest step), a checkpoint dir, a hub id, or "tiny"
image = ""                # a PNG / JPG / DICOM file; empty: a study of the synthetic world's test split
study = 0                 # which synthetic test record of `task` (when image is empty)
task = "report"           # the question's task: which synthetic record, and which reward scores the answers
prompt = ""               # the question (default: the synthetic record's, or the task's first phrasing)
answer = ""               # the gold answer (default: the synthetic record's); with one, rewards and advantages
num_samples = 8           # answers sampled, the group of GRPO
max_new_tokens = 128
temperature = 1.0
top_p = 1.0
thinking = False          # ask for <think>...</think> first; rewards score only the answer after it
report_reward = "label_f1"  # as grpo.py: label_f1 | radcliq | bertscore | radgraph | gleu | bleu4 | positive_f1
metric_weights = ""       # the model-based rewards' weights folder (scorers.py)
min_pixels = 1024
max_pixels = 16384        # the synthetic world's images are 128 x 128; real radiographs: the paper's 451,584
out = "out/sample.png"    # the answers' boxes drawn on the image
seed = 0
rollouts = ""             # a rollouts.jsonl of grpo.py: draw a group it logged instead of sampling one
step = 0                  # which logged step (0: the last one in the file)
group = 0                 # which of that step's logged groups
configure(globals())


def logged_group(path, step, group):
    """(the record, the logged answers) of group `group` of step `step` (0: the last) in a grpo.py rollouts.jsonl; a
    synthetic image made in memory is made again from its study's seed."""
    import synthetic
    lines = [json.loads(line) for line in open(path) if line.strip()]
    if not lines:
        raise SystemExit(f"{path} holds no logged group")
    step = step or lines[-1]["step"]
    groups = [line for line in lines if line["step"] == step]
    if not 0 <= group < len(groups):
        raise SystemExit(f"{path} holds {len(groups)} group(s) of step {step}, so no --group={group}")
    line = groups[group]
    record = make_record(line["id"], line["image"], line["prompt"], line["reference"], line["task"])
    if "study_seed" in line:
        record["image_array"] = synthetic.study_of(line, line["image_size"])["image"]
    print(f"step {step}, group {group}: record {line['id']} ({line['task']})")
    return record, line["completions"]


torch.manual_seed(seed)
if rollouts:
    record, logged = logged_group(rollouts, step, group)
elif image:
    asked = prompt or PROMPTS[task][0].format(name="heart", phrase="")
    record = make_record("sample", os.path.abspath(image), asked, answer, task)
else:
    import synthetic
    record = synthetic.SyntheticRecords("test", tasks=(task,))[study]
    if prompt:
        record["conversations"][0]["value"] = "<image>\n" + prompt
    if answer:
        record["conversations"][-1]["value"] = answer
gold = reference_answer(record)
print(f"question: {question(record)}")
print(f"gold: {gold or '(none given)'}\n")

scores = advantages = None
if rollouts:  # what the step sampled, and the rewards and advantages it trained on
    completions, scores, advantages = ([c[key] for c in logged] for key in ("text", "reward", "advantage"))
else:
    device = default_device()
    model, processor = load_model(init_from, device=device, min_pixels=min_pixels, max_pixels=max_pixels, seed=seed,
                                  tiny_corpus=tiny_corpus)
    model.to(device).eval()
    _, completions = sample_rollouts(model, processor, [record], num_samples, thinking, device, temperature, top_p,
                                     max_new_tokens)
    if gold:
        scores, _ = rewards.score(task, completions, [gold] * num_samples, reward=report_reward, thinking=thinking,
                                  metric_weights=metric_weights)
        advantages = group_advantages(scores, [0] * num_samples).tolist()
tiles, picture = [], load_image(record)
for k, text in enumerate(completions):
    head = f"sample {k}" + (f": reward {scores[k]:.3f}, advantage {advantages[k]:+.2f}" if gold else "")
    print(f"--- {head}\n{text}\n")
    tiles.append({"image": picture, "boxes": [(box, "#30ff30", "") for box in parse_boxes(gold)]
                  + [(box, "#ff3030", "") for box in parse_boxes(rewards.final_answer(text, thinking))],
                  "lines": [(head, "#a0a0a0"), (text, "white")]})
contact_sheet(tiles, out, text_lines=8)
print(f"wrote {out}")
