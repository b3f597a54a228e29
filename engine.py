"""
engine.py: the rollout engine of GRPO: G sampled answers per prompt, and the log-probs of their tokens.

grpo.py holds the algorithm; this file holds what makes it affordable, none of which changes a value:
- sampling (`sample_rollouts`): each prompt is prefilled once, its image through the vision tower once, and its G
  answers continue from G copies of that KV cache; answers that have ended leave the batch;
- log-probs of the sampled answers, two ways, never the B x T x vocab logits (model.next_token_logprobs):
  - `answer_logprobs` (no gradients: pi_old, the reference): each prompt runs once and its answers continue from
    copies of its cache, micro-batch by micro-batch;
  - `training_logprobs` (with gradients: the policy's update): each row runs whole (under FSDP2 a gradient through a
    cache copy would reach a layer that resharded after the prompt's forward), its image through the tower once a
    group (`each_image_once`).
Columns that are padding in every row (the prompts' common left padding, the answers' common tail) are cut first.
Positions count from the attention mask and attention is causal, so the cuts and the cache give the values of a
plain padded forward (tests/test_grpo.py checks each against one).

    python sample.py --init_from=out/grpo          # sample_rollouts on one study: 8 answers, their rewards
    python bench/generation_prefill.py             # one prefill per group against G prefills
"""

from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from transformers import DynamicCache, TopPLogitsWarper

from data import generation_kwargs, prompt_batch
from distributed import autocast, gathered
from model import next_token_logprobs


@dataclass
class Rollouts:
    """G sampled answers to each of a rank's prompts as one padded batch (row j answers prompt group_ids[j]): the
    prompts left-padded to prompt_len tokens, the answers right-padded after them."""
    input_ids: torch.Tensor          # [N, prompt_len + A]: prompt tokens, then answer tokens
    attention_mask: torch.Tensor     # [N, prompt_len + A]: 0 on padding
    mm_token_type_ids: torch.Tensor  # [N, prompt_len + A]: which tokens are image slots
    image_grid_thw: torch.Tensor     # [N, 3]: each row's image patch grid
    pixel_chunks: list               # each row's image patches (the rows of a group share one tensor)
    answer_mask: torch.Tensor        # [N, A]: the answer's tokens, up to and including its EOS
    group_ids: torch.Tensor          # [N]: the prompt each row answers
    sampled_logprobs: torch.Tensor   # [N, A]: the log-probs generation drew the tokens with (0 off answer_mask)
    truncated: torch.Tensor          # [N]: ran out of max_new_tokens before its EOS
    prompt_len: int                  # prompt tokens, padding included: where the answers start

    def rows(self, idx):
        """The rollouts of rows `idx` (a tensor of row numbers), in that order."""
        picked = {f.name: getattr(self, f.name)[idx] for f in fields(self) if torch.is_tensor(getattr(self, f.name))}
        return replace(self, **picked, pixel_chunks=[self.pixel_chunks[i] for i in idx.tolist()])

    def model_inputs(self):
        """The model's inputs for these rows: their tokens, and their images' patches in row order."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "mm_token_type_ids": self.mm_token_type_ids, "image_grid_thw": self.image_grid_thw,
                "pixel_values": torch.cat(self.pixel_chunks)}


# ---------------------------------------------------------------------------------------------------
# sampling

def sample_rollouts(model, processor, records, group_size, thinking, device, temperature=1.0, top_p=1.0,
                    max_new_tokens=96, generate_batch=0):
    """(Rollouts, their decoded texts): G sampled answers per record (row j answers record j // G), each prompt
    prefilled once (sample_groups). Prompts go through `generate_batch` at a time (0: all at once), since the KV cache
    of those x G sequences bounds the memory of generation; the chunks are then padded into one batch. A sharded
    policy is gathered once for all of it (distributed.gathered)."""
    tok = processor.tokenizer
    stop = generation_kwargs(tok)
    chunk, parts = generate_batch or len(records), []
    with torch.no_grad(), gathered(model), autocast(device):
        for start in range(0, len(records), chunk):
            prompt = prompt_batch(records[start:start + chunk], processor, thinking).to(device)
            parts.append((prompt, *sample_groups(model, prompt, group_size, max_new_tokens, stop, temperature,
                                                 top_p)))
    prompt_len = max(p["input_ids"].shape[1] for p, _, _ in parts)
    answer_len = max(c.shape[1] for _, c, _ in parts)
    left = lambda t, value: F.pad(t, (prompt_len - t.shape[1], 0), value=value)  # noqa: E731
    right = lambda t, value: F.pad(t, (0, answer_len - t.shape[1]), value=value)  # noqa: E731
    repeat = lambda t: t.repeat_interleave(group_size, 0)  # noqa: E731
    prompt = {k: torch.cat([repeat(left(p[k], tok.pad_token_id if k == "input_ids" else 0)) for p, _, _ in parts])
              for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    answer = torch.cat([right(c, tok.pad_token_id) for _, c, _ in parts])
    generated = torch.cat([right(torch.ones_like(c, dtype=torch.bool), False) for _, c, _ in parts])
    is_eos = torch.isin(answer, torch.tensor(stop["eos_token_id"], device=device))
    # keep every token up to and including the first EOS: the EOS is what teaches the policy to stop
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    answer_mask = ~after_eos & generated
    answer = answer.masked_fill(~answer_mask, tok.pad_token_id)
    grids = torch.cat([p["image_grid_thw"] for p, _, _ in parts])
    pixel_chunks = torch.split(torch.cat([p["pixel_values"] for p, _, _ in parts]), grids.prod(-1).tolist())
    rollouts = Rollouts(
        input_ids=torch.cat([prompt["input_ids"], answer], 1),
        attention_mask=torch.cat([prompt["attention_mask"], answer_mask.long()], 1),
        mm_token_type_ids=torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(answer)], 1),
        image_grid_thw=repeat(grids),
        pixel_chunks=[pixel_chunks[j // group_size] for j in range(len(answer))],
        answer_mask=answer_mask,
        group_ids=torch.arange(len(records), device=device).repeat_interleave(group_size),
        sampled_logprobs=torch.cat([right(lp, 0.0) for _, _, lp in parts]) * answer_mask,
        truncated=~(is_eos & generated).any(1),
        prompt_len=prompt_len)
    return rollouts, [tok.decode(a[m], skip_special_tokens=True) for a, m in zip(answer, answer_mask)]


def sample_groups(model, prompt, group_size, max_new_tokens, stop, temperature=1.0, top_p=1.0):
    """G sampled answers to each prompt of `prompt` (left-padded model inputs) and the log-prob of each sampled token
    under the very distribution it was drawn from; returns ([P x G, T] tokens, [P x G, T] log-probs), rows of a prompt
    together, finished rows padded.

    Each prompt is prefilled once (its image through the vision tower, then its tokens) and its G samples continue
    from G copies of that KV cache: generate(num_return_sequences=G) would encode the image and prefill the prompt G
    times. Each step samples from softmax(logits / temperature) (top-p if < 1), or takes the argmax at temperature 0
    (greedy: the evaluation's answers), with generate's stop rules: the special tokens of stop["suppress_tokens"] are
    never drawn, a row ends at its first stop["eos_token_id"]. Ended rows leave the model's batch (and the cache) once
    they are a quarter of it; the samples stay exactly generate's."""
    mask = prompt["attention_mask"]
    positions = prompt_positions(model, prompt)
    cache = DynamicCache(config=model.config)
    logits = model(**prompt, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    cache.batch_repeat_interleave(group_size)
    logits = logits.float().repeat_interleave(group_size, 0)
    mask, last = mask.repeat_interleave(group_size, 0), positions[:, :, -1:].repeat_interleave(group_size, 1)
    eos = torch.tensor(stop["eos_token_id"], device=logits.device)
    finished = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    running = torch.arange(len(logits), device=logits.device)  # the rows the model still computes, as cached
    tokens, logprobs = [], []
    for step in range(max_new_tokens):
        logits[:, stop["suppress_tokens"]] = float("-inf")
        scores = logits / temperature if temperature > 0 else logits
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        scores = torch.log_softmax(scores, -1)
        token = torch.multinomial(scores.exp(), 1).squeeze(1) if temperature > 0 else scores.argmax(-1)
        token = token.masked_fill(finished, stop["pad_token_id"])
        tokens.append(token)
        logprobs.append(scores.gather(1, token[:, None]).squeeze(1).masked_fill(finished, 0.0))
        finished |= torch.isin(token, eos)
        if finished.all() or step == max_new_tokens - 1:
            break
        if finished[running].sum() * 4 >= len(running):  # dropping rows copies the cache: once a quarter are done
            keep = (~finished[running]).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            running, mask, last = running[keep], mask[keep], last[:, keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        # a finished row keeps its last logits: it is still drawn for (and padded), so every row takes the random
        # numbers it would take in generate, which computes finished rows to the end
        logits[running] = model(input_ids=token[running, None], attention_mask=mask, position_ids=last + step + 1,
                                cache=cache, use_cache=True).logits[:, -1].float()
    return torch.stack(tokens, 1), torch.stack(logprobs, 1)


def prompt_positions(model, prompt):
    """The position ids of left-padded prompts as generate passes them: [4, B, L], a text row, then the 3 M-RoPE rows
    (an image's tokens take 2-D positions)."""
    mask = prompt["attention_mask"]
    rope, _ = model.model.get_rope_index(prompt["input_ids"], prompt["mm_token_type_ids"],
                                         image_grid_thw=prompt.get("image_grid_thw"), attention_mask=mask)
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return torch.cat([text[None], rope])


# ---------------------------------------------------------------------------------------------------
# log-probs of the sampled answers

def answer_logprobs(model, rollouts, micro_batch, temperature=1.0):
    """log-probs [N, A] of every answer token under `model` at the sampling temperature, without gradients,
    `micro_batch` rows at a time (cached_logprobs): pi_old for the policy's later updates, and the reference's."""
    out = torch.zeros_like(rollouts.answer_mask, dtype=torch.float32)
    for start in range(0, len(out), micro_batch):
        idx = torch.arange(start, min(len(out), start + micro_batch), device=out.device)
        out[idx] = cached_logprobs(model, rollouts.rows(idx), temperature)
    return out


@torch.no_grad()
def cached_logprobs(model, rollouts, temperature=1.0):
    """log pi(token) [N, A] of every answer token of these rows (0 past their longest answer), without gradients: each
    prompt runs once and the G answers of its group continue from copies of its KV cache."""
    first, end = used_columns(rollouts)
    n_prompt, mask = rollouts.prompt_len, rollouts.attention_mask
    counts, heads = group_heads(rollouts.group_ids)
    prompt = {"input_ids": rollouts.input_ids[heads, first:n_prompt], "attention_mask": mask[heads, first:n_prompt],
              "mm_token_type_ids": rollouts.mm_token_type_ids[heads, first:n_prompt],
              "image_grid_thw": rollouts.image_grid_thw[heads],
              "pixel_values": torch.cat([rollouts.pixel_chunks[i] for i in heads.tolist()])}
    tokens = ("input_ids", "attention_mask", "mm_token_type_ids")
    with autocast(mask.device):
        positions = prompt_positions(model, prompt)
        cache = DynamicCache(config=model.config)
        # the prefill stops one token short: the last prompt token's hidden state predicts the first answer token, so
        # it runs again, at its own position, in the forward below, where next_token_logprobs turns states into tokens
        model(**{k: v[:, :-1] if k in tokens else v for k, v in prompt.items()}, position_ids=positions[..., :-1],
              cache=cache, use_cache=True, logits_to_keep=torch.zeros(0, dtype=torch.long, device=mask.device))
        cache.batch_select_indices(torch.repeat_interleave(torch.arange(len(counts), device=mask.device), counts))
        answer_ids = rollouts.input_ids[:, n_prompt:end]
        inputs = {"input_ids": torch.cat([prompt["input_ids"][:, -1:].repeat_interleave(counts, 0), answer_ids], 1),
                  "attention_mask": torch.cat([prompt["attention_mask"].repeat_interleave(counts, 0),
                                               mask[:, n_prompt:end]], 1),
                  "position_ids": positions[..., -1:].repeat_interleave(counts, 1)
                  + torch.arange(answer_ids.shape[1] + 1, device=mask.device), "cache": cache, "use_cache": True}
        wanted = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
        chosen, _ = next_token_logprobs(model, inputs, wanted, temperature)
    return F.pad(chosen.view(len(mask), -1), (0, rollouts.input_ids.shape[1] - end))


def training_logprobs(model, rollouts, temperature=1.0):
    """(log pi(token), the policy's entropy there) of every answer token of these rows ([N, A] each, 0 past their
    longest answer), with gradients: the policy's update. Each row runs whole; the vision tower encodes each image once
    (each_image_once)."""
    first, end = used_columns(rollouts)
    mask = rollouts.attention_mask
    _, heads = group_heads(rollouts.group_ids)
    inputs = {"input_ids": rollouts.input_ids[:, first:end], "attention_mask": mask[:, first:end],
              "mm_token_type_ids": rollouts.mm_token_type_ids[:, first:end],
              "image_grid_thw": rollouts.image_grid_thw,
              "pixel_values": torch.cat([rollouts.pixel_chunks[i] for i in heads.tolist()]), "use_cache": False}
    wanted = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    wanted[:, rollouts.prompt_len - first:] = True
    with autocast(mask.device), each_image_once(model, rollouts.group_ids, rollouts.image_grid_thw):
        chosen, entropy = next_token_logprobs(model, inputs, wanted, temperature)
    cut = rollouts.input_ids.shape[1] - end
    return F.pad(chosen.view(len(mask), -1), (0, cut)), F.pad(entropy.view(len(mask), -1), (0, cut))


def used_columns(rollouts):
    """(first, end): the columns that are not padding in every row."""
    used = rollouts.attention_mask.any(0).nonzero()
    return int(used[0]), int(used[-1]) + 1


def group_heads(group_ids):
    """(rows per group, each group's first row) of rows whose groups are contiguous."""
    _, counts = torch.unique_consecutive(group_ids, return_counts=True)
    return counts, counts.cumsum(0) - counts


@contextmanager
def each_image_once(model, owners, grids):
    """Within it, a forward given the distinct images' patches and every row's grid encodes each image once: the
    vision tower sees only the distinct grids, and its outputs are copied back to the rows that own each image
    (owners[row]: its image's number). The copies' gradients add up, as they would from one tower pass per row."""
    visual = model.model.visual
    _, distinct = torch.unique_consecutive(owners, return_inverse=True)
    _, firsts = group_heads(owners)

    def rows_of(tokens_per_image):  # each row's token indices in the tower's output
        offsets = tokens_per_image.cumsum(0) - tokens_per_image
        return torch.cat([offsets[i] + torch.arange(int(tokens_per_image[i]), device=owners.device)
                          for i in distinct.tolist()])

    patches = rows_of(grids[firsts].prod(-1))
    merged = rows_of(grids[firsts].prod(-1) // visual.spatial_merge_size ** 2)

    def copy_back(module, args, kwargs, out):
        out.last_hidden_state, out.pooler_output = out.last_hidden_state[patches], out.pooler_output[merged]
        out.deepstack_features = [feature[merged] for feature in out.deepstack_features]
        return out
    hooks = [visual.register_forward_pre_hook(lambda m, args, kwargs: (args, {**kwargs, "grid_thw": grids[firsts]}),
                                              with_kwargs=True),
             visual.register_forward_hook(copy_back, with_kwargs=True)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
