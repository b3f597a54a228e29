"""
TRL's GRPOTrainer on the same model, report prompts, reward (rewards.score), group size, lengths and update
schedule as grpo.py: the other half of the side-by-side in bench/bench_grpo.py. TRL is a benchmark-only extra,
installed in a separate environment and never imported by the project:

    python -m venv --system-site-packages .venv-trl && .venv-trl/bin/pip install trl==1.16.0
    .venv-trl/bin/python bench/trl_grpo.py --init_from=out/sft --steps=6

One GRPO step = P prompts x G samples generated once, then P / mini_batch optimizer steps (TRL:
generation_batch_size = P x G, gradient_accumulation_steps x per_device_train_batch_size = mini_batch x G).
Prints one JSON line: seconds per GRPO step (the first one left out as warm-up), its completions/s, the mean
completion length and the peak resident memory of this process.
"""
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import rewards  # noqa: E402
from configurator import configure  # noqa: E402
from data import load_image, open_records, prompt_messages, tiny_corpus  # noqa: E402
from model import load_model  # noqa: E402
from records import reference_answer  # noqa: E402

init_from = "out/sft"     # the same checkpoint grpo.py starts from
steps = 6                 # GRPO steps (generations); the first is warm-up
prompts_per_step = 16     # P
group_size = 8            # G
max_new_tokens = 96
mini_batch = 8            # prompts per optimizer step
micro_batch = 16          # sequences per forward/backward
lr = 5e-5
beta = 0.01
image_size = 128
seed = 0
out_dir = "out/bench/trl"
configure(globals())

from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

torch.manual_seed(seed)
model, processor = load_model(init_from, device="cpu", tiny_corpus=tiny_corpus)
records = open_records("synthetic", "train", prompts_per_step * steps, image_size, tasks=("report",))
rows = []
for i in range(len(records)):
    record = records[i]
    question = prompt_messages(record)[0]["content"][-1]["text"]  # TRL puts the image block in front of it
    rows.append({"prompt": [{"role": "user", "content": question}], "image": load_image(record),
                 "reference": reference_answer(record)})


def report_reward(prompts, completions, reference, **kwargs):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return rewards.score("report", texts, reference)[0]


class StepClock(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.time())


updates_per_step = prompts_per_step // mini_batch
args = GRPOConfig(
    output_dir=out_dir, use_cpu=True, bf16=False, seed=seed, report_to="none", save_strategy="no", logging_steps=1,
    max_steps=steps * updates_per_step, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
    weight_decay=0.01, max_grad_norm=1.0, per_device_train_batch_size=micro_batch,
    gradient_accumulation_steps=mini_batch * group_size // micro_batch,
    steps_per_generation=prompts_per_step * group_size // micro_batch, num_iterations=1,
    num_generations=group_size, max_completion_length=max_new_tokens, temperature=1.0, top_p=1.0,
    beta=beta, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
    dataloader_num_workers=0, disable_dropout=True, gradient_checkpointing=False)  # grpo.py's default: off
clock = StepClock()
trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=report_reward, args=args,
                      train_dataset=Dataset.from_list(rows), callbacks=[clock])
start = time.time()
trainer.train()
# the end of every GRPO step = the end of its last optimizer step
ends = [start] + clock.ends[updates_per_step - 1::updates_per_step]
per_step = [b - a for a, b in zip(ends, ends[1:])]
lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
measured = per_step[1:]
print(json.dumps({
    "implementation": f"TRL {__import__('trl').__version__} GRPOTrainer", "steps_timed": len(measured),
    "s_per_step": sum(measured) / len(measured),
    "completions_per_s": prompts_per_step * group_size * len(measured) / sum(measured),
    "response_length": sum(lengths) / max(1, len(lengths)),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
