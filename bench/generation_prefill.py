"""
Generation time of one GRPO step's rollouts on a CPU: G samples of each prompt continued from one prefill
(engine.sample_groups: the image through the vision tower and the prompt once, then G copies of the KV cache) against
generate(num_return_sequences=G), which runs the vision tower and prefills the prompt G times. The same tiny model,
prompts and number of new tokens (no end of answer, so both paths generate every token); the best of `repeats`.

    python bench/generation_prefill.py                                      # 512 x 512 images: 256 visual tokens
    python bench/generation_prefill.py --image_size=128 --max_pixels=16384  # the miniature's images: 16
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure  # noqa: E402
from data import generation_kwargs, open_records, prompt_batch, tiny_corpus  # noqa: E402
from engine import sample_groups  # noqa: E402
from model import load_model  # noqa: E402

image_size = 512          # synthetic radiographs of this side
max_pixels = 262144       # the processor's pixel budget: 512 x 512 gives 256 visual tokens
group_size = 8            # G samples per prompt
prompts = 4               # prompts per generate call
max_new_tokens = 32       # tokens generated per sample
repeats = 3               # timed runs of each path; the fastest is shown
configure(globals())

torch.manual_seed(0)
model, processor = load_model("tiny", device="cpu", max_pixels=max_pixels, tiny_corpus=tiny_corpus)
model.eval()
records = list(open_records("synthetic", "train", prompts, image_size, tasks=("report",)))
prompt = prompt_batch(records, processor)
stop = {**generation_kwargs(processor.tokenizer), "eos_token_id": []}  # never ends early: every token is generated
n_visual = int((prompt["input_ids"] == model.config.image_token_id).sum()) // prompts


def one_prefill():
    sample_groups(model, prompt, group_size, max_new_tokens, stop)


def repeated_prefill():
    model.generate(**prompt, do_sample=True, num_return_sequences=group_size, max_new_tokens=max_new_tokens,
                   min_new_tokens=max_new_tokens, pad_token_id=stop["pad_token_id"],
                   suppress_tokens=stop["suppress_tokens"])


times = {}
with torch.no_grad():
    for name, run in (("generate(num_return_sequences=G): G prefills", repeated_prefill),
                      ("engine.sample_groups: one prefill, G cache copies", one_prefill)):
        run()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        times[name] = best
print(f"{prompts} prompts x G = {group_size}, {n_visual} visual tokens per image, {max_new_tokens} new tokens, "
      f"best of {repeats}\n\n| path | s per call |\n|---|---|")
for name, seconds in times.items():
    print(f"| {name} | {seconds:.2f} |")
