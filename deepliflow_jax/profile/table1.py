"""Table I of Alhimdiat et al. (2023): parameters, conv layers, FLOPs and time per module.

Modules as in the paper: feature pyramid (RGB encoder/decoder and the sparse-depth
normalized-conv branch), fusion, scene-flow estimators, context network, cost
volume and warping. Every figure is computed from this code, never fitted:

* params: leaves of the parameter tree under each module's scope.
* conv layers: weight-bearing conv layers (each ``kernel``/``kernels`` leaf once);
  ``conv_ops`` counts the convolutions a forward pass executes on both frames
  (both frames run the shared guidance network; a normalized conv is one conv
  of the shared kernel over [data * conf, conf], i.e. numerator and denominator).
* gflops_eq3: the paper's eq. (3), ``2 H W (c_in K^2 + 1) c_out`` summed over
  the executed convolutions, H and W of each conv's output (for a transposed
  conv that is what eq. (3) literally gives, 4x its multiply-adds), plus
  ``2 H W C`` per cost-volume channel and 4 taps x 2 FLOPs per warped value.
* gflops_xla: XLA's own ``cost_analysis()['flops']`` of each module compiled
  alone on its real input shapes.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.model.context import ContextNetwork
from deepliflow_jax.model.cost_volume import cost_volume
from deepliflow_jax.model.deeplidarflow import LEVELS, DeepLiDARFlow
from deepliflow_jax.model.estimator import SceneFlowEstimator
from deepliflow_jax.model.fusion import Fusion
from deepliflow_jax.model.guidance import GuidanceNetwork
from deepliflow_jax.model.layers import CONV_IMPL_REFERENCE
from deepliflow_jax.model.warping import bilinear_warp
from deepliflow_jax.profile.runners import time_forward

# Table I of the paper (original TF model, GTX 1660 Ti, 384x1216).
PAPER_TABLE1 = {
    "feature_pyramid": {"params": 3_849_028, "conv_layers": 240, "gflops": 33.45},
    "fusion": {"params": 1_006_720, "conv_layers": 65, "gflops": 24.50},
    "scene_flow": {"params": 2_916_852, "conv_layers": 76, "gflops": 45.38},
    "context": {"params": 522_436, "conv_layers": 8, "gflops": 30.48},
    "cost_volume": {"params": 0, "conv_layers": 0, "gflops": 0.406},
    "warping": {"params": 0, "conv_layers": 0, "gflops": 0.011},
    "total": {"params": 8_295_036, "conv_layers": 389, "gflops": 134.227, "time_ms": 137.4},
}
MODULES = ("feature_pyramid", "fusion", "scene_flow", "context", "cost_volume", "warping")
_SCOPES = {
    "feature_pyramid": ("guidance_network/rgb_encoder", "guidance_network/rgb_decoder",
                        "guidance_network/depth_encoder", "guidance_network/depth_decoder"),
    "fusion": ("guidance_network/fusion",),
    "scene_flow": tuple(f"scene_flow_estimator_{lv}" for lv in LEVELS),
    "context": ("context_network",),
}


def _module_of(path: str) -> str:
    for module, scopes in _SCOPES.items():
        if path.startswith(scopes):
            return module
    raise ValueError(f"parameter {path!r} belongs to no Table I module")


def _sub_jaxprs(params: dict):
    for v in params.values():
        if hasattr(v, "jaxpr") and hasattr(v, "consts"):  # ClosedJaxpr
            yield v.jaxpr
        elif hasattr(v, "eqns"):
            yield v


def conv_eq3_flops(fn, *args) -> tuple[float, int]:
    """(eq. (3) FLOPs, number of convolutions) of the convs ``fn`` traces."""
    total, count = 0.0, 0

    def walk(jaxpr):
        nonlocal total, count
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
                out = eqn.outvars[0].aval
                dn = eqn.params["dimension_numbers"]
                kh, kw = (rhs.shape[i] for i in dn.rhs_spec[2:])
                c_in = rhs.shape[dn.rhs_spec[1]]
                c_out = rhs.shape[dn.rhs_spec[0]]
                b, h, w = (out.shape[i] for i in (dn.out_spec[0], *dn.out_spec[2:]))
                del lhs
                total += 2.0 * b * h * w * (c_in * kh * kw + 1) * c_out
                count += 1
            for sub in _sub_jaxprs(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return total, count


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, list):  # older jax returns one dict per device
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


# Table I counts the network's convolutions, not a faster form of them (``widen`` adds
# zero channels, ``phase`` splits a transposed conv): every module runs the reference.
REFERENCE = CONV_IMPL_REFERENCE


def _block_calls(variables: dict, batch: int, height: int, width: int):
    """(module, fn, args) for every block on its real input shapes (zeros)."""
    p = variables["params"]
    sds = jax.ShapeDtypeStruct
    f32 = jnp.float32
    fb = 2 * batch
    guidance = GuidanceNetwork(conv_impl=REFERENCE)
    g_in = (sds((fb, height, width, 3), f32), sds((fb, height, width, 1), f32),
            sds((fb, height, width, 1), f32))
    g_params = {"params": p["guidance_network"]}
    _, inner = jax.eval_shape(
        lambda v, *a: guidance.apply(v, *a, capture_intermediates=True), g_params, *g_in)
    inter = inner["intermediates"]
    rgb_dec = inter["rgb_decoder"]["__call__"][0]
    depth_dec = inter["depth_decoder"]["__call__"][0]

    def pyramid(params, rgb, disp, conf):
        from deepliflow_jax.model.feature_pyramid import RGBDecoder, RGBEncoder
        from deepliflow_jax.model.sparse_depth import DepthDecoder, DepthEncoder

        def run(module, name, *args):
            return module(conv_impl=REFERENCE).apply({"params": params[name]}, *args)

        enc = run(RGBEncoder, "rgb_encoder", rgb)
        ddec = run(DepthDecoder, "depth_decoder", run(DepthEncoder, "depth_encoder", disp, conf))
        confs = [c for _, c in ddec]
        return run(RGBDecoder, "rgb_decoder", enc, confs), ddec

    calls = [("feature_pyramid", pyramid, (p["guidance_network"], *g_in))]
    fusion = Fusion(conv_impl=REFERENCE)
    calls.append(("fusion", lambda prm, r, d: fusion.apply({"params": prm}, r, d),
                  (p["guidance_network"]["fusion"], rgb_dec, depth_dec)))
    feat_ch = 64
    for i, level in enumerate(LEVELS):
        h, w = height // 2**level, width // 2**level
        c_in = (2 * 4 + 1) ** 2 + 2 * feat_ch + (8 if i else 0)
        est = SceneFlowEstimator(is_output=level == LEVELS[-1], conv_impl=REFERENCE)
        calls.append(("scene_flow", lambda prm, x, est=est: est.apply({"params": prm}, x),
                      (p[f"scene_flow_estimator_{level}"], sds((batch, h, w, c_in), f32))))
        feat = sds((batch, h, w, feat_ch), f32)
        calls.append(("cost_volume", cost_volume, (feat, feat)))
        if i:
            calls.append(("warping", bilinear_warp, (feat, sds((batch, h, w, 2), f32))))
    h2, w2 = height // 4, width // 4
    context = ContextNetwork(conv_impl=REFERENCE)
    calls.append(("context", lambda prm, x: context.apply({"params": prm}, x),
                  (p["context_network"], sds((batch, h2, w2, 36), f32))))
    return calls


def _analytic_nonconv_flops(batch: int, height: int, width: int) -> dict[str, float]:
    cv = warp = 0.0
    for i, level in enumerate(LEVELS):
        hw = batch * (height // 2**level) * (width // 2**level)
        cv += 2.0 * hw * 64 * 81
        if i:
            warp += 8.0 * hw * 64
    return {"cost_volume": cv, "warping": warp}


def profile_model(variables: dict, height: int = 384, width: int = 1216, batch: int = 1,
                  repeats: int = 10, with_xla: bool = True, with_time: bool = True) -> dict:
    """Table I for ``variables`` at ``height`` x ``width``.

    Args:
      variables: ``{'params': ...}`` of DeepLiDARFlow.
      height, width: network input size (multiples of 64).
      batch: batch size.
      repeats: timed runs of the whole forward pass.
      with_xla: also compile each module for XLA's FLOP count.
      with_time: also time the whole forward pass.

    Returns:
      ``{"modules": {name: {params, conv_layers, conv_ops, gflops_eq3, gflops_xla}},
      "total_params", "total_params_without_second_frame_biases", "total": {...},
      "time": {...}, "input": {...}, "paper": PAPER_TABLE1}``.
    """
    modules = {m: {"params": 0, "conv_layers": 0, "conv_ops": 0, "gflops_eq3": 0.0,
                   "gflops_xla": 0.0 if with_xla else None} for m in MODULES}
    flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    second_frame = 0
    for path, leaf in flat.items():
        m = _module_of(path)
        modules[m]["params"] += int(np.prod(leaf.shape))
        if path.rsplit("/", 1)[-1] in ("kernel", "kernels"):
            modules[m]["conv_layers"] += 1
        if path.endswith("/biases_1"):
            second_frame += int(np.prod(leaf.shape))
    for name, fn, args in _block_calls(variables, batch, height, width):
        flops, n_convs = conv_eq3_flops(fn, *args)
        modules[name]["gflops_eq3"] += flops / 1e9
        modules[name]["conv_ops"] += n_convs
        if with_xla:
            concrete = [jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), a)
                        if not isinstance(a, dict) else a for a in args]
            modules[name]["gflops_xla"] += _xla_flops(fn, *concrete) / 1e9
    for name, flops in _analytic_nonconv_flops(batch, height, width).items():
        modules[name]["gflops_eq3"] += flops / 1e9
    total_params = sum(m["params"] for m in modules.values())
    result = {
        "input": {"batch": batch, "height": height, "width": width},
        "modules": modules,
        "total_params": total_params,
        "total_params_without_second_frame_biases": total_params - second_frame,
        "total": {
            "conv_layers": sum(m["conv_layers"] for m in modules.values()),
            "conv_ops": sum(m["conv_ops"] for m in modules.values()),
            "gflops_eq3": sum(m["gflops_eq3"] for m in modules.values()),
        },
        "paper": PAPER_TABLE1,
    }
    if with_xla:
        frames = jnp.zeros((batch, 2, height, width, 4), jnp.float32)
        result["total"]["gflops_xla_modules"] = sum(m["gflops_xla"] for m in modules.values())
        result["total"]["gflops_xla_forward"] = _xla_flops(
            DeepLiDARFlow(conv_impl=REFERENCE).apply, variables, frames) / 1e9
    if with_time:
        result["time"] = time_forward(variables, batch, height, width, repeats)
    return result


def format_profile_table(result: dict) -> str:
    """The per-module profile (:func:`profile_model`) as Markdown, beside the paper's Table I."""
    paper = result["paper"]
    rows = ["| module | params (ours) | params (paper) | conv layers (ours) | conv ops "
            "(ours) | conv layers (paper) | GFLOPs eq.3 (ours) | GFLOPs XLA (ours) | "
            "GFLOPs (paper) |", "|---" * 9 + "|"]
    for name in MODULES:
        m, pp = result["modules"][name], paper[name]
        xla = "n/a" if m["gflops_xla"] is None else f"{m['gflops_xla']:.3f}"
        rows.append(f"| {name} | {m['params']:,} | {pp['params']:,} | {m['conv_layers']} | "
                    f"{m['conv_ops']} | {pp['conv_layers']} | {m['gflops_eq3']:.3f} | {xla} | "
                    f"{pp['gflops']} |")
    t = result["total"]
    xla = t.get("gflops_xla_forward")
    rows.append(f"| **total** | {result['total_params']:,} "
                f"({result['total_params_without_second_frame_biases']:,} without frame-2 "
                f"biases) | {paper['total']['params']:,} | {t['conv_layers']} | {t['conv_ops']} | "
                f"{paper['total']['conv_layers']} | {t['gflops_eq3']:.3f} | "
                f"{'n/a' if xla is None else f'{xla:.3f}'} | {paper['total']['gflops']} |")
    inp = result["input"]
    lines = [f"Input {inp['batch']}x{inp['height']}x{inp['width']} (batch x H x W).", "",
             *rows]
    if "time" in result:
        tm = result["time"]
        lines += ["", f"Inference time ({tm['backend']}, {tm['device']}): median "
                  f"{tm['median_ms']:.1f} ms (p10 {tm['p10_ms']:.1f}, p90 {tm['p90_ms']:.1f}, "
                  f"{tm['repeats']} runs; compile {tm['compile_s']:.1f} s). Paper: 137.4 ms "
                  "(TF 1.14, GTX 1660 Ti)."]
    return "\n".join(lines)
