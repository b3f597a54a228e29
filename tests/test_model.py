import json
import os

import pytest
import torch

import model as model_lib
from conftest import gray_image
from checkpoints import save_checkpoint
from model import build_tiny, load_model


def _inputs(processor, image, question="Write a radiology report for this Chest X-ray.", answer=None):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)
    return processor(text=[text], images=[image.convert("RGB")], return_tensors="pt")


def test_round_trip_gives_identical_logits(tmp_path):
    model, processor = build_tiny(seed=3)
    model.eval()
    inputs = _inputs(processor, gray_image(128, 96))
    with torch.no_grad():
        before = model(**inputs).logits
    path = save_checkpoint(model, processor, str(tmp_path / "ckpt"))
    loaded, loaded_processor = load_model(path, device="cpu")
    inputs2 = _inputs(loaded_processor, gray_image(128, 96))
    assert torch.equal(inputs["input_ids"], inputs2["input_ids"])
    assert torch.equal(inputs["pixel_values"], inputs2["pixel_values"])
    with torch.no_grad():
        after = loaded.eval()(**inputs2).logits
    assert torch.equal(before, after)


def test_checkpoint_loads_with_plain_transformers(tiny_checkpoint, tiny):
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    model, processor = tiny
    plain = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    inputs = _inputs(processor, gray_image(64, 64))
    with torch.no_grad():
        assert torch.equal(plain(**inputs).logits, model(**inputs).logits)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert tokenizer.chat_template == model_lib.CHAT_TEMPLATE
    files = set(os.listdir(tiny_checkpoint))
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
            "preprocessor_config.json", "video_preprocessor_config.json", "chat_template.jinja"} <= files
    # a subclass name here would make AutoProcessor return only the tokenizer on a GPU machine
    assert (json.load(open(os.path.join(tiny_checkpoint, "processor_config.json")))["processor_class"]
            == "Qwen3VLProcessor")


def test_tokenizer_has_qwen_added_tokens_in_order(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t, _ in model_lib.QWEN_ADDED_TOKENS]
    assert ids == list(range(ids[0], ids[0] + 26))
    assert ids[-1] == len(tok) - 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id
    # <think> is a plain (non-special) added token: it survives skip_special_tokens, <|im_end|> does not
    text = "<think>\nlook\n</think>\n\nanswer<|im_end|>"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == "<think>\nlook\n</think>\n\nanswer"


@pytest.mark.parametrize("width,height", [(128, 128), (96, 160), (300, 200), (20, 20)])
def test_image_token_count_matches_grid(tiny, width, height):
    model, processor = tiny
    inputs = _inputs(processor, gray_image(width, height))
    t, h, w = inputs["image_grid_thw"][0].tolist()
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == t * h * w // 4
    assert inputs["pixel_values"].shape[0] == t * h * w
    size = processor.image_processor.size
    assert size["shortest_edge"] <= h * w * 16 * 16 <= size["longest_edge"]


def test_chat_template_and_assistant_mask_with_thinking(tiny):
    _, processor = tiny
    answer = "<think>\nThe heart is enlarged.\n</think>\n\nCardiomegaly."
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Report? /think"}]},
                {"role": "assistant", "content": answer}]
    text = processor.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Report? /think<|im_end|>\n"
                    "<|im_start|>assistant\n" + answer + "<|im_end|>\n")
    prompt = processor.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and text.startswith(prompt)
    out = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}],
        tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert processor.tokenizer.decode(masked) == answer + "<|im_end|>"


def test_attention_falls_back_to_sdpa_without_flash_attn(tiny, monkeypatch):
    monkeypatch.setattr(model_lib, "_flash_attn_works", lambda: False)
    assert model_lib.attention_implementation() == "sdpa"
    model, processor = tiny
    assert model.config._attn_implementation == "sdpa"
    inputs = _inputs(processor, gray_image(64, 64))
    eager = type(model)(model.config).eval()
    eager.load_state_dict(model.state_dict())
    eager.config._attn_implementation = "eager"
    with torch.no_grad():
        assert torch.allclose(eager(**inputs).logits, model(**inputs).logits, atol=1e-5)


def test_generate_stops_at_eos_and_pad_differs(tiny):
    model, processor = tiny
    inputs = _inputs(processor, gray_image(64, 64))
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    hook = model.lm_head.register_forward_hook(  # the EOS logit far ahead: the answer is EOS at once, and ends there
        lambda module, args, logits: logits + 50.0 * torch.nn.functional.one_hot(torch.tensor(eos), logits.shape[-1]))
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    hook.remove()
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == [eos]
    gc = model.generation_config
    assert (processor.tokenizer.eos_token_id in gc.eos_token_id
            and gc.pad_token_id not in (processor.tokenizer.eos_token_id,))


def test_killed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model, processor = build_tiny(seed=1)
    path = save_checkpoint(model, processor, str(tmp_path / "latest"))
    before = open(os.path.join(path, "model.safetensors"), "rb").read()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")
    monkeypatch.setattr(type(processor), "save_pretrained", crash)
    other, _ = build_tiny(seed=2)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(other, processor, path)
    assert open(os.path.join(path, "model.safetensors"), "rb").read() == before
    assert os.listdir(tmp_path) == ["latest"]  # no half-written temporary folder left behind
    load_model(path, device="cpu")


def test_bad_paths_give_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a hub id"):
        load_model(str(tmp_path / "missing" / "ckpt"))
    with pytest.raises(RuntimeError, match="cannot get 'Qwen/Qwen3-VL-2B-Instruct'"):
        load_model("Qwen/Qwen3-VL-2B-Instruct")


def test_random_models_of_the_real_shapes_have_the_published_sizes():
    """Qwen3-VL-2B / 4B / 8B-Instruct have 2.13 / 4.44 / 8.77 B parameters (their safetensors); the shapes used by
    the benchmarks and the memory table must match them."""
    from model import build_random
    for shape, billions in (("2b", 2.13), ("4b", 4.44), ("8b", 8.77)):
        model, _ = build_random(shape)  # meta device: no memory
        assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - billions) < 0.005, shape
