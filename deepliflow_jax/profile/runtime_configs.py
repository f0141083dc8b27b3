"""Registry of the configurations the run-time harness times.

A configuration is a named way to run the network: which framework (``jax`` or
``torch``), which compute dtype, and which transformation of the float32
parameters (pruning masks applied, fake quantization, ...) or which other model
(a ``builder``: structurally pruned, integer kernels). Names are looked up with
:func:`resolve`; families take a number in the name (``pruned50`` prunes 50 %
of the weights, ``fq8`` fake-quantizes to 8 bits, ``structured25`` removes 25 %
of the channels). New variants are added with :func:`register` /
:func:`register_family`; a planned one can be registered as *unavailable* with
the reason, so that asking for it fails with a clear message.

Parameter variants of the same dtype share one compiled XLA executable (the
parameters are arguments of the executable, never constants), so a masked or
fake-quantized model runs exactly the dense program: any time difference is
noise. That is the point the harness makes with numbers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

FRAMEWORKS = ("jax", "torch")
KINDS = ("forward", "train_step")
DTYPES = ("float32", "bfloat16", "float16")
FQ_BITS = (16, 14, 12, 10, 8, 6)
DEFAULT_PRUNE_PERCENT = 50.0

ParamTransform = Callable[[dict], tuple[dict, dict]]
Builder = Callable[[dict, np.ndarray, tuple[int, int], str], tuple[Callable, Any, dict]]


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """One timed configuration.

    Attributes:
      name: registry name (as on the command line).
      framework: ``"jax"`` or ``"torch"``.
      description: one line for the tables.
      dtype: compute dtype name (``"float32"``, ``"bfloat16"`` or ``"float16"``);
        params stay f32.
      kind: ``"forward"`` (inference) or ``"train_step"`` (one fine-tuning step).
      transform: ``variables -> (variables, info)`` applied to the f32 params
        before timing (None: unchanged); ``info`` lands in the results.
      torch_mode: ``"eager"`` or ``"compile"`` for torch configs.
      conv_impl: the model's ``conv_impl`` (JAX forwards and train steps; see
        :mod:`deepliflow_jax.model.layers`); ``"auto"``, the library's default, is
        resolved per backend when the model is traced, and the results record the form.
      unavailable: None, or why this configuration cannot run yet.
      builder: for a JAX forward that is not the plain model on (transformed)
        params (structured pruning, integer kernels):
        ``(variables, frames, out_size, dtype) -> (apply_fn, params, info)`` with
        ``apply_fn(params, frames) -> (sceneflow, aux)``; compiled on its own.
    """

    name: str
    framework: str
    description: str
    dtype: str = "float32"
    kind: str = "forward"
    transform: ParamTransform | None = None
    torch_mode: str | None = None
    unavailable: str | None = None
    builder: Builder | None = None
    conv_impl: str = "auto"

    def __post_init__(self):
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {FRAMEWORKS}, got {self.framework!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def executable_key(self) -> tuple[str, str, str]:
        """Configs with the same key run the same compiled program."""
        if self.builder is not None:
            return (self.framework, self.kind, f"{self.dtype}/{self.name}")
        if self.torch_mode is not None:
            return (self.framework, self.kind, f"{self.dtype}/{self.torch_mode}")
        return (self.framework, self.kind, self.dtype if self.conv_impl == "auto"
                else f"{self.dtype}/{self.conv_impl}")


_REGISTRY: dict[str, RuntimeConfig] = {}
_FAMILIES: list[tuple[re.Pattern, Callable[[re.Match], RuntimeConfig]]] = []


def register(config: RuntimeConfig) -> RuntimeConfig:
    """Adds ``config`` under its name (replacing an entry of the same name).

    Returns:
      ``config``.
    """
    _REGISTRY[config.name] = config
    return config


def register_family(pattern: str, factory: Callable[[re.Match], RuntimeConfig]) -> None:
    """Registers names matching ``pattern`` (full match), built by ``factory(match)``."""
    _FAMILIES.append((re.compile(pattern), factory))


def names() -> list[str]:
    """Registered fixed names (families not expanded)."""
    return list(_REGISTRY)


def family_patterns() -> list[str]:
    """The regex of every registered family."""
    return [p.pattern for p, _ in _FAMILIES]


def resolve(name: str, flag: str = "--configs") -> RuntimeConfig:
    """The configuration called ``name``.

    Args:
      name: registry name or family member (``pruned50``, ``fq8``).
      flag: the flag named in the error message.

    Returns:
      The :class:`RuntimeConfig`.

    Raises:
      ValueError: naming ``flag`` for an unknown name, a family member whose
        number is out of range, or a configuration marked unavailable.
    """
    name = name.strip()
    config = _REGISTRY.get(name)
    if config is None:
        for pattern, factory in _FAMILIES:
            match = pattern.fullmatch(name)
            if match:
                try:
                    config = factory(match)
                except ValueError as e:
                    raise ValueError(f"{flag}: bad configuration {name!r}: {e}") from e
                break
    if config is None:
        raise ValueError(
            f"{flag}: unknown configuration {name!r}; known: {', '.join(names())} and the "
            f"families {', '.join(family_patterns())}"
        )
    if config.unavailable:
        raise ValueError(f"{flag}: configuration {name!r} is not available yet: "
                         f"{config.unavailable}")
    return config


def parse_configs(spec: str | list[str], flag: str = "--configs") -> list[RuntimeConfig]:
    """Resolves a comma-separated list (or a list) of names, keeping order, no duplicates.

    Raises:
      ValueError: naming ``flag`` if the list is empty or a name is bad.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise ValueError(f"{flag}: no configuration given")
    out, seen = [], set()
    for item in items:
        config = resolve(item, flag)
        if config.name not in seen:
            out.append(config)
            seen.add(config.name)
    return out


# --------------------------------------------------------------------------- transforms


def _count(variables: Mapping) -> dict[str, int]:
    from deepliflow_jax.compress.select import flatten

    size = zeros = 0
    for leaf in flatten(variables).values():
        arr = np.asarray(leaf)
        size += arr.size
        zeros += int(np.count_nonzero(arr == 0))
    return {"size": size, "zeros": zeros}


def prune_transform(percent: float) -> ParamTransform:
    """Global magnitude pruning of every weight and bias (the paper's setting).

    Returns:
      ``variables -> (pruned variables, info)`` with the achieved sparsity.
    """

    def transform(variables: dict) -> tuple[dict, dict]:
        from deepliflow_jax.compress.prune import prune

        pruned, masks = prune(variables, percent)
        counts = _count(pruned)
        kept = sum(int(np.count_nonzero(np.asarray(m))) for m in _leaves(masks))
        return pruned, {
            "prune_percent": percent,
            "masked_fraction": 1.0 - kept / max(counts["size"], 1),
            "zero_fraction": counts["zeros"] / max(counts["size"], 1),
        }

    return transform


def quant_transform(bits: int) -> ParamTransform:
    """Post-training uniform fake quantization (per tensor, weights and biases).

    Returns:
      ``variables -> (dequantized float32 variables, info)``.
    """

    def transform(variables: dict) -> tuple[dict, dict]:
        from deepliflow_jax.compress.quantize import quantize

        quant = quantize(variables, bits)
        counts = _count(quant)
        return quant, {"bits": bits, "zero_fraction": counts["zeros"] / max(counts["size"], 1)}

    return transform


def _leaves(tree: Any) -> list:
    import jax

    return jax.tree.leaves(tree)


def structured_builder(ratio: float) -> Builder:
    """Channel pruning (``compress.structured``, L1 scores, widths rounded to 8).

    Returns:
      A builder: the smaller model (``widths``) on the shrunken params.
    """

    def build(variables, frames, out_size, dtype):
        import functools

        import jax.numpy as jnp

        from deepliflow_jax.compress.structured import structured_prune

        res = structured_prune(variables, ratio)
        model = res.model(dtype=jnp.dtype(dtype))
        info = {k: v for k, v in res.summary().items() if k != "widths"}
        info["channel_ratio_removed"] = ratio
        return functools.partial(model.apply, out_size=out_size), res.variables, info

    return build


def int8_builder(variables, frames, out_size, dtype):
    """Integer convolutions (``compress.int8``), calibrated on the benchmark input.

    Returns:
      ``(int8_apply, qmodel, info)``; ``info`` says how many convs are selected.
    """
    del dtype  # integer convs; the rest float32
    import jax.numpy as jnp

    from deepliflow_jax.compress.int8 import calibrate, int8_apply, quantize_int8

    ranges = calibrate(variables, [jnp.asarray(frames)])
    qmodel = quantize_int8(variables, ranges)

    def apply(q, f):
        return int8_apply(q, f, None, out_size)

    return apply, qmodel, {"int8_layers": len(qmodel["convs"]),
                           "calibration": "max |x| on the benchmark input itself"}


def _structured(match: re.Match) -> RuntimeConfig:
    percent = float(match.group(1))
    if not 0 < percent < 100:
        raise ValueError(f"channel percentage must be in (0, 100), got {percent:g}")
    return RuntimeConfig(
        name=match.group(0), framework="jax",
        description=f"float32, {percent:g} % of the channels of every group removed "
                    "(structured, smaller dense convs)",
        builder=structured_builder(percent / 100.0))


def _conv_impl(match: re.Match) -> RuntimeConfig:
    from deepliflow_jax.model.layers import check_conv_impl

    impl = check_conv_impl(match.group(1))
    return RuntimeConfig(
        name=match.group(0), framework="jax", conv_impl=impl,
        description=f"float32, conv_impl={impl!r} (an exact alternative form of the convs)")


def _train_conv_impl(match: re.Match) -> RuntimeConfig:
    from deepliflow_jax.model.layers import check_conv_impl

    impl = check_conv_impl(match.group(1))
    return RuntimeConfig(
        name=match.group(0), framework="jax", kind="train_step", conv_impl=impl,
        description=f"one fine-tuning step, float32, conv_impl={impl!r}")


def _pruned(match: re.Match) -> RuntimeConfig:
    percent = float(match.group(1))
    if not 0 <= percent < 100:
        raise ValueError(f"pruning percentage must be in [0, 100), got {percent:g}")
    return RuntimeConfig(
        name=match.group(0), framework="jax",
        description=f"float32, {percent:g} % of weights+biases pruned (global magnitude, "
                    "masks applied, dense convs)",
        transform=prune_transform(percent))


def _fake_quant(match: re.Match) -> RuntimeConfig:
    bits = int(match.group(1))
    if not 2 <= bits <= 16:
        raise ValueError(f"bit width must be in [2, 16], got {bits}")
    return RuntimeConfig(
        name=match.group(0), framework="jax",
        description=f"float32, weights+biases fake-quantized to {bits} bits (per tensor, "
                    "stored as float32, dense convs)",
        transform=quant_transform(bits))


register(RuntimeConfig("dense", "jax", "float32 params and compute (the baseline), the "
                       "default conv_impl ('auto': the fastest exact form on the backend)"))
register(RuntimeConfig("bf16", "jax", "bfloat16 compute, float32 params (cast in the graph)",
                       dtype="bfloat16"))
register(RuntimeConfig("pruned", "jax", f"alias of pruned{DEFAULT_PRUNE_PERCENT:g}",
                       transform=prune_transform(DEFAULT_PRUNE_PERCENT)))
register_family(r"pruned(\d+(?:\.\d+)?)", _pruned)
register_family(r"fq(\d+)", _fake_quant)
register(RuntimeConfig("fp16", "jax", "float16 compute, float32 params (cast in the graph)",
                       dtype="float16"))
register_family(r"conv_([a-z0-9+]+)", _conv_impl)
register_family(r"train_conv_([a-z0-9+]+)", _train_conv_impl)
register(RuntimeConfig("torch_eager", "torch", "PyTorch reference, eager, float32",
                       torch_mode="eager"))
register(RuntimeConfig("torch_compile", "torch", "PyTorch reference, torch.compile, float32",
                       torch_mode="compile"))
register(RuntimeConfig("torch_eager_bf16", "torch",
                       "PyTorch reference, eager, autocast bfloat16", dtype="bfloat16",
                       torch_mode="eager"))
register(RuntimeConfig("torch_compile_bf16", "torch",
                       "PyTorch reference, torch.compile, autocast bfloat16",
                       dtype="bfloat16", torch_mode="compile"))
register(RuntimeConfig("train_step", "jax", "one fine-tuning step (forward + backward + Adam)",
                       kind="train_step"))
register(RuntimeConfig("train_step_bf16", "jax", "fine-tuning step, bfloat16 compute",
                       dtype="bfloat16", kind="train_step"))
register(RuntimeConfig("torch_train_step", "torch", "PyTorch reference, one fine-tuning step "
                       "(forward + backward + Adam), eager, float32", kind="train_step",
                       torch_mode="eager"))
register(RuntimeConfig("torch_compile_train_step", "torch", "PyTorch reference, one "
                       "fine-tuning step, objective and Adam torch.compile'd, float32",
                       kind="train_step", torch_mode="compile"))
register_family(r"structured(\d+(?:\.\d+)?)", _structured)
register(RuntimeConfig("structured", "jax", "alias of structured50",
                       builder=structured_builder(0.5)))
register(RuntimeConfig("int8", "jax", "int8 x int8 -> int32 convolutions (calibrated "
                       "activations), float normalized convs / cost volume / warping",
                       builder=int8_builder))
# a variant that is planned but missing is registered with unavailable="why" so that its
# name gives a clear error rather than an "unknown configuration"

DEFAULT_CONFIGS = ("dense,bf16,pruned50,fq16,fq14,fq12,fq10,fq8,fq6,structured50,int8,"
                   "torch_eager,torch_compile,train_step,torch_train_step")
