# The general model: the tiny Qwen3-VL pre-trained on the general world (shapes.py), the miniature's stand-in for
# Qwen3-VL itself: it knows language, the answer formats and where things are in an image, and has seen a few chest
# radiographs under web-style captions, never a report or a lesion's box (the paper's "Qwen3-VL" rows).
#   python sft.py config/general.py          # CPU, a few minutes; then evaluate.py / grpo.py --init_from=out/general
init_from = "tiny"
data = "shapes"
val_data = "shapes"
out_dir = "out/general"
max_steps = 300
vision_lr = 1e-3          # the rate it was made with (sft.py's default is now higher, for the chest X-ray world)
save_every = 300
eval_every = 100
