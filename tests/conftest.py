"""Shared fixtures: a tiny Qwen3-VL saved in the real checkpoint layout and loaded back like a real one."""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)  # tests share 2 cores; keep torch from oversubscribing them


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a tiny random Qwen3-VL saved by save_checkpoint (safetensors, configs, processor files)."""
    from model import build_tiny, save_checkpoint
    model, processor = build_tiny(seed=0)
    return save_checkpoint(model, processor, str(tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="session")
def tiny(tiny_checkpoint):
    """(model, processor) loaded from the tiny checkpoint through load_model, as a real checkpoint would be."""
    from model import load_model
    model, processor = load_model(tiny_checkpoint, device="cpu")
    return model.eval(), processor


def gray_image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L")
