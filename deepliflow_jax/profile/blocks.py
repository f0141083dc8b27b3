"""Per-block forward (or forward + backward) time of DeepLiDARFlow, per conv implementation.

Blocks, in forward order (names as printed):

* ``input resize``: legacy nearest resize of both frames to ``interp_size``
  (only on the KITTI path, ``interp_size`` given);
* ``rgb encoder``, ``depth encoder``, ``depth decoder``, ``rgb decoder``,
  ``fusion``: the guidance network's modules, on both frames (batch ``2B``);
* per level 6..2: ``warp L<l>`` (levels 5..2), ``cost volume L<l>`` (with its
  leaky ReLU) and ``estimator L<l>``;
* ``context network`` and ``output resize`` (legacy bilinear of the refined
  flow to the output size, times 20).

Method. Each block runs alone: its Flax submodule's ``apply`` (or the model's
function) under its own ``jit``, compiled ahead of time with
:func:`~deepliflow_jax.profile.timer.aot_compile` on the input shapes the
whole forward gives it. Those shapes are captured from one abstract trace of
the whole model (``jax.eval_shape`` with ``nn.intercept_methods`` recording
every submodule call), so they follow the input size, ``interp_size``, widths
and dtype. The inputs are seeded uniform [0, 1) arrays (flows for the warp
uniform in [-4, 4] pixels); parameters are the given ones. After ``warmup``
untimed calls of everything, ``repeats`` rounds each call every
(implementation, block) once, in an order rotated per round so slow drift of
the machine hits all alike; every call ends with ``block_until_ready`` and the
times are summarized by :func:`~deepliflow_jax.profile.timer.summarize`
(:func:`~deepliflow_jax.profile.timer.time_interleaved`).
Blocks without conv layers (resizes, warps, cost volumes) do not depend on the
implementation: they are compiled and timed once and shown in every table.
The whole forward under one ``jit`` is timed in the same rounds: the gap to
the sum of the blocks is the glue between blocks (concatenations, slicing) and
XLA's fusion across block boundaries.

Train mode (``train=True``): each block runs its forward and its backward, as
the train step's backward does per block: ``jax.vjp`` of the block with respect
to its parameters and to the inputs the step differentiates (not the frames:
``input resize`` stays a forward, the encoders differentiate their parameters
only), then the pullback of a seeded uniform [0, 1) cotangent of the block's
output; the call returns the output and the gradients. ``output resize`` is not
part of the step (the loss reads the levels' flows, XLA drops it) and gives
way to ``loss``: ``deepliflow_jax.losses.kitti_loss`` of the five flows against
the synthetic ground truth, forward and backward with respect to the flows. The
reference row is the whole train step under one jit (the harness's
``train_step`` job, :func:`~deepliflow_jax.profile.runners.jax_train_step_call`):
its gap to the sum of the blocks is the glue, the L2 term and Adam.

``share`` is a block's median over the sum of all block medians.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.losses import kitti_loss
from deepliflow_jax.model.config import FLOW_SCALE, LEVELS, SIZE_MULTIPLE
from deepliflow_jax.model.cost_volume import correlation_for
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, leaky_relu, resolve_conv_impl
from deepliflow_jax.model.resize import resize_bilinear_legacy, resize_nearest_legacy
from deepliflow_jax.model.warping import bilinear_warp
from deepliflow_jax.model.widths import freeze_widths
from deepliflow_jax.profile.environment import describe_load, load_average
from deepliflow_jax.profile.inputs import make_ground_truth, random_frames
from deepliflow_jax.profile.runners import jax_train_step_call
from deepliflow_jax.profile.timer import aot_compile, time_interleaved
from deepliflow_jax.scalars import check_number

#: the guidance network's submodules, timed one by one (scope name -> block name)
GUIDANCE_BLOCKS = {"rgb_encoder": "rgb encoder", "depth_encoder": "depth encoder",
                   "depth_decoder": "depth decoder", "rgb_decoder": "rgb decoder",
                   "fusion": "fusion"}
WHOLE = "whole forward (one jit)"
WHOLE_TRAIN = "whole train step (one jit)"
#: blocks whose inputs come from the frames: the train step differentiates none of them
FRAME_INPUT_BLOCKS = ("input resize", "rgb encoder", "depth encoder")


@dataclass(frozen=True)
class Block:
    """One timed block: ``fn(params, *args)``; ``params`` None for parameter-free blocks.

    ``grad_args``: how many leading ``args`` the train step differentiates (None: all).
    """

    name: str
    fn: Callable
    params: Any
    args: tuple
    uses_conv_impl: bool
    grad_args: int | None = None


def block_names(interp_size=None, train: bool = False) -> list[str]:
    """The block names :func:`block_calls` returns, in forward order."""
    names = ["input resize"] if interp_size is not None else []
    names += list(GUIDANCE_BLOCKS.values())
    for level in LEVELS:
        if level != LEVELS[0]:
            names.append(f"warp L{level}")
        names += [f"cost volume L{level}", f"estimator L{level}"]
    return names + ["context network", "loss" if train else "output resize"]


def _record_calls(model: DeepLiDARFlow, variables: dict, frames, interp_size, out_size):
    """{scope path: (bound module, input shapes, output shapes)} of every submodule call."""
    calls = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = tuple(str(p) for p in context.module.scope.path)
        if context.method_name == "__call__" and path:
            sds = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (args, out))
            calls[path] = (context.module, *sds)
        return out

    def run(v, f):
        with nn.intercept_methods(interceptor):
            return model.apply(v, f, interp_size, out_size)

    jax.eval_shape(run, variables, frames)
    return calls


def _random_like(tree, rng: np.random.Generator):
    return jax.tree.map(
        lambda s: jnp.asarray(rng.uniform(0.0, 1.0, s.shape), s.dtype), tree)


def _module_block(name, module, params, args_sds, rng) -> Block:
    unbound = module.clone(parent=None)

    def fn(p, *args):
        return unbound.apply({"params": p}, *args)

    return Block(name, fn, params, _random_like(tuple(args_sds), rng), True)


def forward_backward(block: Block, seed: int = 0) -> Block:
    """``block`` as the train step runs it: forward, then the pullback of a cotangent.

    Args:
      block: a forward block (its ``grad_args`` says which inputs are differentiated).
      seed: seed of the cotangent (uniform [0, 1), the output's shapes and dtypes).

    Returns:
      A block whose ``fn(params, *args, cotangent)`` returns ``(output, (d params,
      d inputs...))``, the cotangent appended to its ``args``; ``block`` itself when
      nothing is differentiated (no parameters, no differentiated input).
    """
    k = len(block.args) if block.grad_args is None else block.grad_args
    if block.params is None and k == 0:
        return block
    cotangent = _random_like(jax.eval_shape(block.fn, block.params, *block.args),
                             np.random.default_rng(seed))

    def fn(params, *args):
        *args, cot = args
        rest = tuple(args[k:])
        out, pull = jax.vjp(lambda p, *d: block.fn(p, *d, *rest), params, *args[:k])
        return out, pull(cot)

    return dataclasses.replace(block, fn=fn, args=(*block.args, cotangent))


def block_calls(variables: dict, batch: int, height: int, width: int, interp_size=None,
                out_size=None, conv_impl: str = CONV_IMPL_DEFAULT, dtype: Any = jnp.float32,
                seed: int = 0, widths: Any = None, train: bool = False) -> list[Block]:
    """Every block of the forward on its real input shapes, ready to compile.

    Args:
      variables: ``{'params': ...}`` of the original network, or of the structured
        (channel-pruned) one that ``widths`` describes.
      batch, height, width: the frames' size ``[B, 2, H, W, 4]``.
      interp_size: ``(h, w)`` the network resizes to (KITTI path), None = none.
      out_size: output size, default the input size.
      conv_impl: see :mod:`deepliflow_jax.model.layers`.
      dtype: compute dtype.
      seed: seed of the random inputs.
      widths: channel widths of a structured model (None: the original network; see
        :mod:`deepliflow_jax.model.widths`).
      train: the blocks of the train step (:func:`forward_backward` of each; ``loss``
        against ``make_ground_truth`` at the output size in place of ``output resize``).

    Returns:
      :class:`Block` s named as :func:`block_names` (with ``train``).

    Raises:
      ValueError: an invalid ``conv_impl``.
    """
    model = DeepLiDARFlow(dtype=dtype, conv_impl=conv_impl, widths=freeze_widths(widths))
    out_size = tuple(out_size) if out_size is not None else (height, width)
    frames = jax.ShapeDtypeStruct((batch, 2, height, width, 4), jnp.float32)
    calls = _record_calls(model, variables, frames, interp_size, out_size)
    params = variables["params"]
    rng = np.random.default_rng(seed)
    blocks = []
    if interp_size is not None:
        x = jax.ShapeDtypeStruct((2 * batch, height, width, 4), jnp.float32)
        size = tuple(interp_size)
        blocks.append(Block("input resize", lambda _, a: resize_nearest_legacy(a, size), None,
                            _random_like((x,), rng), False, grad_args=0))
    for scope, name in GUIDANCE_BLOCKS.items():
        module, args, _ = calls[("guidance_network", scope)]
        block = _module_block(name, module, params["guidance_network"][scope], args, rng)
        blocks.append(dataclasses.replace(block, grad_args=0) if name in FRAME_INPUT_BLOCKS
                      else block)
    fused = calls[("guidance_network", "fusion")][2]
    r = model.search_range

    correlate = correlation_for(conv_impl)

    def cost(_, f1, warped):
        return leaky_relu(correlate(f1, warped, r))

    for i, level in enumerate(LEVELS):
        feat = jax.ShapeDtypeStruct((batch, *fused[i].shape[1:]), fused[i].dtype)
        if i:
            flow = jax.ShapeDtypeStruct((*feat.shape[:3], 2), jnp.float32)
            args = (*_random_like((feat,), rng),
                    jnp.asarray(rng.uniform(-4.0, 4.0, flow.shape), flow.dtype))
            blocks.append(Block(f"warp L{level}", lambda _, f, fl: bilinear_warp(f, fl), None,
                                args, False))
        blocks.append(Block(f"cost volume L{level}", cost, None, _random_like((feat, feat), rng),
                            True))
        scope = f"scene_flow_estimator_{level}"
        module, args, _ = calls[(scope,)]
        blocks.append(_module_block(f"estimator L{level}", module, params[scope], args, rng))
    module, args, out = calls[("context_network",)]
    blocks.append(_module_block("context network", module, params["context_network"], args, rng))
    refined = jax.ShapeDtypeStruct(out.shape, jnp.float32)
    if not train:
        blocks.append(Block("output resize",
                            lambda _, a: FLOW_SCALE * resize_bilinear_legacy(a, out_size), None,
                            _random_like((refined,), rng), False))
        return blocks
    # the five flows the loss reads (levels 6..3 from the estimators, refined level 2)
    flows = tuple(calls[(f"scene_flow_estimator_{lv}",)][2][0] for lv in LEVELS[:-1]) + (out,)
    gt = jnp.asarray(make_ground_truth(batch, *out_size))
    blocks.append(Block("loss", lambda _, f, g: kitti_loss(list(f), g), None,
                        (_random_like(flows, rng), gt), False, grad_args=1))
    return [forward_backward(b, seed + i) for i, b in enumerate(blocks)]


def _check_sizes(height, width, interp_size, repeats, conv_impls):
    height = check_number(height, "--height", integer=True, minimum=1)
    width = check_number(width, "--width", integer=True, minimum=1)
    net = tuple(interp_size) if interp_size is not None else (height, width)
    if any(v <= 0 or v % SIZE_MULTIPLE for v in net):
        what = "--interp_size" if interp_size is not None else "--height x --width"
        raise ValueError(f"{what} = {net[0]}x{net[1]}: the network size must be positive "
                         f"multiples of {SIZE_MULTIPLE} (e.g. 384x1216; 64x128 for tests); "
                         "other input sizes need --interp_size")
    check_number(repeats, "--repeats", integer=True, minimum=1)
    if not conv_impls:
        raise ValueError("--conv_impls is empty: name one or more, e.g. xla,auto")


def profile_blocks(variables: dict, batch: int = 1, height: int = 384, width: int = 1216,
                   conv_impls: Sequence[str] = ("xla", "auto"), repeats: int = 10,
                   warmup: int = 2, interp_size=None, dtype: Any = jnp.float32,
                   whole: bool = True, train: bool = False) -> dict:
    """Times every block (and the whole forward or train step) for each conv implementation.

    Args:
      variables: ``{'params': ...}`` of the original network.
      batch, height, width: input frames ``[B, 2, H, W, 4]``.
      conv_impls: implementations to compare (see :mod:`deepliflow_jax.model.layers`;
        ``"auto"`` is timed, and named, as the form it resolves to here).
      repeats: timed rounds.
      warmup: untimed calls of everything after compiling.
      interp_size: ``(h, w)`` of the KITTI-style resize inside the network, or None.
      dtype: compute dtype.
      whole: also time the whole forward (the whole train step) under one ``jit``.
      train: time each block's forward and backward (see the module's "Train mode"),
        and the whole train step as the reference row.

    Returns:
      ``{"input", "dtype", "repeats", "warmup", "backend", "device", "conv_impls",
      "train", "tables": {impl: {"blocks": [{"block", "median_ms", "p10_ms", "p90_ms",
      "share", "compile_s"}], "sum_ms", "whole": {...} or None}}}``.

    Raises:
      ValueError: sizes that are not multiples of 64 (network size), ``repeats`` < 1,
        no or an invalid ``conv_impl``.
    """
    _check_sizes(height, width, interp_size, repeats, conv_impls)
    batch = check_number(batch, "--batch", integer=True, minimum=1)
    warmup = check_number(warmup, "--warmup", integer=True, minimum=0)
    # "auto" as the form it runs here, so each table names what was timed
    impls = list(dict.fromkeys(resolve_conv_impl(c) for c in conv_impls))
    interp = tuple(interp_size) if interp_size is not None else None
    load_before = load_average()  # recorded beside the times: a loaded figure is labelled
    jobs, shared = {}, {}  # (impl, block name) -> (compiled, args); shared: name -> key
    whole_name = WHOLE_TRAIN if train else WHOLE
    for impl in impls:
        for block in block_calls(variables, batch, height, width, interp, None, impl, dtype,
                                 train=train):
            if not block.uses_conv_impl and block.name in shared:
                continue
            compiled, info = aot_compile(block.fn, block.params, *block.args)
            jobs[(impl, block.name)] = (compiled, (block.params, *block.args), info["compile_s"])
            if not block.uses_conv_impl:
                shared[block.name] = (impl, block.name)
        if whole and train:
            call, info = jax_train_step_call(variables, batch, height, width, 0,
                                             jnp.dtype(dtype).name, impl, interp)
            jobs[(impl, WHOLE_TRAIN)] = (call, (), info["compile_s"])
        elif whole:
            model = DeepLiDARFlow(dtype=dtype, conv_impl=impl)
            frames = jnp.asarray(random_frames(batch, height, width))

            def forward(v, f, model=model):
                return model.apply(v, f, interp)

            compiled, info = aot_compile(forward, variables, frames)
            jobs[(impl, WHOLE)] = (compiled, (variables, frames), info["compile_s"])
    stats = time_interleaved({key: functools.partial(job[0], *job[1])
                              for key, job in jobs.items()}, repeats, warmup)
    tables = {}
    for impl in impls:
        rows = []
        for name in block_names(interp, train):
            key = (impl, name) if (impl, name) in jobs else shared[name]
            rows.append({"block": name, **stats[key], "compile_s": jobs[key][2]})
        total = sum(r["median_ms"] for r in rows)
        for r in rows:
            r["share"] = r["median_ms"] / total
        whole_row = None
        if whole:
            whole_row = {"block": whole_name, **stats[(impl, whole_name)],
                         "compile_s": jobs[(impl, whole_name)][2]}
        tables[impl] = {"blocks": rows, "sum_ms": total, "whole": whole_row}
    return {"input": {"batch": batch, "height": height, "width": width,
                      "interp_size": list(interp) if interp else None},
            "load": {"before": load_before, "after": load_average()},
            "dtype": jnp.dtype(dtype).name, "repeats": repeats, "warmup": warmup,
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "conv_impls": impls, "train": train, "tables": tables}


def format_blocks(result: dict) -> str:
    """One Markdown table (block, ms, p10-p90, share) per conv implementation."""
    inp = result["input"]
    train = result.get("train", False)
    size = f"{inp['batch']}x{inp['height']}x{inp['width']}"
    if inp["interp_size"]:
        size += f" resized to {inp['interp_size'][0]}x{inp['interp_size'][1]}"
    what = "forward + backward (the train step's work per block)" if train else "forward"
    lines = [f"Per-block {what} time, input {size} (batch x H x W), {result['dtype']}, "
             f"{result['backend']} ({result['device']}); median of {result['repeats']} "
             f"rounds after {result['warmup']} warm-up calls; machine "
             f"{describe_load(result.get('load'))}."]
    for impl in result["conv_impls"]:
        table = result["tables"][impl]
        lines += ["", f"conv_impl = {impl}", "",
                  "| block | ms (median) | p10-p90 ms | share |", "|---|---:|---:|---:|"]
        for r in table["blocks"]:
            lines.append(f"| {r['block']} | {r['median_ms']:.3f} | "
                         f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f} | {100 * r['share']:.1f} % |")
        lines.append(f"| **sum of blocks** | {table['sum_ms']:.3f} | | 100.0 % |")
        if table["whole"] is not None:
            w = table["whole"]
            lines.append(f"| {w['block']} | {w['median_ms']:.3f} | {w['p10_ms']:.3f}-"
                         f"{w['p90_ms']:.3f} | |")
    return "\n".join(lines)
