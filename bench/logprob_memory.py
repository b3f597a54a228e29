"""
Peak memory of one GRPO micro-step (forward and backward of the answers' log-probs) on a CPU, with Qwen's real
151,936-token vocabulary on a narrow Qwen3-VL (hidden 64): the full-logits path (what grpo.py computed before:
B x T x vocab logits, their log-softmax, its gradient) against engine.training_logprobs, which computes the chosen
tokens' log-probs chunk by chunk from the final hidden states (model.next_token_logprobs). Each path runs in a fresh
process, so its peak RSS is its own; the table shows the peak above the RSS just before the step.

    python bench/logprob_memory.py                      # 8 answers of 512 tokens
    python bench/logprob_memory.py --answer_tokens=256
"""
import json
import os
import resource
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure  # noqa: E402

sequences = 8             # a GRPO micro-batch
answer_tokens = 512       # answer positions per sequence
path = ""                 # "full" or "chunked": measure that path (the script runs itself once for each)
configure(globals())


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def micro_step(path):
    """Peak RSS above the RSS before one forward + backward of `sequences` answers of `answer_tokens` tokens."""
    import engine
    from data import open_records, prompt_batch
    from model import QWEN3_VL_VOCAB, build_processor, build_tokenizer, qwen3_vl_config
    from transformers import Qwen3VLForConditionalGeneration
    tokenizer = build_tokenizer(["a narrow model with the real vocabulary"] * 4)
    config = qwen3_vl_config(tokenizer, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             intermediate_size=128, vision_depth=1, vision_hidden=32, vision_heads=2,
                             vocab_size=QWEN3_VL_VOCAB)
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).train()
    record = open_records("synthetic", "train", 1, 128, tasks=("report",))[0]
    prompt = prompt_batch([record] * sequences, build_processor(tokenizer))
    answers = torch.randint(0, QWEN3_VL_VOCAB, (sequences, answer_tokens))
    one_image = prompt["pixel_values"][:len(prompt["pixel_values"]) // sequences]  # the rows share one record's image
    rollouts = engine.Rollouts(input_ids=torch.cat([prompt["input_ids"], answers], 1),
                               attention_mask=torch.cat([prompt["attention_mask"], torch.ones_like(answers)], 1),
                               mm_token_type_ids=torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(answers)], 1),
                               image_grid_thw=prompt["image_grid_thw"],
                               pixel_chunks=[one_image] * sequences,
                               answer_mask=torch.ones_like(answers, dtype=torch.bool),
                               group_ids=torch.zeros(sequences, dtype=torch.long),
                               sampled_logprobs=None, truncated=None, prompt_len=prompt["input_ids"].shape[1])
    before = peak_rss_gib()
    if path == "full":  # what engine.training_logprobs replaced: the logits of every answer position at once
        logits = model(**rollouts.model_inputs(), use_cache=False, logits_to_keep=answer_tokens + 1).logits[:, :-1]
        logits = logits.float()
        logprobs = torch.log_softmax(logits, -1)
        chosen = logprobs.gather(-1, answers[:, :, None]).squeeze(-1)
        with torch.no_grad():
            entropy = -(logprobs.exp() * logprobs).sum(-1)
    else:
        chosen, entropy = engine.training_logprobs(model, rollouts)
    (chosen.sum() + 0 * entropy.sum()).backward()
    return peak_rss_gib() - before


if path:
    print(json.dumps({path: micro_step(path)}))
else:
    peaks = {}
    for p in ("full", "chunked"):
        proc = subprocess.run([sys.executable, __file__, f"--path={p}", f"--sequences={sequences}",
                               f"--answer_tokens={answer_tokens}"], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        peaks.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    logits = sequences * answer_tokens * 151936 * 4 / 2 ** 30
    print(f"one GRPO micro-step, {sequences} x {answer_tokens} answer tokens, vocabulary 151,936 "
          f"(one fp32 logits tensor: {logits:.2f} GiB); peak RSS above the RSS before the step\n")
    print("| path | peak above start |\n|---|---|")
    print(f"| full logits (B x T x vocab) | {peaks['full']:.2f} GiB |")
    print(f"| chunked from hidden states (engine.training_logprobs) | {peaks['chunked']:.2f} GiB |")
    print(json.dumps(peaks))
