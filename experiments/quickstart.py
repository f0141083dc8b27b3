# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # DeepLiDARFlow in JAX: quickstart
#
# Scene flow (optical flow + disparity at t and t+1) from two camera frames and sparse LiDAR,
# with the compression toolkit of Alhimdiat et al. (2023): **prune**, **quantize**,
# **fine-tune**, **evaluate**, **time**. Everything below is the public API of
# `deepliflow_jax` (pure functions over parameter pytrees and arrays; `help(dl.finetune)`).
#
# Run it top to bottom. On a CPU it takes a few minutes (most of it compiling the network
# once); on a Colab GPU runtime set `SMALL = False` for the full-size KITTI example.
#
# **Sizes.** The network is run on 64x192 frames of the built-in synthetic street world
# (exact ground truth, KITTI layout) - the shapes of the study's `tiny` preset; with
# `GROUP_WIDTH = 8` the network is that preset's too (8 channels in every group), so the
# compiled train step and evaluation are shared with it. The released KITTI example
# (375x1242) is only *shown* at that size: the network runs on it (at 384x1216, as the
# original) only with `SMALL = False`. We neither crop nor downscale it: a crop is another
# input, and a downscaled frame would need its disparities and LiDAR density rescaled,
# so neither would be comparable with what the released model predicts for it.

# %%
# Install (Colab only): skipped when the package is importable, and never under CI.
import importlib.util
import os
import subprocess
import sys

# the git URL of your deepliflow_jax clone or fork (e.g. https://github.com/<you>/deepliflow_jax)
REPO_URL = os.environ.get("DEEPLIFLOW_REPO_URL", "")
if importlib.util.find_spec("deepliflow_jax") is None:
    if os.environ.get("CI") is not None or "google.colab" not in sys.modules:
        raise RuntimeError("deepliflow_jax is not installed: run `pip install -e '.[viz]'` "
                           "in the repository root")
    if not REPO_URL:
        raise RuntimeError("set REPO_URL above to the git URL of deepliflow_jax (or upload "
                           "the repository and `pip install -e '.[viz]'` it)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    f"deepliflow_jax[viz] @ git+{REPO_URL}"], check=True)

# %%
# Settings (environment variables override them, e.g. in CI)
import tempfile
from pathlib import Path

SMALL = os.environ.get("DEEPLIFLOW_SMALL", "1") != "0"  # False: full-size runs (use a GPU)
# folder with the original release's examples (ex_1_im_10.png, ...); optional
EXAMPLES = os.environ.get("DEEPLIFLOW_EXAMPLES", "")
# a converted checkpoint directory (see "A model" below); optional, else random weights
CHECKPOINT = os.environ.get("DEEPLIFLOW_CHECKPOINT", "")
WORKDIR = Path(os.environ.get("DEEPLIFLOW_WORKDIR") or tempfile.mkdtemp(prefix="deepliflow_"))
# channels in every group of a structured DeepLiDARFlow for the random weights (e.g. 8, the
# tiny study's network); empty: the original network
GROUP_WIDTH = int(os.environ.get("DEEPLIFLOW_GROUP_WIDTH") or 0) or None

HEIGHT, WIDTH = (64, 192) if SMALL else (256, 832)  # synthetic frames (multiples of 64)
NUM_SCENES = 10 if SMALL else 50  # 9:1 train/validation split
FINETUNE_STEPS = 3 if SMALL else 300
print(f"SMALL={SMALL}, frames {HEIGHT}x{WIDTH}, work folder {WORKDIR}")

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import deepliflow_jax as dl

# keep compiled functions on disk: a second session skips compiling (opt-in, process-wide)
dl.enable_compilation_cache()
print("JAX", jax.__version__, "on", jax.default_backend(), jax.devices()[0].device_kind)
T0 = time.perf_counter()

# %% [markdown]
# ## 1. The example frames of the original release
#
# Example 1 of the DeepLiDARFlow release is a KITTI scene-flow pair with about 5,000 LiDAR
# points per frame, and the release ships what its trained model predicted for it. Point
# `EXAMPLES` at a folder with those files to see them; without it the notebook goes on with
# the synthetic world alone.

# %%
example = None
if EXAMPLES and (Path(EXAMPLES) / "ex_1_im_10.png").is_file():
    example = dl.read_example(EXAMPLES, 1)  # preprocessed as the original inference.py
    lidar = example["frames"][0, ..., 3] != 0
    ys, xs = np.nonzero(lidar)
    fig, axes = plt.subplots(2, 1, figsize=(12, 4.4))
    axes[0].imshow(example["image0"])
    axes[0].set_title(f"KITTI frame t, {example['frames'].shape[1]}x{example['frames'].shape[2]}")
    axes[1].imshow(example["image0"])
    axes[1].scatter(xs, ys, s=0.2, c="red")
    axes[1].set_title(f"{lidar.sum()} LiDAR points (sparse disparity input)")
    for ax in axes:
        ax.axis("off")
    plt.show()
    released = Path(EXAMPLES) / "out_1_optical_flow.png"
    if released.is_file():
        from deepliflow_jax.data.io import read_png

        plt.figure(figsize=(12, 2.2))
        plt.imshow(read_png(released))
        plt.title("optical flow of the released, trained model (for reference)")
        plt.axis("off")
        plt.show()
else:
    print("No example frames (set DEEPLIFLOW_EXAMPLES); using the synthetic world.")

# %% [markdown]
# ## 2. A synthetic world with exact ground truth
#
# A procedural street scene rendered with KITTI's (scaled) calibration, written in the KITTI
# scene-flow layout, so everything that reads KITTI reads it. `load_dataset` splits it 9:1
# like the study and samples the LiDAR at KITTI's density.

# %%
root = dl.make_synthetic_dataset(WORKDIR / "world", num_scenes=NUM_SCENES, height=HEIGHT,
                                 width=WIDTH)
data = dl.load_dataset(root)
pair = dl.validation_pair(data)  # frames [2, H, W, 4], ground truth [H, W, 4], images
print(f"{len(data.train)} training / {len(data.val)} validation pairs, "
      f"{data.num_samples} LiDAR points per frame; frames {pair['frames'].shape}")

# %% [markdown]
# ## 3. A model
#
# Random weights here (`kernel_gain=sqrt(2)` keeps the activations of the deep leaky-ReLU
# chain at a useful scale). With the original TF checkpoint, convert it once and set
# `CHECKPOINT` (or `DEEPLIFLOW_CHECKPOINT`) to the output:
#
#     python -m weights_convert --format=tf --input=model/DeepLiDARFlow-KITTI \
#         --output=checkpoints/kitti
#
# (`weights_convert.convert_checkpoint("tf", prefix, output_dir)` does the same from Python;
# a PyTorch state dict converts with `--format=torch`.)

# %%
if CHECKPOINT:
    variables = dl.load_checkpoint(CHECKPOINT)
    print("loaded", CHECKPOINT)
else:
    from deepliflow_jax.model.widths import uniform_widths

    widths = None if GROUP_WIDTH is None else uniform_widths(GROUP_WIDTH)
    variables = dl.init_params(seed=0, kernel_gain=2 ** 0.5, widths=widths)
    print("random, untrained weights: the predictions below mean nothing yet")
print(f"{sum(x.size for x in jax.tree.leaves(variables)):,} parameters")

# %% [markdown]
# ## 4. Predict scene flow and look at it
#
# `predict_sceneflow` returns (u, v, d0, d1) in pixels at the input resolution. Flow is
# colour coded as Middlebury (hue = direction), disparity with the jet map, as the original
# `vis_utils`; the colour scales come from the ground truth.

# %%
sceneflow = dl.predict_sceneflow(variables, pair["frames"])
print("scene flow", sceneflow.shape, sceneflow.dtype)
dl.plot_sceneflow(sceneflow, pair["image0"], pair["image1"], gt=pair["gt"],
                  title="synthetic validation pair: prediction and ground truth")
plt.show()
dl.save_png(WORKDIR / "flow.png", dl.flow_image(sceneflow))
if example is not None and not SMALL:  # 375x1242, run at 384x1216 inside as the original
    kitti_flow = dl.predict_sceneflow(variables, example["frames"], example["dataset"])
    dl.plot_sceneflow(kitti_flow, example["image0"], example["image1"], title="KITTI example")
    plt.show()

# %% [markdown]
# ## 5. Prune and quantize (post-training)
#
# `prune` removes the smallest 10 % of all weights *and* biases by magnitude (one global
# threshold, as the paper); `quantize` puts every tensor on a symmetric 8-bit grid (per
# tensor). Both return ordinary float parameter trees that every other function takes.

# %%
pruned, masks = dl.prune(variables, 10.0)
quantized = dl.quantize(pruned, 8)
for name, v in (("dense", variables), ("pruned 10 %", pruned), ("pruned + 8 bits", quantized)):
    print(f"{name:>16}: {dl.zero_fraction(v):6.2f} % zeros")
assert dl.zero_fraction(pruned) > 9.99  # floor(10 % of all entries)
change = jnp.abs(dl.predict_sceneflow(quantized, pair["frames"]) - sceneflow).max()
print(f"largest change of the prediction: {float(change):.4f} px")

# %% [markdown]
# ### The compression table
#
# One row per configuration, post-training, on the validation split: share of zero
# weights, end-point error (EPE, px) and outlier rates (D0, D1, Fl, SF = KITTI's
# 3 px / 5 % rule). The run time is the same for all of them here: masked or
# fake-quantized weights are still dense float tensors.

# %%
rows = dl.compression_table(variables, data, [(0, 0), (10, 0), (0, 8), (10, 8)], repeats=3)
display(Markdown(dl.format_table(rows)))

# %% [markdown]
# ## 6. Fine-tune the compressed model
#
# Compression-aware training as the paper: the pruning mask is kept, the forward pass sees
# 8-bit weights (straight-through gradient), Adam at 1e-4, batch 1, the original's loss with
# its L2 term. Every configuration reuses one compiled train step.

# %%
tuned, history = dl.finetune(variables, data, steps=FINETUNE_STEPS, percent=10, bits=8,
                             lr=1e-4, log_every=max(1, FINETUNE_STEPS // 10))
assert dl.zero_fraction(tuned) >= dl.zero_fraction(pruned)  # pruned weights stayed 0
plt.figure(figsize=(5, 3))
plt.plot([h["step"] for h in history], [h["loss"] for h in history], marker="o")
plt.xlabel("step")
plt.ylabel("training loss")
plt.show()

# %% [markdown]
# ## 7. Evaluate

# %%
results = {
    "dense": dl.evaluate(variables, data),
    "post-training 10 % + 8 bits": dl.evaluate(variables, data, percent=10, bits=8),
    f"fine-tuned {FINETUNE_STEPS} steps": dl.evaluate(tuned, data),
}
for name, m in results.items():
    print(f"{name:>28}: EPE {m['epe']:7.3f} px, SF outliers {m['sf']:6.2f} %")
assert all(np.isfinite(m["epe"]) for m in results.values())

# %% [markdown]
# ## 8. Time it

# %%
timing = dl.time_model(tuned, HEIGHT, WIDTH, repeats=5)
print(f"{HEIGHT}x{WIDTH}: median {timing['median_ms']:.1f} ms per pair on {timing['device']} "
      f"(first call {timing['first_call_s']:.1f} s: it compiles unless this size ran before)")
if not SMALL:  # the paper's setting: KITTI frames, 384x1216 inside the network
    kitti = dl.time_model(tuned, 375, 1242, repeats=20, dataset="kitti")
    print(f"KITTI 375x1242: median {kitti['median_ms']:.1f} ms")

# %% [markdown]
# ## 9. Save it

# %%
path = dl.save_checkpoint(WORKDIR / "tuned_p10_q8", tuned,
                          {"source": "quickstart", "percent": 10, "bits": 8}, overwrite=True)
restored = dl.load_checkpoint(path)
assert all(np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(restored), jax.tree.leaves(tuned), strict=True))
print(f"saved {path}; notebook ran in {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ## Next
#
# * The whole study (Tables II/III, Figs. 2-6): `python -m experiments.run_study`
#   (`--preset=demo` on a CPU, `--preset=paper --data_dir=KITTI --checkpoint=CKPT` on a GPU).
# * Table I and run time: `python -m experiments.profile_model`, `python -m experiments.runtime`.
# * The README maps each module of the paper's figure to its file.
