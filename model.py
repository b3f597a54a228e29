"""
model.py: how to get a Qwen3-VL: load one (`load_model`), build a tiny or a real-shaped random one, and the log-probs of
chosen tokens without the full-vocabulary logits. Saving is checkpoints.py; ranks and sharding are distributed.py.

Two faces, one code path:
- the real path: `load_model("Qwen/Qwen3-VL-8B-Instruct")` (or any local checkpoint dir in Hugging Face
  layout: -2B/-4B/-8B/-32B, -Instruct/-Thinking, the MoE variants) -> (model, processor);
- the embedded default: `build_tiny()` builds a tiny *random* Qwen3-VL (the real architecture with small
  sizes) plus a byte-level BPE tokenizer carrying all 26 Qwen added tokens in their real order and a
  Qwen3-VL-style chat template, offline, in about a second. `checkpoints.save_checkpoint` writes it in exactly the
  layout of a real checkpoint, so everything downstream loads it through `load_model(path)`.

    python -c "from model import build_tiny; from checkpoints import save_checkpoint as s; s(*build_tiny(), 'out/tiny')"
    python -c "from transformers import AutoModelForImageTextToText as A; print(A.from_pretrained('out/tiny'))"

The processor: transformers' `Qwen3VLProcessor` insists on a video processor that needs torchvision, which
does not import beside a CPU torch. Where torchvision works we use `AutoProcessor`; elsewhere an image-only
processor (`ImageOnlyQwen3VLProcessor`) built from the same files. Both save the same folder, whose
`processor_config.json` names `Qwen3VLProcessor`, so AutoProcessor and vLLM load it on a GPU machine.
Safety: never `trust_remote_code`; weights only as safetensors.
"""

import json
import os

import torch
import torch.distributed as dist

from checkpoints import latest_checkpoint
from distributed import default_device

# Image geometry shared by Qwen3-VL: 16-px patches, 2x2 merge -> one visual token per 32x32 pixels.
PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE = 16, 2, 2
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 32 * 32, 128 * 128  # the synthetic world: 128 px -> 16 visual tokens


# ----------------------------------------------------------------------------------------------------
# loading

def load_model(name_or_path, dtype=None, device=None, attn_implementation=None, min_pixels=None,
               max_pixels=None, rank0_only=False, seed=0, tiny_corpus=None):
    """(model, processor) from a local checkpoint dir, a training output dir (its newest step), a hub id
    (Qwen/Qwen3-VL-8B-Instruct, ...), or "tiny": the tiny random Qwen3-VL of `seed` (build_tiny), which every stage can
    start from offline, its tokenizer trained on the texts `tiny_corpus()` returns (the stage scripts pass
    data.tiny_corpus, the worlds' words; None: a small built-in corpus).

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
        model, processor = build_tiny(texts=tiny_corpus() if tiny_corpus else None, seed=seed,
                                      min_pixels=min_pixels or TINY_MIN_PIXELS,
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


# ----------------------------------------------------------------------------------------------------
# what this machine can use

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
# the processor

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
# the tiny model and random real-shaped ones

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
