"""
model.py: the one place that knows how to get a Qwen3-VL, save it, and spread it over ranks.

Two faces, one code path:
- the real path: `load_model("Qwen/Qwen3-VL-8B-Instruct")` (or any local checkpoint dir in Hugging Face
  layout: -2B/-4B/-8B/-32B, -Instruct/-Thinking, the MoE variants) -> (model, processor);
- the embedded default: `build_tiny()` builds a tiny *random* Qwen3-VL (the real architecture with small
  sizes) plus a byte-level BPE tokenizer carrying all 26 Qwen added tokens in their real order and a
  Qwen3-VL-style chat template, offline, in about a second. `save_checkpoint` writes it in exactly the
  layout of a real checkpoint, so everything downstream loads it through `load_model(path)`.

    python -c "from model import build_tiny, save_checkpoint; m, p = build_tiny(); save_checkpoint(m, p, 'out/tiny')"
    python -c "from transformers import AutoModelForImageTextToText as A; print(A.from_pretrained('out/tiny'))"

The processor: transformers' `Qwen3VLProcessor` insists on a video processor that needs torchvision, which
does not import beside a CPU torch. Where torchvision works we use `AutoProcessor`; elsewhere an image-only
processor (`ImageOnlyQwen3VLProcessor`) built from the same files. Both save the same folder, whose
`processor_config.json` names `Qwen3VLProcessor`, so AutoProcessor and vLLM load it on a GPU machine.

Distributed: `init_distributed` (torchrun env; nccl on GPU, gloo on CPU; a 2-hour collective timeout),
`load_model(rank0_only=True)` + `wrap_fsdp` (FSDP2 `fully_shard` per decoder layer and vision block, then the root,
filled with rank 0's weights: the other ranks never read them), `gathered` (a sharded model whole for generation),
`print0`, `full_state_dict` (gather for saving), checkpoints exported in the compute dtype.
Safety: never `trust_remote_code`; weights only as safetensors.
"""

import datetime
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

# The 26 tokens Qwen2.5/Qwen3 add after the byte-level vocabulary, in their real order (ids 151643..151668
# in the real tokenizer). The tiny tokenizer keeps the order, so special-token logic is identical.
QWEN_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", True), ("<|fim_middle|>", True), ("<|fim_suffix|>", True), ("<|fim_pad|>", True),
    ("<|repo_name|>", True), ("<|file_sep|>", True), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
# Qwen's pre-tokenizer: digits split one per token, words with their leading space, punctuation runs.
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen3-VL's chat format: <|im_start|>role\n ... <|im_end|>\n, an image as <|vision_start|><|image_pad|>
# <|vision_end|> before the text. The {% generation %} markers make `return_assistant_tokens_mask=True`
# return the SFT loss mask: the assistant text and its closing <|im_end|> (the EOS the model must learn),
# not the role header and not the newline after it. Thinking is asked for in the user text (the paper's
# " /think" suffix, see data.py), so the same prompts work on any Qwen3-VL checkpoint's own template.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}{%- generation -%}"
    "{%- for part in parts -%}{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}{%- endfor -%}"
    "{{- '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- for part in parts -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Image geometry shared by Qwen3-VL: 16-px patches, 2x2 merge -> one visual token per 32x32 pixels.
PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE = 16, 2, 2
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 32 * 32, 128 * 128  # the synthetic world: 128 px -> 16 visual tokens


def _torchvision_works():
    try:
        import torchvision  # noqa: F401
        torchvision.ops.nms  # the CUDA wheel beside a CPU torch fails here, not at import
        return True
    except Exception:
        return False


def _flash_attn_works():
    try:
        import flash_attn  # noqa: F401
        return torch.cuda.is_available()
    except Exception:
        return False


def attention_implementation():
    """flash_attention_2 when it imports and a GPU is there, else PyTorch's sdpa."""
    return "flash_attention_2" if _flash_attn_works() else "sdpa"


# ----------------------------------------------------------------------------------------------------
# processor

def _image_only_processor_class():
    from transformers import Qwen3VLProcessor

    class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
        """Qwen3VLProcessor without the (torchvision-only) video processor; saves as Qwen3VLProcessor."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template)

        def save_pretrained(self, save_directory, **kwargs):
            out = super().save_pretrained(save_directory, **kwargs)
            _write_real_processor_files(save_directory, self.image_processor)
            return out

    return ImageOnlyQwen3VLProcessor


def _write_real_processor_files(save_directory, image_processor):
    """Make the folder load as a full Qwen3VLProcessor (AutoProcessor, vLLM) where torchvision exists."""
    cfg_path = os.path.join(save_directory, "processor_config.json")
    cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
    cfg["processor_class"] = "Qwen3VLProcessor"  # a subclass name here makes AutoProcessor return a tokenizer
    cfg.pop("video_processor", None)
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    video_cfg = {
        "video_processor_type": "Qwen3VLVideoProcessor", "processor_class": "Qwen3VLProcessor",
        "patch_size": image_processor.patch_size, "temporal_patch_size": image_processor.temporal_patch_size,
        "merge_size": image_processor.merge_size, "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std), "size": {"shortest_edge": 4096, "longest_edge": 25165824},
    }
    json.dump(video_cfg, open(os.path.join(save_directory, "video_preprocessor_config.json"), "w"), indent=2)
    # the image processor also as its own file, the layout of the released Qwen3-VL checkpoints
    image_cfg = {**cfg.get("image_processor", image_processor.to_dict()), "processor_class": "Qwen3VLProcessor"}
    json.dump(image_cfg, open(os.path.join(save_directory, "preprocessor_config.json"), "w"), indent=2)


def load_processor(path, min_pixels=None, max_pixels=None):
    """The processor of a checkpoint dir or hub id; image-only when torchvision cannot be used."""
    if _torchvision_works():
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained(path)
    else:
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        chat_template = getattr(tokenizer, "chat_template", None)
        template_file = os.path.join(path, "chat_template.jinja") if os.path.isdir(path) else None
        if template_file and os.path.exists(template_file):
            chat_template = open(template_file).read()
        processor = _image_only_processor_class()(image_processor, tokenizer, chat_template=chat_template)
    size = processor.image_processor.size
    processor.image_processor.size = {  # the pixel budget per image: min_pixels .. max_pixels
        "shortest_edge": int(min_pixels if min_pixels is not None else size["shortest_edge"]),
        "longest_edge": int(max_pixels if max_pixels is not None else size["longest_edge"])}
    return processor


def build_processor(tokenizer, min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS):
    """An image-only Qwen3-VL processor around `tokenizer` with Qwen3-VL's image geometry."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return _image_only_processor_class()(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)


# ----------------------------------------------------------------------------------------------------
# the tiny model

def build_tokenizer(texts, vocab_size=1024):
    """A byte-level BPE trained on `texts` with Qwen's pre-tokenizer, wrapped as a Qwen2 tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    n_base = vocab_size - len(QWEN_ADDED_TOKENS)
    trainer = trainers.BpeTrainer(vocab_size=n_base, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    from tokenizers import AddedToken
    bpe.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t, s in QWEN_ADDED_TOKENS if s and t not in ("<|im_end|>", "<|endoftext|>")],
        clean_up_tokenization_spaces=False, model_max_length=131072, split_special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# A small built-in corpus so that build_tiny() works with no arguments (tests); the stage scripts pass the
# texts of their data instead, so the tokenizer knows the words it will see.
_DEFAULT_CORPUS = [
    "Write a radiology report for this Chest X-ray.", "Where is the right lung located in this Chest X-ray?",
    "The heart size is normal. No pleural effusion or pneumothorax. The lungs are clear.",
    "Mild cardiomegaly. Small left pleural effusion. Right lower lobe consolidation.",
    "The right lung is located at the coordinates [0.12, 0.2, 0.48, 0.81] on the image.",
    "Are there any abnormalities on this Chest X-ray? The following abnormalities are identified: edema.",
    "Please locate the following sentence: This finding is located at [0.5, 0.12, 0.8, 1.0] in the image.",
    "<think>\nFirst I review the lungs, then the heart and mediastinum.\n</think>\n\nNo acute findings.",
] * 4


# The published sizes of Qwen3-VL (text tower = Qwen3-1.7B / 4B / 8B; vocabulary 151,936; 16-pixel patches),
# for random models of the real shape: benchmarks, the GPU check and the memory table.
_QWEN3_VL_COMMON = dict(head_dim=128, vision_heads=16, rope_theta=5000000.0, mrope_section=[24, 20, 20],
                        num_position_embeddings=2304)
QWEN3_VL_SHAPES = {
    "2b": dict(hidden_size=2048, num_layers=28, num_heads=16, num_kv_heads=8, intermediate_size=6144,
               vision_depth=24, vision_hidden=1024, vision_intermediate=4096, deepstack=[5, 11, 17],
               tie_embeddings=True, **_QWEN3_VL_COMMON),
    "4b": dict(hidden_size=2560, num_layers=36, num_heads=32, num_kv_heads=8, intermediate_size=9728,
               vision_depth=24, vision_hidden=1024, vision_intermediate=4096, deepstack=[5, 11, 17],
               tie_embeddings=True, **_QWEN3_VL_COMMON),
    "8b": dict(hidden_size=4096, num_layers=36, num_heads=32, num_kv_heads=8, intermediate_size=12288,
               vision_depth=27, vision_hidden=1152, vision_intermediate=4304, deepstack=[8, 16, 24],
               tie_embeddings=False, **_QWEN3_VL_COMMON),
}
QWEN3_VL_VOCAB = 151936


def qwen3_vl_config(tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vision_depth,
                    vision_hidden, vision_heads, head_dim=None, vision_intermediate=None, deepstack=(0,),
                    tie_embeddings=True, vocab_size=None, rope_theta=10000.0, mrope_section=None,
                    num_position_embeddings=64):
    """A Qwen3VLConfig whose special token ids are `tokenizer`'s. `vocab_size` (the embedding rows) defaults to
    the tokenizer's size; a real-shaped model keeps Qwen's 151,936 rows around a small tokenizer (ids past the
    tokenizer decode to nothing), so its compute and memory are the real model's."""
    from transformers import Qwen3VLConfig
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _ in QWEN_ADDED_TOKENS}
    head_dim = head_dim or hidden_size // num_heads
    quarter = head_dim // 4
    mrope_section = mrope_section or [head_dim // 2 - 2 * quarter, quarter, quarter]  # (t, h, w): head_dim / 2
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab_size or len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
            head_dim=head_dim, max_position_embeddings=262144, pad_token_id=ids["<|endoftext|>"],
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_interleaved": True,
                             "mrope_section": mrope_section},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], tie_word_embeddings=tie_embeddings),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_intermediate or 4 * vision_hidden,
            num_heads=vision_heads, patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE, out_hidden_size=hidden_size,
            num_position_embeddings=num_position_embeddings, deepstack_visual_indexes=list(deepstack)),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_embeddings)


def build_tiny(texts=None, vocab_size=1024, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
               intermediate_size=384, vision_depth=2, vision_hidden=64, vision_heads=4,
               min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS, seed=0):
    """A tiny random Qwen3-VL (real architecture) and its processor, built offline in about a second."""
    from transformers import Qwen3VLForConditionalGeneration
    tokenizer = build_tokenizer(texts or _DEFAULT_CORPUS, vocab_size=vocab_size)
    config = qwen3_vl_config(tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size,
                             vision_depth, vision_hidden, vision_heads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    _set_generation_defaults(model, tokenizer)
    model.config._attn_implementation = "sdpa"
    return model, build_processor(tokenizer, min_pixels, max_pixels)


def build_random(shape, device="meta", dtype=torch.float32, texts=None, min_pixels=TINY_MIN_PIXELS,
                 max_pixels=TINY_MAX_PIXELS, attn_implementation=None):
    """A randomly initialised Qwen3-VL of a published size ("2b", "4b", "8b") with a small offline tokenizer.
    On the meta device it costs no memory (for counting parameters)."""
    from transformers import AutoModelForImageTextToText
    tokenizer = build_tokenizer(texts or _DEFAULT_CORPUS)
    config = qwen3_vl_config(tokenizer, vocab_size=QWEN3_VL_VOCAB, **QWEN3_VL_SHAPES[shape])
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation or attention_implementation())
    _set_generation_defaults(model, tokenizer)
    return model, build_processor(tokenizer, min_pixels, max_pixels)


def _set_generation_defaults(model, tokenizer):
    """A fresh generation config: greedy unless asked, and sampling from the plain softmax at the temperature the
    caller gives. A checkpoint's own generation_config.json (Qwen3-VL-Instruct: top_k 20, top_p 0.8, temperature
    0.7; others add repetition penalties) is dropped: GRPO's ratio assumes it sampled from pi_theta itself."""
    from transformers import GenerationConfig
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), end],
        pad_token_id=end,  # pad != EOS: EOS stays in the loss mask
        bos_token_id=end)


# ----------------------------------------------------------------------------------------------------
# loading and saving

def default_device():
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def tiny_corpus():
    """The texts the tiny model's tokenizer is trained on: the chest X-ray world's and the general world's, so that
    one vocabulary serves the general model, the SFT model made from it and every stage after them."""
    import shapes
    import synthetic
    return synthetic.corpus_texts() + shapes.corpus_texts()


def load_model(name_or_path, dtype=None, device=None, attn_implementation=None, min_pixels=None,
               max_pixels=None, rank0_only=False, seed=0):
    """(model, processor) from a local checkpoint dir, a training output dir (its newest step), a hub id
    (Qwen/Qwen3-VL-8B-Instruct, ...), or "tiny": the tiny random Qwen3-VL of `seed` (build_tiny, its tokenizer trained
    on tiny_corpus()), which every stage can start from offline.

    dtype defaults to bfloat16 on GPU and float32 on CPU; attention to flash_attention_2 when it imports.
    rank0_only (torchrun, before wrap_fsdp): only rank 0 reads the weights, into host memory; every other rank
    gets the same model on the meta device (no memory), and wrap_fsdp broadcasts rank 0's weights into the
    shards. 8 ranks x a whole fp32 8B model (35 GB each) would not fit a node's host memory.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if name_or_path == "tiny":
        model, processor = build_tiny(texts=tiny_corpus(), seed=seed, min_pixels=min_pixels or TINY_MIN_PIXELS,
                                      max_pixels=max_pixels or TINY_MAX_PIXELS)
        return model.to(device, dtype), processor
    if os.path.isdir(name_or_path) and not os.path.exists(os.path.join(name_or_path, "config.json")):
        if latest_checkpoint(name_or_path) is None:
            raise FileNotFoundError(f"{name_or_path} holds neither a checkpoint (config.json) nor a 'latest' step")
        name_or_path = latest_checkpoint(name_or_path)  # a training output dir: its newest step
    if not os.path.isdir(name_or_path):
        if os.path.sep in name_or_path.strip("/").replace("/", "", 1) or name_or_path.startswith((".", "/")):
            raise FileNotFoundError(f"model path {name_or_path!r} is neither a local directory nor a hub id")
        from huggingface_hub import snapshot_download
        try:  # resolve the hub id now, so an offline machine gets one clear line instead of a traceback
            name_or_path = snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.jinja",
                                                                          "*.txt", "*.model", "*.tiktoken"])
        except Exception as e:
            raise RuntimeError(
                f"cannot get {name_or_path!r} from the Hugging Face hub ({type(e).__name__}); on an offline "
                f"machine download it elsewhere and pass the local directory instead") from None
    attn_implementation = attn_implementation or attention_implementation()
    if rank0_only and dist.get_rank() != 0:
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(name_or_path), dtype=dtype,
                                                            attn_implementation=attn_implementation)
    else:
        model = AutoModelForImageTextToText.from_pretrained(
            name_or_path, dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True,
            trust_remote_code=False)
    processor = load_processor(name_or_path, min_pixels=min_pixels, max_pixels=max_pixels)
    _set_generation_defaults(model, processor.tokenizer)
    return (model if rank0_only else model.to(device)), processor


def save_checkpoint(model, processor, out_dir, state_dict=None, dtype=None):
    """Write an HF-format checkpoint (safetensors + configs + processor) atomically.

    The folder is written next to `out_dir` under a temporary name and renamed into place, so a crash leaves
    either the previous checkpoint or the new one, never half of one. `state_dict` (e.g. gathered from
    FSDP shards) replaces the model's own; `dtype` casts its floats and says so in config.json.
    """
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(out_dir)}-{os.getpid()}-{time.time_ns()}")
    try:
        write_hf_model(model, processor, tmp, state_dict, dtype)
        for name in os.listdir(tmp):  # flush to disk before the rename makes it visible
            path = os.path.join(tmp, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(out_dir):
        old = os.path.join(parent, f".old-{os.path.basename(out_dir)}-{time.time_ns()}")
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def write_hf_model(model, processor, folder, state_dict=None, dtype=None):
    """save_pretrained of the model (or of `state_dict`), its floats in `dtype` when given, config.json saying so
    (save_pretrained writes the dtype of the weights in memory, fp32 master weights here), and the processor."""
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v
                      for k, v in (state_dict if state_dict is not None else model.state_dict()).items()}
    model.save_pretrained(folder, state_dict=state_dict)
    if dtype is not None:
        config_file = os.path.join(folder, "config.json")
        config = json.load(open(config_file))
        for part in [config] + [v for v in config.values() if isinstance(v, dict) and "dtype" in v]:
            part["dtype"] = str(dtype).removeprefix("torch.")
        json.dump(config, open(config_file, "w"), indent=2)
    processor.save_pretrained(folder)


def export_model(model, processor, path, dtype=torch.float32):
    """The HF-format model alone at `path` (no training state: a starting point for later stages), written atomically
    over the one there; every rank must call (a sharded model is gathered), rank 0 writes."""
    full = full_state_dict(model)
    if not is_distributed() or dist.get_rank() == 0:
        save_checkpoint(model, processor, path, state_dict=full, dtype=dtype)
    barrier()



# ----------------------------------------------------------------------------------------------------
# log-probs of chosen tokens without the full-vocabulary logits

# Positions whose logits exist at once: chunk x vocab floats (Qwen's 151,936: 0.6 GB in fp32 for 1,024 positions),
# where B x T x vocab would be tens of GB for GRPO's micro-batches of long answers.
LOGPROB_CHUNK = 1024


class ChosenLogprobs(torch.autograd.Function):
    """log softmax(hidden @ weight.T / temperature)[target] for each row of `hidden` [N, H], and the entropy of that
    softmax (no gradient), a chunk of rows at a time. The backward recomputes each chunk's logits from the saved
    hidden states and the per-row log-sum-exp instead of keeping them: d logprob / d logits = onehot - softmax."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, targets, temperature, chunk):
        chosen = torch.empty(len(hidden), dtype=torch.float32, device=hidden.device)
        lse, entropy = torch.empty_like(chosen), torch.empty_like(chosen)
        with torch.no_grad():  # in place where it can be: one chunk x vocab tensor at a time
            for start in range(0, len(hidden), chunk):
                rows = slice(start, start + chunk)
                logprobs = torch.nn.functional.linear(hidden[rows], weight).float().div_(temperature)
                lse[rows] = torch.logsumexp(logprobs, -1)
                logprobs.sub_(lse[rows, None])
                chosen[rows] = logprobs.gather(1, targets[rows, None]).squeeze(1)
                entropy[rows] = -(logprobs.exp()[:, None, :] @ logprobs[:, :, None]).flatten()
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return chosen, entropy

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_chosen, grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for start in range(0, len(hidden), ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            grad_logits = torch.nn.functional.linear(hidden[rows], weight).float().div_(ctx.temperature)
            grad_logits.sub_(lse[rows, None]).exp_().mul_(-grad_chosen[rows, None])  # -softmax x grad, in place
            grad_logits.scatter_add_(1, targets[rows, None], grad_chosen[rows, None])  # + onehot x grad
            grad_logits = grad_logits.div_(ctx.temperature).to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ hidden[rows].to(weight.dtype)).float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def next_token_logprobs(model, inputs, wanted, temperature=1.0, chunk=LOGPROB_CHUNK):
    """(log-prob, entropy) of input_ids[b, j] given input_ids[b, :j] at every position where `wanted` [B, L] is True,
    each 1-D in row-major order, from the final hidden states and the output projection, chunk by chunk: no
    B x L x vocab tensor exists in the forward or the backward.

    The projection runs inside the model's own forward, in a hook on the final norm, and the model is asked for no
    logits at all: under FSDP2 the root's weights (lm_head among them) are gathered only inside the root's forward,
    and calling a sharded module outside it fails ("mixed torch.Tensor and DTensor")."""
    targets = inputs["input_ids"][:, 1:][wanted[:, 1:]]
    out = []

    def project(module, args, hidden):
        out.append(ChosenLogprobs.apply(hidden[:, :-1][wanted[:, 1:]], model.lm_head.weight, targets, temperature,
                                        chunk))
    handle = model.model.language_model.norm.register_forward_hook(project)
    try:
        model(**inputs, logits_to_keep=torch.zeros(0, dtype=torch.long, device=targets.device))
    finally:
        handle.remove()
    return out[0]


# ----------------------------------------------------------------------------------------------------
# distributed

# How long a rank waits in a collective before the run is declared hung. torch's default (10 minutes with NCCL)
# is shorter than some honest waits: rank 0 alone writing an 8B checkpoint, cold-start teacher ranks finishing
# hours of generation minutes apart.
DIST_TIMEOUT = datetime.timedelta(hours=2)


def init_distributed():
    """(rank, local_rank, world_size, device) from torchrun's env; a plain process is rank 0 of 1."""
    if "RANK" not in os.environ:
        return 0, 0, 1, default_device()
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank), timeout=DIST_TIMEOUT)
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo", timeout=DIST_TIMEOUT)
        device = torch.device("cpu")
    return rank, local_rank, world, device


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def end_distributed():
    """The last line of a torchrun worker: every rank waits for the others, leaves the process group and exits at once.
    Exiting normally races gloo's worker threads: one may still be freeing the last collective's tensors, which
    takes the GIL, and once the interpreter has begun shutting down that aborts the process (SIGABRT, "terminate
    called without an active exception"; 5 runs in 48 of tests/fsdp_worker.py beside a busy loop on 2 CPU cores).
    os._exit skips that shutdown."""
    if not is_distributed():
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def print0(*args, **kwargs):
    if not is_distributed() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_mean(values):
    """Average a dict of floats over ranks (for logging)."""
    if not is_distributed():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t)
    return {k: v / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def wrap_fsdp(model, device, bf16=None):
    """FSDP2: shard every text decoder layer and vision block, then the root, with rank 0's weights.

    Rank 0's weights and buffers are broadcast into every rank's shards on `device`, so the other ranks may hold
    an empty meta-device model (load_model(rank0_only=True)); the rotary `inv_freq` buffers are not in a state
    dict and are broadcast too. On GPU parameters are held in bf16 for compute with fp32 gradient reduction; on
    CPU everything stays fp32. Create the optimizer after this call. Every rank must run the vision tower in
    every forward (give each micro-batch an image, see data.py), or the collectives go out of step.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    rank0 = dist.get_rank() == 0
    weights = model.state_dict() if rank0 else {}
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()} if rank0 else {}
    bf16 = torch.cuda.is_available() if bf16 is None else bf16
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    for module in model.modules():
        if type(module).__name__ in ("Qwen3VLTextDecoderLayer", "Qwen3VLMoeTextDecoderLayer",
                                     "Qwen3VLVisionBlock", "Qwen3VLMoeVisionBlock"):
            fully_shard(module, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    model.to_empty(device=device)
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if rank0:
                buffer.copy_(buffers[name])
            dist.broadcast(buffer, src=0)
    # FSDP2 names its root at the first forward, which must then enter through the root; generate's image encoding
    # enters through the vision blocks, so name it now
    model._get_fsdp_state()._lazy_init()
    return model


@contextmanager
def gathered(model):
    """Generation on an FSDP2 model: every shard all-gathered once on entry and kept until exit.

    Needed twice over: `generate` encodes images through `get_image_features`, outside the root module's
    forward hooks, so after a backward has resharded the root the vision conv would meet DTensor weights; and
    with the decoder blocks' reshard-after-forward every decode step would all-gather every block again (~14 GB
    per token at 8B). Held whole, the model needs no collective until exit, so ranks may finish generating at
    different lengths (no synced_gpus). Costs one unsharded copy of the weights (bf16 on GPU) while inside.
    """
    from torch.distributed.fsdp import FSDPModule
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()
            module.set_reshard_after_forward(module is not model, recurse=False)  # wrap_fsdp's (and FSDP2's) own


def full_state_dict(model):
    """The full (unsharded) state dict on CPU, gathered from FSDP2 shards if needed; every rank must call."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if not is_distributed():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def compute_dtype(device):
    """What the models compute in: bf16 on GPU (autocast or FSDP2 mixed precision), fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast(device):
    """bf16 autocast on GPU, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=compute_dtype(device))
    return nullcontext()


def barrier():
    if is_distributed():
        dist.barrier()


# ----------------------------------------------------------------------------------------------------
# training checkpoints: what exact resume needs, next to an HF-format model

def save_training_checkpoint(out_dir, step, model, optimizer, processor, train_state, keep_last=2,
                             dtype=torch.float32):
    """Write out_dir/step_NNNNNNN atomically and point out_dir/latest at it; every rank must call.

    The folder holds the HF-format model in `dtype` (loadable by transformers and vLLM; pass the compute dtype,
    bf16 on GPU: what people download and serve, half the size of the fp32 master weights) and, for exact
    resume, the
    sharded model + optimizer state (torch.distributed.checkpoint, written by every rank), each rank's RNG
    state, and `train_state.json` (step, data cursor, ...). It is written under a temporary name and renamed
    when complete; `latest` is replaced atomically afterwards, so a crash at any moment leaves the previous
    checkpoint as the latest. Only the newest `keep_last` step folders are kept (0: all), so that one is there to fall
    back on when the newest cannot be read (resume_training_checkpoint).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    rank = dist.get_rank() if is_distributed() else 0
    name = f"step_{step:07d}"
    final, tmp = os.path.join(out_dir, name), os.path.join(out_dir, f".tmp-{name}")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=os.path.join(tmp, "train_state"))
    torch.save({"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None},
               os.path.join(tmp, f"rng_rank{rank}.pt"))
    full = full_state_dict(model)
    barrier()
    if rank == 0:
        write_hf_model(model, processor, tmp, full, dtype)
        with open(os.path.join(tmp, "train_state.json"), "w") as f:
            json.dump(train_state, f, indent=1)
        for root, _, files in os.walk(tmp):
            for file in files:
                with open(os.path.join(root, file), "rb") as f:
                    os.fsync(f.fileno())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
        with open(os.path.join(out_dir, "latest.tmp"), "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(os.path.join(out_dir, "latest.tmp"), os.path.join(out_dir, "latest"))
        steps = sorted(d for d in os.listdir(out_dir) if d.startswith("step_") and d <= name)
        # folders past this step were left by a run that then resumed from an earlier one (they could not be read)
        stale = [d for d in os.listdir(out_dir) if d.startswith("step_") and d > name]
        for old in stale + (steps[:-keep_last] if keep_last > 0 else []):
            shutil.rmtree(os.path.join(out_dir, old), ignore_errors=True)
    barrier()
    return final


def latest_checkpoint(out_dir):
    """The folder `out_dir/latest` points at, or None."""
    pointer = os.path.join(out_dir, "latest")
    if not os.path.exists(pointer):
        return None
    path = os.path.join(out_dir, open(pointer).read().strip())
    return path if os.path.isdir(path) else None


def load_training_checkpoint(path, model, optimizer):
    """Restore model + optimizer shards and this rank's RNG from a training checkpoint; returns train_state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=os.path.join(path, "train_state"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    rank = dist.get_rank() if is_distributed() else 0
    rng_file = os.path.join(path, f"rng_rank{rank}.pt")
    if os.path.exists(rng_file):
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    with open(os.path.join(path, "train_state.json")) as f:
        return json.load(f)


def training_state_problem(path):
    """What keeps the training state of checkpoint `path` from being read, naming the file, or None. Every file that
    torch.distributed.checkpoint's metadata lists must hold the bytes it lists (a truncated file fails here by its
    name, not as a bare EOFError inside the loader) and train_state.json must parse."""
    import torch.distributed.checkpoint as dcp
    state_dir = os.path.join(path, "train_state")
    try:
        metadata = dcp.FileSystemReader(state_dir).read_metadata()
    except Exception as e:
        return f"{os.path.join(state_dir, '.metadata')} cannot be read ({type(e).__name__}: {e})"
    for info in metadata.storage_data.values():  # where each saved tensor lies: file, offset, length
        file = os.path.join(state_dir, info.relative_path)
        if not os.path.isfile(file):
            return f"{file} is missing"
        if os.path.getsize(file) < info.offset + info.length:
            return f"{file} is truncated ({os.path.getsize(file)} bytes, {info.offset + info.length} expected)"
    try:
        with open(os.path.join(path, "train_state.json")) as f:
            json.load(f)
    except (OSError, ValueError) as e:
        return f"{os.path.join(path, 'train_state.json')} cannot be read ({type(e).__name__}: {e})"
    return None


def resume_training_checkpoint(out_dir, model, optimizer):
    """Restore the newest checkpoint of out_dir that can be read: the one `latest` names or, when it cannot be read
    (a disk fault, a copy cut short), the step folders before it, newest first, each failure named with its file.
    Falling back loses the steps since that checkpoint, which the run then trains again; stopping instead would leave
    a `torchrun --max-restarts` job dead. Returns (path, train_state), or (None, None) where there is no checkpoint;
    SystemExit where none can be read. Every rank must call: they agree on the checkpoint, as FSDP needs."""
    latest = latest_checkpoint(out_dir)
    names = sorted((d for d in os.listdir(out_dir) if d.startswith("step_")), reverse=True) if os.path.isdir(
        out_dir) else []
    names = [d for d in names if latest is None or d <= os.path.basename(latest)]  # later ones: never made latest
    rank = dist.get_rank() if is_distributed() else 0
    failed = []
    for name in names:
        path = os.path.join(out_dir, name)
        problem = training_state_problem(path)
        if problem is None:
            try:
                state = load_training_checkpoint(path, model, optimizer)
            except Exception as e:  # a corrupt file the sizes do not show
                problem = f"{type(e).__name__}: {e}"
        ok = torch.tensor(float(problem is None), device="cuda" if torch.cuda.is_available() else "cpu")
        if is_distributed():  # one rank's failure is every rank's: they must resume from the same step
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item():
            if failed:
                print0(f"falling back to {path}, the newest checkpoint that can be read")
            return path, state
        if problem or rank == 0:
            print(f"{path} cannot be resumed from: {problem or 'another rank could not read it'}", flush=True)
        failed.append(path)
    if failed:
        raise SystemExit(f"no checkpoint of {out_dir} can be resumed from ({', '.join(failed)}, named above); "
                         f"move them away to start over")
    return None, None


def open_training_log(out_dir, step, name="log.jsonl"):
    """out_dir/name (a JSONL file whose lines each hold a "step") opened for appending, holding only the lines of the
    steps up to `step`, where this run starts: a run that resumes from a checkpoint trains the steps after it again, so
    their lines (and one cut short by a kill) go, and the log ends as an uninterrupted run's; a run from step 0 starts
    a new log."""
    path = os.path.join(out_dir, name)
    kept = []
    if step and os.path.exists(path):
        for line in open(path):
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short
                continue
            if entry["step"] <= step:
                kept.append(line.rstrip("\n") + "\n")
    with open(path + ".tmp", "w") as f:
        f.write("".join(kept))
    os.replace(path + ".tmp", path)
    return open(path, "a")
