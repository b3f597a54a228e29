"""
coldstart.py: stage 2, reasoning traces for a short SFT that teaches the model to "think" before it answers.

The paper's "RadVLM-Thinking": a teacher VLM is shown the image, the question AND the gold answer and asked for a
step-by-step radiological reasoning that arrives at that answer. Traces that are well formed and whose final
answer scores well against the gold answer are kept; the training target becomes
`<think>\\n{trace}\\n</think>\\n\\n{gold answer}` and the question ends with " /think", the same request grpo.py and
evaluate.py use with --thinking=True. This script writes those records, with up to twice as many SFT records
beside them (`replay`: a short SFT on traces alone makes the tiny model forget what SFT taught), to
out_dir/coldstart.jsonl; the cold-start SFT on them is sft.py with the config file config/coldstart.py, as nanoGPT
fine-tunes with a config:

    python coldstart.py && python sft.py config/coldstart.py                    # CPU: rule-based teacher
    python coldstart.py --teacher=Qwen3-VL-32B-Instruct --data=train.jsonl      # 1 GPU: a local teacher VLM
    torchrun --nproc_per_node=8 coldstart.py --teacher=... --data=...           # traces sharded over ranks
    bash runs/paper.sh                                                          # the paper's stage 2 on GPUs

The offline default teacher reads the synthetic world's ground truth (every finding, its side, size and
box; the anatomy). For a report it writes a systematic review: what is looked at, what is seen, where, hence the
report; for a grounding question, the question and where its target lies, hence the box (a review before the box
made the tiny model answer for the wrong structure: docs/results.md). On other records (converted datasets) it
writes the same from the record's own annotations, its CheXpert `labels` and its boxes; a record with neither
gets no trace. Restarting skips records whose traces are already
written.
Deliberately left out: trace rewriting/cleaning by a second LLM, and rejection sampling of several traces.
"""

import json
import os
from collections import Counter

import torch
from PIL import Image

from configurator import configure
from data import generation_kwargs, open_records, prompt_batch, tiny_corpus
import rewards
from distributed import barrier, end_distributed, init_distributed, print0
from model import load_model
from records import GROUNDING_TASKS, THINK_SUFFIX, parse_boxes, question, reference_answer, save_records, task_of

teacher = "rule"          # "rule" (ground truth: the synthetic world's, a record's annotations) or a local VLM dir
data = "synthetic"        # records to write traces for: "synthetic" or a .json/.jsonl file
n_records = 3000          # synthetic records (report and grounding, as the paper's two trace sets)
mix = ""                  # the task mix SFT trained on (sft.py's --mix), for the records replayed from it
image_size = 128
min_words = 20            # a shorter trace is dropped (the paper asked its teacher for at least ~300)
min_score = 0.5           # a trace whose final answer scores below this against the gold answer is dropped
teacher_max_new_tokens = 768
teacher_min_pixels = 1024     # the teacher's pixel budget per image (the paper's RL/evaluation budget): a
teacher_max_pixels = 451584   # native-resolution radiograph would otherwise be thousands of visual tokens
generate_batch = 8        # records per generate call of the teacher (0: all at once)
replay = 2.0              # SFT records (every task, no thinking) added per kept trace, so that the cold start keeps
                          # what SFT taught (Qwen3's "thinking mode fusion"); 0: the traces alone. 2.0 keeps more
                          # grounding than 1.0 (docs/results.md); the count is capped at the n_records SFT records
out_dir = "out/coldstart"  # coldstart.jsonl (what config/coldstart.py trains on), the per-rank traces, images/

TEACHER_PROMPT = (
    "You are an expert radiologist teaching a resident. Below are a chest X-ray, a question about it and its "
    "correct answer. Write the step-by-step reasoning a radiologist follows to arrive at this answer: a "
    "systematic review of the image (what you look at, what you see and where), at least {min_words} words, "
    "without saying that the answer was given to you. Finish with a line 'Final answer: ' followed by the "
    "answer.\n\nQuestion: {question}\nCorrect answer: {answer}")


# ---------------------------------------------------------------------------------------------------
# the rule-based teacher: a systematic review written from ground truth, the synthetic world's or a record's own

def where(box):
    """Where a box lies in the patient's frame (the patient's right is on the image's left)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    zone = "upper" if cy < 0.4 else "lower" if cy > 0.6 else "middle"
    if 0.45 <= cx <= 0.55:
        return f"central {zone} chest"
    side, image_side = ("right", "left") if cx < 0.5 else ("left", "right")
    return f"patient's {side} {zone} zone, the image's {image_side} side"


def describe(finding):
    a = finding["attrs"]
    words = [a.get("severity") or a.get("size") or "", a.get("side") or "", finding["name"]]
    return " ".join(w for w in words if w and w not in ("both",))


def rule_trace(record, study):
    """For a report, a short review in the order a radiologist reads a film (devices, heart, lungs, pleura), the
    observations the report follows from; for a grounding question, answer_steps alone."""
    if record.get("task") in GROUNDING_TASKS:
        return " ".join(answer_steps(record))
    by_group = {"devices": [], "lungs": [], "pleura": []}
    for f in study["findings"]:
        group = ("devices" if f["name"] in ("endotracheal tube", "central venous catheter", "pacemaker") else
                 "pleura" if f["name"] in ("pleural effusion", "pneumothorax") else
                 None if f["name"] == "cardiomegaly" else "lungs")
        if group:
            by_group[group].append(f)
    cardiomegaly = [f for f in study["findings"] if f["name"] == "cardiomegaly"]
    steps = ["Lines and tubes: " + (", ".join(describe(f) for f in by_group["devices"]) or "none") + ".",
             "Heart: " + (f"enlarged, {describe(cardiomegaly[0])}." if cardiomegaly else "normal size."),
             "Lungs: " + ("; ".join(f"{describe(f)} in the {where(f['box'])}" for f in by_group["lungs"])
                          or "clear") + ".",
             "Pleura: " + ("; ".join(f"{describe(f)} in the {where(f['box'])}" for f in by_group["pleura"])
                           or "no effusion, no pneumothorax") + "."]
    return " ".join(steps + answer_steps(record))


def answer_steps(record):
    """The last steps of a rule-based trace: what the report states, or, for a grounding question, the whole trace:
    the question restated and where its target lies. A whole-film review before the box (as for reports) taught
    the tiny model to lose the question over ~80 trace tokens and to answer for whatever structure its review
    ended on: grounding mAP@0.5 5 against 29 with these traces (docs/results.md)."""
    if record.get("task") in GROUNDING_TASKS:
        return [f"The question asks: {question(record)}"] + [f"The target is in the {where(box)}."
                                                            for box in parse_boxes(reference_answer(record))]
    return ["The report states each finding with its side and size, and the normal findings."]


# the CheXpert observations (records.CHEXPERT_LABELS but "No Finding") in rule_trace's reading order, by part, with
# what the part reads when none of them is present
LABEL_REVIEW = {"Lines and tubes": (("Support Devices",), "none"),
                "Heart": (("Cardiomegaly", "Enlarged Cardiomediastinum"), "normal size"),
                "Lungs": (("Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis"),
                          "clear"),
                "Pleura": (("Pleural Effusion", "Pneumothorax", "Pleural Other"), "no effusion, no pneumothorax"),
                "Bones": (("Fracture",), "no fracture")}


def annotation_trace(record):
    """rule_trace for a record of any dataset, written from its own annotations: for a report, the parts of the film
    in the same order, each with the observations its CheXpert `labels` state present (converters.chexpert_labels:
    uncertain counts as present); for a grounding question, answer_steps from its boxes. None for a record with
    nothing to reason from: a report without labels, a grounding answer without a box."""
    if record.get("task") in GROUNDING_TASKS:
        return " ".join(answer_steps(record)) if parse_boxes(reference_answer(record)) else None
    labels = record.get("labels")
    if labels is None:
        return None
    review = [f"{part}: " + (", ".join(name.lower() for name in names if labels.get(name)) or normal) + "."
              for part, (names, normal) in LABEL_REVIEW.items()]
    return " ".join(review + answer_steps(record))


def rule_review(record, image_size):
    """The rule-based teacher's trace: from the synthetic world's ground truth for its records (they carry the seed
    of their study), from the record's annotations for any other, "" where it has none."""
    if "study_seed" in record:
        import synthetic
        return rule_trace(record, synthetic.study_of(record, image_size))
    return annotation_trace(record) or ""


# ---------------------------------------------------------------------------------------------------

def on_disk(record, image_dir):
    """The record with its in-memory synthetic image written to image_dir, so that a records file stands on its own."""
    out = {k: v for k, v in record.items() if k != "image_array"}
    if record.get("image_array") is not None:
        out["image"] = os.path.abspath(os.path.join(image_dir, f"{record['id']}.png"))
        os.makedirs(image_dir, exist_ok=True)
        Image.fromarray(record["image_array"]).save(out["image"])
    return out


def thinking_record(record, trace, image_dir):
    """The record with its question asking for thinking and its answer preceded by the trace."""
    turns = [dict(t) for t in record["conversations"]]
    turns[0]["value"] += THINK_SUFFIX
    turns[-1]["value"] = f"<think>\n{trace.strip()}\n</think>\n\n{turns[-1]['value'].strip()}"
    return {**on_disk(record, image_dir), "conversations": turns}


def check_trace(record, trace, final_answer, min_words, min_score):
    """None if the trace is kept, else the reason it is dropped."""
    if "<think>" in trace or "</think>" in trace:
        return "nested think tags"
    if not trace:
        return "no trace"
    if len(trace.split()) < min_words:
        return "too short"
    if final_answer is None:
        return "no final answer"
    score, _ = rewards.score(task_of(record), [final_answer], [reference_answer(record)])
    if score[0] < min_score:
        return "final answer scores low"
    return None


def split_final_answer(text):
    """(trace, final answer) of a teacher's output ending in 'Final answer: ...'."""
    head, sep, tail = text.rpartition("Final answer:")
    return (head.strip(), tail.strip()) if sep else (text.strip(), None)


def teacher_outputs(batch, model, processor, device, image_size, max_new_tokens, min_words):
    """The teacher's text for each record, a reasoning trace ending in "Final answer: ...", and the number of
    prompt tokens it read (None for the rule-based teacher)."""
    if model is None:  # the rule-based teacher
        return [(rule_review(r, image_size) + "\nFinal answer: " + reference_answer(r), None) for r in batch]
    asks = [{**r, "conversations": [{"from": "human", "value": "<image>\n" + TEACHER_PROMPT.format(
        min_words=min_words, question=r["conversations"][0]["value"].replace("<image>", "").strip(),
        answer=reference_answer(r))}, {"from": "gpt", "value": ""}]} for r in batch]
    inputs = prompt_batch(asks, processor).to(device)
    with torch.no_grad():
        generated = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                   **generation_kwargs(processor.tokenizer))
    texts = processor.tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return list(zip(texts, inputs["attention_mask"].sum(1).tolist()))


def write_traces(records, part_file, teach, generate_batch, min_words, min_score):
    """Append one line per record to `part_file` ({id, kept, reason, prompt_tokens, record}), the records' teacher
    outputs coming from teach(batch) (teacher_outputs with its model bound); records already there are skipped,
    so a restarted run continues where it stopped. Returns the number of records written now."""
    done = {json.loads(line)["id"] for line in open(part_file)} if os.path.exists(part_file) else set()
    todo = [r for r in records if r["id"] not in done]
    print0(f"coldstart: traces for {len(todo)} records ({len(done)} already written)")
    with open(part_file, "a") as out:
        size = generate_batch or max(1, len(todo))
        for start in range(0, len(todo), size):
            batch = todo[start:start + size]
            for record, (output, prompt_tokens) in zip(batch, teach(batch)):
                trace, final = split_final_answer(output)
                reason = check_trace(record, trace, final, min_words, min_score)
                line = {"id": record["id"], "kept": reason is None, "reason": reason, "prompt_tokens": prompt_tokens}
                if reason is None:
                    line["record"] = thinking_record(record, trace, os.path.join(os.path.dirname(part_file), "images"))
                out.write(json.dumps(line) + "\n")
            out.flush()
    return len(todo)


def main():
    configure(globals())
    rank, _, world, device = init_distributed()
    # the paper's two trace sets: report generation and grounding
    records = open_records(data, "train", n_records, image_size, tasks=("report", *GROUNDING_TASKS), scored=True)
    os.makedirs(out_dir, exist_ok=True)
    model, processor = (None, None) if teacher == "rule" else load_model(
        teacher, device=device, min_pixels=teacher_min_pixels, max_pixels=teacher_max_pixels, tiny_corpus=tiny_corpus)
    def teach(batch):
        return teacher_outputs(batch, model and model.eval(), processor, device, image_size, teacher_max_new_tokens,
                               min_words)
    write_traces([records[i] for i in range(rank, len(records), world)],
                 os.path.join(out_dir, f"traces.rank{rank}.jsonl"), teach, generate_batch, min_words, min_score)
    barrier()
    data_file = os.path.join(out_dir, "coldstart.jsonl")
    # every rank reads every rank's traces, so that all of them stop together when none was kept
    lines = [json.loads(line) for r in range(world) for line in open(os.path.join(out_dir, f"traces.rank{r}.jsonl"))]
    kept = [line["record"] for line in lines if line["kept"]]
    if not kept:
        raise SystemExit(f"no trace was kept, so there is nothing to fine-tune on; the reason for each record is in "
                         f"{out_dir}/traces.rank*.jsonl")
    if rank == 0:
        dropped = Counter(line["reason"] for line in lines if not line["kept"])
        sft_records = open_records(data, "train", n_records, image_size, mix=mix)  # what SFT trained on, its first ones
        replayed = [on_disk(sft_records[i], os.path.join(out_dir, "images"))
                    for i in range(min(len(sft_records), round(replay * len(kept))))]
        save_records(kept + replayed, data_file)
        print0(f"traces: {len(kept)} kept, dropped {dict(dropped) or 'none'}; with {len(replayed)} SFT records "
               f"replayed -> {data_file}")
    barrier()
    print0(f"next, the cold-start SFT on them: python sft.py config/coldstart.py --data={data_file}")


if __name__ == "__main__":
    main()
    end_distributed()
