"""
Greedy evaluation time on a CPU: evaluate.generate_answers (engine.sample_groups at temperature 0: answers that have
ended leave the batch) against generate(do_sample=False) on the same batches, which runs every row to the batch's
longest answer. The same trained model, test records (reports, classification and grounding mixed, as evaluate.py
orders them) and batch size; both paths' answers are compared; the best of `repeats`.

    python bench/greedy_eval.py --init_from=out/repro/sft/best              # the grid's SFT model, 400 test records
    python bench/greedy_eval.py --init_from=out/repro/sft/best --generate_batch=16   # evaluate.py's batch before
    python bench/greedy_eval.py --init_from=out/sft --n_test=200
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure  # noqa: E402
from data import generation_kwargs, open_records, prompt_batch, tiny_corpus  # noqa: E402
from evaluate import SCORED_TASKS, generate_answers  # noqa: E402
from model import load_model  # noqa: E402

init_from = "out/repro/sft/best"  # a trained model: a random one's answers all run to max_new_tokens
n_test = 400              # test records
generate_batch = 64       # prompts per call, as evaluate.py (0: all at once)
max_new_tokens = 256      # as evaluate.py
repeats = 2               # timed runs of each path; the fastest is shown
configure(globals())

model, processor = load_model(init_from, device="cpu", tiny_corpus=tiny_corpus)
model.eval()
source = open_records("synthetic", "test", n_test, 128, tasks=SCORED_TASKS, scored=True)
records = [source[i] for i in range(len(source))]
stop = generation_kwargs(processor.tokenizer)


def with_generate():
    answers, size = [], generate_batch or len(records)
    for start in range(0, len(records), size):
        prompt = prompt_batch(records[start:start + size], processor)
        with torch.no_grad():
            out = model.generate(**prompt, do_sample=False, max_new_tokens=max_new_tokens, **stop)
        answers += processor.tokenizer.batch_decode(out[:, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


def with_engine():
    return generate_answers(model, processor, records, generate_batch, False, max_new_tokens, torch.device("cpu"),
                            progress=False)


times, answers = {}, {}
for name, run in (("generate(do_sample=False): every row to the batch's longest answer", with_generate),
                  ("evaluate.generate_answers: ended answers leave the batch", with_engine)):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        answers[name] = run()
        best = min(best, time.perf_counter() - start)
    times[name] = best
same = sum(a == b for a, b in zip(*answers.values()))
print(f"{len(records)} test records of {init_from}, {generate_batch} per call, torch threads "
      f"{torch.get_num_threads()}, best of {repeats}; the same answer from both paths: {same} of {len(records)}\n\n"
      "| path | s | records per s |\n|---|---|---|")
for name, seconds in times.items():
    print(f"| {name} | {seconds:.2f} | {len(records) / seconds:.1f} |")
