"""
Estimated GPU memory per GPU of sft.py and grpo.py at the paper's settings, for Qwen3-VL 2B / 4B / 8B, from
the parameter counts of the real shapes (model.QWEN3_VL_SHAPES) and the terms below. An estimate, not a
measurement: allocator fragmentation, CUDA context (~1 GiB) and NCCL buffers come on top.

    python bench/memory_table.py

Terms, per GPU, with N GPUs under FSDP2 (full sharding), as sft.py / grpo.py train:
  states     16 bytes x params / N   fp32 master weights, fp32 gradients, AdamW's two fp32 moments
  reference   2 bytes x params / N   grpo.py's frozen bf16 reference (beta > 0)
  gathered    bf16 copies of the unsharded root (embeddings, lm_head, merger) and of two decoder layers in flight;
              on one GPU (no FSDP) autocast's bf16 copies of all the weights, 2 bytes x params
  grads       FSDP2 only: the unsharded gradient of the largest unit (the root) while it is reduce-scattered, bf16
              from autograd plus its fp32 copy for the reduction (6 bytes x root params). sft.py and grpo.py
              reduce-scatter every micro-step; deferring that to the last one (set_requires_gradient_sync(False))
              would instead hold a whole unsharded fp32 gradient, 4 bytes x params (35 GB at 8B)
  activations gradient checkpointing on: each decoder layer's bf16 input, plus one layer recomputed
  logits     one chunk of model.LOGPROB_CHUNK positions x vocab x 10 bytes (bf16 projection, its fp32 copy turned
             into log-probs in place, and exp's fp32 temporary for the entropy; the backward recomputes a chunk the
             same way): sft.py and grpo.py never hold tokens x vocab (model.next_token_logprobs). Before that
             it was tokens x vocab x 14-16 bytes: 16.2 GiB for SFT's row, 18.5 GiB for GRPO's micro-batches
  KV cache   grpo.py generation: sequences in flight x length x layers x 2 x kv heads x head dim x 2 bytes
  generating grpo.py: the whole policy in bf16 (2 bytes x params), all-gathered once per rollout batch by
             distributed.gathered instead of layer by layer at every generated token (one GPU: autocast's copies)
GRPO never generates and trains at once, so its total is the larger of the two phases: states + ref + generating +
KV cache, and states + ref + gathered + grads + activations + logits.
Frozen vision (grpo.py --freeze_vision=True, the row "GRPO report, frozen vision"): the vision tower (blocks, mergers,
patch and position embeddings) keeps only its fp32 weights, 4 bytes x its params / N instead of 16 (no gradients,
no AdamW moments; grpo.py loads the whole policy in fp32 and does not cast the tower to bf16, which would halve
that); the root's gradient in "grads" loses the tower's part of the root (mergers and embeddings). The rest is
unchanged: the tower still computes in bf16 and is gathered for generation.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure  # noqa: E402
from model import LOGPROB_CHUNK, QWEN3_VL_SHAPES, QWEN3_VL_VOCAB, build_random  # noqa: E402

gpus = [8, 1]
configure(globals())

GiB = 2 ** 30
# the paper's settings (config/*.py): tokens per packed SFT row; GRPO prompt (~441 image tokens at 672 x 672 plus
# the question), answers, prompts per rank, samples per prompt, micro-batch and generate_batch
SFT_ROW = 8192
RUNS = {"GRPO report": dict(prompt=500, answer=1024, chunk=8, micro=8),
        "GRPO grounding": dict(prompt=500, answer=4096, chunk=4, micro=8)}
GROUP = 8


def parameter_counts(shape):
    """(all, one decoder layer, the root: what is neither a decoder layer nor a vision block, the vision tower, the
    tower's part of the root: mergers, patch and position embeddings)."""
    model, _ = build_random(shape)  # on the meta device: shapes only
    params = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.model.language_model.layers[0].parameters())
    blocks = sum(p.numel() for b in model.model.visual.blocks for p in b.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    return params, layer, params - layer * QWEN3_VL_SHAPES[shape]["num_layers"] - blocks, vision, vision - blocks


def parts(shape, params, layer, root, vision, vision_root, n_gpus):
    s = QWEN3_VL_SHAPES[shape]
    h, inter, n_layers = s["hidden_size"], s["intermediate_size"], s["num_layers"]
    kv = s["num_kv_heads"] * s["head_dim"]
    gathered = 2 * (root + 2 * layer) if n_gpus > 1 else 2 * params
    one_layer = lambda tokens: tokens * (6 * h + 4 * kv + 3 * inter) * 2  # noqa: E731  recomputed layer, bf16
    checkpointed = lambda tokens: n_layers * tokens * h * 2 + one_layer(tokens)  # noqa: E731
    logits = lambda tokens: min(tokens, LOGPROB_CHUNK) * QWEN3_VL_VOCAB * 10  # noqa: E731
    states = 16 * params / n_gpus
    grads = 6 * root if n_gpus > 1 else 0  # one GPU trains the plain model: its fp32 gradients are in `states`
    rows = {"SFT": {"states": states, "gathered": gathered, "grads": grads, "activations": checkpointed(SFT_ROW),
                    "logits": logits(SFT_ROW)}}
    for run, c in RUNS.items():
        length = c["prompt"] + c["answer"]
        rows[run] = {"states": states, "reference": 2 * params / n_gpus, "gathered": gathered, "grads": grads,
                     "activations": checkpointed(c["micro"] * length), "logits": logits(c["micro"] * c["answer"]),
                     "kv_cache": c["chunk"] * GROUP * length * n_layers * 2 * kv * 2,
                     "generating": 2 * params}
    rows["GRPO report, frozen vision"] = {**rows["GRPO report"],
                                         "states": (16 * (params - vision) + 4 * vision) / n_gpus,
                                         "grads": 6 * (root - vision_root) if n_gpus > 1 else 0}
    return rows


GENERATE = ("kv_cache", "generating")  # the terms of grpo.py's generation phase, besides states and reference


def total(terms):
    """Peak of the larger phase (SFT has one)."""
    common = terms["states"] + terms.get("reference", 0)
    generate = common + sum(terms.get(k, 0) for k in GENERATE)
    train = common + sum(v for k, v in terms.items() if k not in ("states", "reference", *GENERATE))
    return max(generate, train)


print("| model | params | stage | GPUs | states | ref | gathered | grads | activations | logits | generating | "
      "KV cache | total | fits 80 GB / 141 GB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
saved = {}  # model: (its vision params, the GiB per GPU that freezing them saves in GRPO report's peak, per GPU count)
for shape in QWEN3_VL_SHAPES:
    params, layer, root, vision, vision_root = parameter_counts(shape)
    for n_gpus in gpus:
        rows = parts(shape, params, layer, root, vision, vision_root, n_gpus)
        saved.setdefault(shape.upper(), (vision, []))[1].append(
            f"{(total(rows['GRPO report']) - total(rows['GRPO report, frozen vision'])) / GiB:.1f} GiB on {n_gpus}")
        for stage, terms in rows.items():
            peak = total(terms) + GiB  # + CUDA context
            cells = " | ".join(f"{terms[k] / GiB:.1f}" if k in terms else "-" for k in
                               ("states", "reference", "gathered", "grads", "activations", "logits", "generating",
                                "kv_cache"))
            fits = " / ".join("yes" if peak <= size * 1e9 else "no" for size in (80, 141))
            print(f"| {shape.upper()} | {params / 1e9:.2f} B | {stage} | {n_gpus} | {cells} | {peak / GiB:.0f} GiB | "
                  f"{fits} |")
print(f"\nSFT: one {SFT_ROW}-token row per micro-step. GRPO report / grounding: micro-batches of "
      f"{RUNS['GRPO report']['micro']} / {RUNS['GRPO grounding']['micro']} sequences, generation in chunks of "
      f"{RUNS['GRPO report']['chunk']} / {RUNS['GRPO grounding']['chunk']} prompts x {GROUP} samples (micro_batch, "
      f"generate_batch in config/); all GiB per GPU, estimated.")
cuts = [f"{shape} ({vision / 1e6:.0f} M vision params) {', '.join(c)} GPU(s)" for shape, (vision, c) in saved.items()]
print(f"A frozen vision tower lowers GRPO report's peak per GPU by {'; '.join(cuts)}.")
