import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import engine
import evaluate
import grpo
from conftest import favour_eos, weights_and_optimizer_after, write_records
from records import load_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    return write_records(str(tmp_path_factory.mktemp("grpo_data")), 12)


def test_rollouts_keep_eos_in_the_mask_and_groups_aligned(tiny, records_file):
    model, processor = tiny
    records = [r for r in load_records(records_file) if r["task"] == "report"][:3]
    torch.manual_seed(0)
    hook = favour_eos(model, processor)
    rollouts, texts = engine.sample_rollouts(model, processor, records, 4, False, torch.device("cpu"),
                                                  max_new_tokens=12)
    hook.remove()
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    completion = rollouts.input_ids[:, rollouts.prompt_len:]
    assert rollouts.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert processor.tokenizer.pad_token_id != eos
    ended = 0
    for row, mask in zip(completion, rollouts.answer_mask):
        ends = (row == eos).nonzero().flatten()
        if len(ends):  # everything up to and including the first EOS is learned from, nothing after it
            assert mask[:ends[0] + 1].all() and not mask[ends[0] + 1:].any()
            assert (row[ends[0] + 1:] == processor.tokenizer.pad_token_id).all()
            ended += ends[0] < len(row) - 1
        else:
            assert mask.all()
    assert 0 < ended < len(completion)  # both branches ran: answers that stopped early and answers cut at the end
    image_tokens = [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>")]
    assert not torch.isin(completion, torch.tensor(image_tokens)).any()
    # each rollout is fed back with its own prompt's image: the forward equals the generation's log-probs
    for j in range(len(texts)):
        assert torch.equal(rollouts.pixel_chunks[j], rollouts.pixel_chunks[(j // 4) * 4])
    assert not torch.equal(rollouts.pixel_chunks[0], rollouts.pixel_chunks[4])


def test_training_forward_reproduces_the_sampling_distribution(tiny, records_file):
    """The log-probs of the padded training forward (left-padded prompts, one image per row) equal those of
    the distribution generate sampled from: the ratio pi / pi_old starts at exactly 1."""
    from data import generation_kwargs, prompt_batch
    model, processor = tiny
    records = [r for r in load_records(records_file) if r["task"] == "report"][:3]
    torch.manual_seed(1)
    rollouts, _ = engine.sample_rollouts(model, processor, records, 2, False, torch.device("cpu"),
                                              max_new_tokens=12)
    torch.manual_seed(1)
    out = model.generate(**prompt_batch(records, processor), do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         max_new_tokens=12, num_return_sequences=2, output_logits=True, return_dict_in_generate=True,
                         **generation_kwargs(processor.tokenizer))
    steps = len(out.logits)
    sampled = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)
    sampled = sampled.gather(-1, out.sequences[:, rollouts.prompt_len:, None]).squeeze(-1)
    forward = engine.answer_logprobs(model, rollouts, micro_batch=16)[:, :steps]
    mask = rollouts.answer_mask[:, :steps]
    assert torch.equal(out.sequences, rollouts.input_ids[:, :out.sequences.shape[1]])
    assert (forward - sampled)[mask].abs().max() < 1e-4


def test_the_update_encoding_each_image_once_has_the_gradients_of_one_tower_pass_per_row(tiny, records_file):
    """training_logprobs hands the vision tower each group's image once (each_image_once) and copies its
    output to the G rows: values and every parameter's gradient, the vision tower's included, equal a plain forward
    that encodes the image for every row. Guards a copy to the wrong rows, or a tower gradient counted once."""
    model, processor = tiny
    records = [r for r in load_records(records_file) if r["task"] == "report"][:2]  # two images of unequal size
    torch.manual_seed(0)
    rollouts, _ = engine.sample_rollouts(model, processor, records, 3, False, torch.device("cpu"), max_new_tokens=6)
    policy = copy.deepcopy(model).train()
    mask = rollouts.answer_mask

    def values_and_grads(logprobs):
        policy.zero_grad()
        (logprobs * mask).sum().backward()
        return logprobs.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    once, once_grads = values_and_grads(engine.training_logprobs(policy, rollouts)[0])
    logits = policy(**rollouts.model_inputs(), use_cache=False).logits[:, rollouts.prompt_len - 1:-1]
    plain, plain_grads = values_and_grads(torch.log_softmax(logits.float(), -1).gather(
        -1, rollouts.input_ids[:, rollouts.prompt_len:, None]).squeeze(-1))
    assert (once - plain)[mask].abs().max() < 1e-5
    assert once_grads.keys() == plain_grads.keys() and any("visual" in n for n in once_grads)
    for name, grad in plain_grads.items():
        assert (once_grads[name] - grad).abs().max() < 1e-4 * max(1.0, grad.abs().max().item()), name


def test_answers_that_end_leave_the_batch_and_the_samples_stay_generates(tiny, records_file):
    """sample_groups stops computing rows that have ended once they are a quarter of its batch: with answers that end
    at different steps, the tokens are still exactly generate's (which computes every row to the end) for one seed.
    With this seed an early group's rows end first, so rows that keep running move up: positions taken from the wrong
    rows after the drop fail it."""
    from data import generation_kwargs, prompt_batch
    model, processor = tiny
    records = [r for r in load_records(records_file) if r["task"] == "report"][:3]
    hook = favour_eos(model, processor, bias=3.0)
    torch.manual_seed(4)
    rollouts, _ = engine.sample_rollouts(model, processor, records, 4, False, torch.device("cpu"), max_new_tokens=16)
    torch.manual_seed(4)
    out = model.generate(**prompt_batch(records, processor), do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         max_new_tokens=16, num_return_sequences=4, **generation_kwargs(processor.tokenizer))
    hook.remove()
    lengths = rollouts.answer_mask.sum(1)
    assert (lengths <= lengths.max() // 2).float().mean() >= 0.25 and (lengths == lengths.max()).any(), lengths
    assert torch.equal(out, rollouts.input_ids[:, :out.shape[1]])


def test_rollout_logprobs_are_those_generate_sampled_with(tiny, records_file):
    """At temperature 0.7, the log-probs kept while sampling equal a forward pass's log-softmax of logits / 0.7 with
    the special tokens that generate suppresses at -inf; the training forward, which does not suppress them, differs
    from them by those tokens' small mass: the rollout / training mismatch the log reports."""
    from data import generation_kwargs
    model, processor = tiny
    records = [r for r in load_records(records_file) if r["task"] == "report"][:2]
    torch.manual_seed(3)
    rollouts, _ = engine.sample_rollouts(model, processor, records, 3, False, torch.device("cpu"),
                                              temperature=0.7, max_new_tokens=8)
    with torch.no_grad():
        logits = model(**rollouts.model_inputs(), use_cache=False).logits[:, rollouts.prompt_len - 1:-1] / 0.7
    logits[..., generation_kwargs(processor.tokenizer)["suppress_tokens"]] = float("-inf")
    sampled = torch.log_softmax(logits, -1).gather(-1, rollouts.input_ids[:, rollouts.prompt_len:, None]).squeeze(-1)
    mask = rollouts.answer_mask
    assert (sampled - rollouts.sampled_logprobs)[mask].abs().max() < 1e-4
    training = engine.answer_logprobs(model, rollouts, micro_batch=6, temperature=0.7)
    mismatch = grpo.health(rollouts, training, 6)["mismatch_kl"]
    assert 0 < mismatch < 0.05 and (training <= rollouts.sampled_logprobs + 1e-6)[mask].all()


def test_micro_batches_cut_to_their_own_length_and_the_first_update_reuses_its_forward(tiny, records_file):
    """answer_logprobs cuts the columns that are padding in every row of its micro-batch: one row at a time (each cut
    to its own answer) gives the same log-probs as all rows at the step's longest. pi_old (logprobs_before_update)
    takes the first update's rows from that update's own computation: they equal the cached no-gradient pass within
    rounding, and their ratios are exactly 1; the later update's rows are the cached pass's."""
    model, processor = tiny
    records = [r for r in load_records(records_file) if r["task"] == "report"][:2]
    torch.manual_seed(0)
    hook = favour_eos(model, processor)
    rollouts, _ = engine.sample_rollouts(model, processor, records, 3, False, torch.device("cpu"), max_new_tokens=12)
    hook.remove()
    lengths = rollouts.answer_mask.sum(1)
    assert lengths.min() < lengths.max()  # some micro-batches of one row are cut
    mask = rollouts.answer_mask
    together = engine.answer_logprobs(model, rollouts, micro_batch=6)
    alone = engine.answer_logprobs(model, rollouts, micro_batch=1)
    assert (together - alone)[mask].abs().max() < 1e-5 and (alone[~mask] == 0).all()
    settings = dict(beta=0.0, eps_low=0.2, eps_high=0.28, dual_clip=3.0, loss_agg="token-mean", max_new_tokens=12)
    policy = copy.deepcopy(model)
    old = grpo.logprobs_before_update(policy, rollouts, n_updates=2, micro_batch=3)
    stats = grpo.policy_update(policy, torch.optim.AdamW(policy.parameters(), lr=1e-3), rollouts, old, None,
                               torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0]), world=1, n_updates=2, micro_batch=3,
                               grad_clip=1.0, loss_settings=settings)
    assert (old - together)[mask].abs().max() < 1e-5 and torch.equal(old[3:], together[3:])
    # the largest ratio is the moved policy's, in the second update: the first update's ratios are exactly 1
    assert stats["ratio_max"] > 1.0
    policy = copy.deepcopy(model)
    one_update = grpo.policy_update(policy, torch.optim.AdamW(policy.parameters(), lr=1e-3), rollouts,
                                    grpo.logprobs_before_update(policy, rollouts, n_updates=1, micro_batch=3),
                                    None, torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0]), world=1, n_updates=1,
                                    micro_batch=3, grad_clip=1.0, loss_settings=settings)
    assert one_update["ratio_max"] == 1.0


def test_generation_in_chunks_pads_into_one_batch_without_changing_logprobs(tiny, records_file):
    """With generate_chunk, each chunk's prompts and answers have their own lengths; padded into one batch,
    every rollout's log-probs still equal those of the rollout alone, with no padding at all."""
    model, processor = tiny
    records = [r for r in load_records(records_file) if r["task"] == "report"][:2]  # 64x64 and 96x64 images
    torch.manual_seed(2)
    rollouts, _ = engine.sample_rollouts(model, processor, records, 2, False, torch.device("cpu"),
                                              max_new_tokens=12, generate_batch=1)
    assert rollouts.group_ids.tolist() == [0, 0, 1, 1]
    assert (rollouts.attention_mask[:, :rollouts.prompt_len] == 0).any()  # one chunk's prompts were padded on the left
    padded = engine.answer_logprobs(model, rollouts, micro_batch=16)
    for j in range(4):
        keep = rollouts.attention_mask[j].bool()
        alone = engine.Rollouts(input_ids=rollouts.input_ids[j][keep][None],
                                attention_mask=torch.ones(1, int(keep.sum()), dtype=torch.long),
                                mm_token_type_ids=rollouts.mm_token_type_ids[j][keep][None],
                                image_grid_thw=rollouts.image_grid_thw[j:j + 1], pixel_chunks=[rollouts.pixel_chunks[j]],
                                answer_mask=None, group_ids=torch.tensor([0]), sampled_logprobs=None, truncated=None,
                                prompt_len=int(keep[:rollouts.prompt_len].sum()))
        own = engine.cached_logprobs(model, alone)
        assert (padded[j][rollouts.answer_mask[j]] - own[0]).abs().max() < 1e-4


def _run_worker(cmd, ckpt, weightless, data, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + [os.path.join(ROOT, "tests", "grpo_worker.py"), ckpt, weightless, data, out], env=env,
                          timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.load(open(out))


def test_two_processes_load_sample_update_and_generate_as_one(tiny_checkpoint, records_file, tmp_path):
    """2 FSDP2 ranks == 1 process for: loading (only rank 0 reads the weights), sampling rollouts from the sharded
    policy, one GRPO step's updates, and greedy generation from the updated policy, gathered once per call."""
    weightless = str(tmp_path / "weightless")  # what rank 1 loads: the checkpoint without its weights file
    shutil.copytree(tiny_checkpoint, weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    one = _run_worker([sys.executable], tiny_checkpoint, weightless, records_file, str(tmp_path / "one.json"))
    two = _run_worker([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
                      tiny_checkpoint, weightless, records_file, str(tmp_path / "two.json"))
    assert two["loaded_equals_file"]
    assert two["rollouts"] == one["rollouts"] and two["texts"] == one["texts"]
    assert len(set(one["texts"])) > 1  # unequal rewards: the update is not zero
    assert abs(one["param_sum"] - two["param_sum"]) < 1e-4
    assert abs(one["param_abs"] - two["param_abs"]) < 1e-4
    assert abs(one["grad_norm"] - two["grad_norm"]) < 1e-5
    assert one["ratio_max"] > 1 and abs(one["ratio_max"] - two["ratio_max"]) < 1e-5  # the largest over both ranks
    for loss_agg in ("seq-mean", "constant"):  # the other aggregations: their normalizers span the ranks too
        a, b = one["other_losses"][loss_agg], two["other_losses"][loss_agg]
        assert abs(a["param_sum"] - b["param_sum"]) < 1e-4 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5
        assert abs(a["grad_norm"] - one["grad_norm"]) > 1e-4  # a different loss, not the token mean again
    assert two["answers"] == one["answers"]
    # one all-gather per FSDP module (decoder layers, vision blocks, root) per generate call, whatever its length
    assert two["all_gathers"]["4"] == two["all_gathers"]["12"] <= two["n_fsdp_modules"]
    # gradients are reduce-scattered into the shards at every micro-batch, never held whole until the last one
    first, second = two["grads_held"][:2]
    assert first["none"] and second["all"] and second["sharded"]
    assert two["timeout_s"] == 7200


def test_a_few_grpo_steps_raise_a_toy_reward(tiny_checkpoint, records_file):
    """Toy task: the reward is the mean token id of the answer, so GRPO must shift probability to high ids."""
    from model import load_model
    policy, processor = load_model(tiny_checkpoint, device="cpu")
    records = [r for r in load_records(records_file) if r["task"] == "report"][:4]
    loss_settings = dict(beta=0.0, eps_low=0.2, eps_high=0.28, dual_clip=3.0, loss_agg="token-mean", max_new_tokens=6)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    vocab = len(processor.tokenizer)
    means = []
    torch.manual_seed(0)
    for _ in range(10):
        policy.eval()
        rollouts, _ = engine.sample_rollouts(policy, processor, records, 6, False, torch.device("cpu"),
                                                  max_new_tokens=6)
        completion, mask = rollouts.input_ids[:, rollouts.prompt_len:].float(), rollouts.answer_mask.float()
        reward = (completion * mask).sum(1) / mask.sum(1) / vocab
        means.append(reward.mean().item())
        old = engine.answer_logprobs(policy, rollouts, micro_batch=24)
        grpo.policy_update(policy, optimizer, rollouts, old, None, grpo.group_advantages(reward, rollouts.group_ids),
                           world=1, n_updates=1, micro_batch=24, grad_clip=1.0, loss_settings=loss_settings)
    assert sum(means[-3:]) / 3 > sum(means[:3]) / 3 + 0.05, means


def run_grpo(out_dir, ckpt, data, *args):
    cmd = [sys.executable, os.path.join(ROOT, "grpo.py"), f"--init_from={ckpt}", f"--data={data}",
           f"--out_dir={out_dir}", "--task=both", "--prompts_per_step=2", "--group_size=3", "--mini_batch=1",
           "--micro_batch=3", "--max_new_tokens=8", "--lr=1e-3", "--save_every=1", "--eval_every=0", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"})
    if proc.returncode != 0:
        raise AssertionError(proc.stdout[-2000:] + proc.stderr[-3000:])
    return [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]


def test_grpo_script_logs_and_resumes_exactly(tiny_checkpoint, records_file, tmp_path):
    full = run_grpo(str(tmp_path / "full"), tiny_checkpoint, records_file, "--max_steps=3")
    assert [r["task"] for r in full] == ["report", "grounding", "report"]
    for key in ("reward_mean", "reward_std", "kl", "clip_frac", "entropy", "response_length", "zero_var_frac",
                "time_generate", "time_reference", "time_train", "time_reward", "grad_norm"):
        assert key in full[0], key
    assert "reward_report" in full[0] and "reward_grounding" in full[1]
    crashed = str(tmp_path / "crashed")
    shutil.copytree(str(tmp_path / "full"), crashed)
    shutil.rmtree(os.path.join(crashed, "step_0000003"))
    open(os.path.join(crashed, "latest"), "w").write("step_0000002")
    lines = open(os.path.join(crashed, "log.jsonl")).readlines()[:2]
    open(os.path.join(crashed, "log.jsonl"), "w").write("".join(lines))
    # resumed with a longer run: the new length is honoured (the rate is constant, so nothing else moves)
    resumed = run_grpo(crashed, tiny_checkpoint, records_file, "--max_steps=4", "--resume=True")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for key in ("reward_mean", "kl", "loss", "grad_norm", "response_length"):
        assert abs(full[2][key] - resumed[2][key]) <= 1e-6, key


def test_wandb_logs_the_rows_of_log_jsonl_and_a_table_of_sampled_answers(tiny_checkpoint, records_file, tmp_path):
    """--wandb_log=True (offline): the W&B history holds exactly log.jsonl's rows, each at its step, and each step a
    table of the first groups' answers with their prompt, reward and advantage, as rollouts.jsonl has them."""
    from conftest import wandb_history
    out = str(tmp_path / "wandb")
    log = run_grpo(out, tiny_checkpoint, records_file, "--max_steps=2", "--save_every=0", "--log_rollouts=1",
                   "--wandb_log=True", "--wandb_project=tests")
    history, files = wandb_history(out)
    assert [row["_step"] for row in history] == [row["step"] for row in log] == [1, 2]
    for row, logged in zip(history, log):
        assert {k: row[k] for k in logged} == logged
        assert {"reward_mean", "kl", "clip_frac"} <= set(row) and row["completions/_type"] == "table-file"
    table = json.load(open(os.path.join(files, history[0]["completions/path"])))
    assert table["columns"] == ["step", "id", "task", "prompt", "reference", "answer", "reward", "advantage"]
    first = json.loads(open(os.path.join(out, "rollouts.jsonl")).readline())
    assert len(table["data"]) == 2 * 3 and [r[5:] for r in table["data"][:3]] == [
        [a["text"], a["reward"], a["advantage"]] for a in first["completions"]]


def test_freeze_vision_keeps_the_vision_tower_bit_identical_and_out_of_the_optimizer(tiny_checkpoint, records_file,
                                                                                     tmp_path):
    """Two steps with --freeze_vision=True, the second with a gradient: every vision weight (blocks, mergers, patch and
    position embeddings) is bit-identical to the start, every other weight moved, and AdamW holds state and a group
    entry for exactly the weights that moved. Fails if the tower still trains (requires_grad left on, or turned off
    on the reference instead of the policy) or the optimizer is handed the frozen parameters anyway."""
    out = str(tmp_path / "frozen")
    log = run_grpo(out, tiny_checkpoint, records_file, "--max_steps=2", "--freeze_vision=True")
    assert log[-1]["grad_norm"] > 0
    changed, kept, held = weights_and_optimizer_after(tiny_checkpoint, out)
    assert kept and all(".visual." in name for name in kept)
    assert changed and held == changed and not any(".visual." in name for name in changed)


def run_wiring(tmp_path, *args):
    """grpo.py's loop for 2 steps of 4 samples per prompt through tests/grpo_wiring_worker.py (`args` come last, so
    they may change those): (what each step handed on, log.jsonl)."""
    out = str(tmp_path / "steps.json")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "grpo_wiring_worker.py"), out,
                           "--group_size=4", "--max_new_tokens=10", "--max_steps=2", "--eval_every=0", "--save_every=0",
                           f"--out_dir={tmp_path / 'run'}", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.load(open(out)), [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]


def test_each_rollout_is_scored_against_its_own_prompts_answer_and_advanced_within_its_group(tiny_checkpoint,
                                                                                           records_file, tmp_path):
    """grpo.py's loop with a reward the random tiny model earns, so that advantages are not all zero: each sampled
    answer must be scored against the gold answer of its own prompt, and its advantage must be its reward against
    its own group's (rollout j belongs to prompt j // G)."""
    steps, _ = run_wiring(tmp_path, f"--init_from={tiny_checkpoint}", f"--data={records_file}", "--task=report",
                          "--prompts_per_step=4", "--mini_batch=2")
    assert len(steps) == 2
    for step in steps:
        group = 4
        assert len(set(step["golds"])) > 1  # the prompts have different gold answers to mix up
        assert step["completions"] == step["texts"] and step["group_ids"] == [j // group for j in range(16)]
        assert step["answers"] == [step["golds"][j // group] for j in range(16)] and step["grounding"] == "soft_f1"
        rewards = torch.tensor(step["rewards"]).view(4, group)
        expected = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)
        assert torch.allclose(torch.tensor(step["advantages"]), expected.flatten(), atol=1e-5)
        assert torch.tensor(step["advantages"]).abs().max() > 0.5


def test_switches_run_in_the_loop(tiny_checkpoint, records_file, tmp_path):
    """The loop with each variant: dynamic sampling trains on P groups that all spread, drawn from 2 x P (and
    --grounding_reward reaches the reward); overlong masking of answers that all ran out of tokens leaves nothing to
    learn from; GSPO and TIS run and log."""
    common = [f"--init_from={tiny_checkpoint}", f"--data={records_file}", "--task=report", "--prompts_per_step=4",
              "--mini_batch=2"]
    steps, log = run_wiring(tmp_path / "filter", *common, "--filter_groups=2", "--grounding_reward=hit")
    for step, logged in zip(steps, log):
        assert step["grounding"] == "hit"  # the setting reaches the reward
        assert len(step["golds"]) == 8 and len(step["advantages"]) == 16  # 8 prompts drawn, 4 groups trained on
        groups = torch.tensor(step["advantages"]).view(4, 4)
        assert (groups.std(1) > 0).all() and 4 <= logged["prompts_drawn"] <= 8
    steps, log = run_wiring(tmp_path / "overlong", *common, "--overlong=mask")
    assert all(r["truncated_frac"] == 1.0 and r["grad_norm"] == 0.0 and r["loss"] == 0.0 for r in log)
    assert any(abs(a) > 0 for a in steps[0]["advantages"])  # there was something to learn, but all of it was cut
    _, log = run_wiring(tmp_path / "gspo_tis", *common, "--ratio_level=sequence", "--tis_cap=2.0")
    assert all(r["grad_norm"] > 0 and 0 <= r["mismatch_kl"] < 0.1 and "clip_frac_high" in r for r in log)


def test_logged_rollouts_are_the_groups_each_step_trained_on(tiny_checkpoint, records_file, tmp_path):
    """--log_rollouts=N: N lines a step in rollouts.jsonl, each a prompt (id, question, gold answer, image file) with
    its answers as the update saw them: the texts sampled, the rewards scored and their components, the advantages
    trained on, lengths and truncation; with every group logged the rewards average to the logged reward_mean. With
    filter_groups the lines hold the groups kept, each answer next to its own reward. Fails if a line pairs a text
    with another answer's reward, advantage or component (as when filter_groups picks rows of the rewards but not of
    the texts), or logs a step under another step's number."""
    common = [f"--init_from={tiny_checkpoint}", f"--data={records_file}", "--task=report", "--prompts_per_step=4",
              "--mini_batch=2"]
    steps, log = run_wiring(tmp_path / "all", *common, "--log_rollouts=4")
    lines = [json.loads(line) for line in open(tmp_path / "all" / "run" / "rollouts.jsonl")]
    assert [line["step"] for line in lines] == [1] * 4 + [2] * 4
    for step, logged in zip(steps, log):
        mine = [line for line in lines if line["step"] == logged["step"]]
        answers = [answer for line in mine for answer in line["completions"]]
        assert [line["reference"] for line in mine] == step["golds"]
        assert [a["text"] for a in answers] == step["completions"] and [a["reward"] for a in answers] == step["rewards"]
        assert [a["advantage"] for a in answers] == pytest.approx(step["advantages"], abs=1e-6)
        assert sum(a["reward"] for a in answers) / len(answers) == pytest.approx(logged["reward_mean"], abs=1e-6)
        for line in mine:
            assert line["prompt"] == "Write a radiology report." and os.path.isfile(line["image"])
            rewards = torch.tensor([a["reward"] for a in line["completions"]])
            expected = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
            assert [a["advantage"] for a in line["completions"]] == pytest.approx(expected.tolist(), abs=1e-5)
        for a in answers:
            assert a["components"] == {"words": len(a["text"].split())}
            assert 1 <= a["length"] <= 10 and (a["length"] == 10 if a["truncated"] else True)
    steps, log = run_wiring(tmp_path / "filter", *common, "--filter_groups=2", "--log_rollouts=4", "--group_size=2",
                            "--max_new_tokens=3", "--seed=1")  # answers of 0 to 3 words: some groups do not spread
    lines = [json.loads(line) for line in open(tmp_path / "filter" / "run" / "rollouts.jsonl")]
    reordered = 0
    for step, logged in zip(steps, log):
        rows, _ = grpo.groups_with_spread(step["rewards"], step["group_ids"], 4)  # the rows the update trained on
        answers = [answer for line in lines if line["step"] == logged["step"] for answer in line["completions"]]
        assert [a["text"] for a in answers] == [step["completions"][j] for j in rows]
        assert [a["reward"] for a in answers] == [step["rewards"][j] for j in rows]
        assert [a["advantage"] for a in answers] == pytest.approx(step["advantages"], abs=1e-6)
        reordered += rows != list(range(len(rows)))
    assert reordered  # a group was left out before a kept one, so kept row j is not drawn row j


def test_every_grounding_step_takes_prompts_of_each_grounding_task(tiny_checkpoint, tmp_path):
    """The mean reward of a step should not swing with its mix of easy and hard tasks: one step of 3 prompts
    holds one anatomical, one abnormality and one phrase grounding prompt, and logs each task's mean reward."""
    steps, log = run_wiring(tmp_path, f"--init_from={tiny_checkpoint}", "--data=synthetic", "--n_train=30",
                            "--task=grounding", "--prompts_per_step=3", "--mini_batch=3")
    for step, logged in zip(steps, log):
        assert sorted(step["tasks"]) == ["abnormality_grounding", "anatomical_grounding", "phrase_grounding"]
        for p, task in enumerate(step["tasks"]):  # each task's mean reward over its prompt's 4 rollouts
            assert logged[f"reward_{task}"] == pytest.approx(sum(step["rewards"][4 * p:4 * p + 4]) / 4), task
        assert len({logged[f"reward_{t}"] for t in step["tasks"]}) > 1  # rewards that differ: their order shows


def test_missing_sft_checkpoint_gives_a_hint(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "grpo.py"), f"--init_from={tmp_path}/no/such/run"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "Run `python sft.py` first" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_held_out_rewards_are_greedy_and_per_task(tiny, records_file):
    model, processor = tiny
    records = load_records(records_file)
    eval_sets = {"report": [r for r in records if r["task"] == "report"][:3],
                 "grounding": [r for r in records if r["task"] == "anatomical_grounding"][:2]}
    settings = dict(thinking=False, max_new_tokens=8, report_reward="gleu", metric_weights="")
    first = evaluate.held_out_rewards(model, processor, eval_sets, torch.device("cpu"), **settings)
    assert sorted(first) == ["val_reward_grounding", "val_reward_report"]
    # gold report answers that are the model's own greedy answers (a logit bias makes them words, not newlines): a
    # greedy evaluation scores exactly 1 (GLEU of identical texts), where sampled answers would differ from them
    the = processor.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    hook = model.lm_head.register_forward_hook(
        lambda module, inputs, logits: logits + 6.0 * torch.nn.functional.one_hot(torch.tensor(the), logits.shape[-1]))
    greedy = evaluate.generate_answers(model, processor, eval_sets["report"], 8, False, 8, torch.device("cpu"),
                                       progress=False)
    own = [{**r, "conversations": r["conversations"][:1] + [{"from": "gpt", "value": a}]}
           for r, a in zip(eval_sets["report"], greedy)]
    torch.manual_seed(0)
    scored = evaluate.held_out_rewards(model, processor, {"report": own}, torch.device("cpu"), **settings)
    hook.remove()
    assert "the" in greedy[0] and scored == {
        "val_reward_report": pytest.approx(1.0)}
