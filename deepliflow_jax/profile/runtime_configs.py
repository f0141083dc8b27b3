"""Registry of the configurations the run-time harness times.

A configuration is a named way to run the network: which framework (``jax`` or
``torch``), which compute dtype, and which transformation of the float32
parameters (pruning masks applied, fake quantization, ...). Names are looked up
with :func:`resolve`; families take a number in the name (``pruned50`` prunes
50 %, ``fq8`` fake-quantizes to 8 bits). New variants (structured pruning,
integer kernels) are added with :func:`register` / :func:`register_family`;
the planned ones are registered already as *unavailable* with the reason, so
asking for them fails with a clear message rather than a typo-like error.

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
FQ_BITS = (16, 14, 12, 10, 8, 6)
DEFAULT_PRUNE_PERCENT = 50.0

ParamTransform = Callable[[dict], tuple[dict, dict]]


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """One timed configuration.

    Attributes:
      name: registry name (as on the command line).
      framework: ``"jax"`` or ``"torch"``.
      description: one line for the tables.
      dtype: compute dtype name (``"float32"`` or ``"bfloat16"``); params stay f32.
      kind: ``"forward"`` (inference) or ``"train_step"`` (one fine-tuning step).
      transform: ``variables -> (variables, info)`` applied to the f32 params
        before timing (None: unchanged); ``info`` lands in the results.
      torch_mode: ``"eager"`` or ``"compile"`` for torch configs.
      unavailable: None, or why this configuration cannot run yet.
    """

    name: str
    framework: str
    description: str
    dtype: str = "float32"
    kind: str = "forward"
    transform: ParamTransform | None = None
    torch_mode: str | None = None
    unavailable: str | None = None

    def __post_init__(self):
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {FRAMEWORKS}, got {self.framework!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

    @property
    def executable_key(self) -> tuple[str, str, str]:
        """Configs with the same key run the same compiled program."""
        return (self.framework, self.kind, self.dtype if self.torch_mode is None
                else f"{self.dtype}/{self.torch_mode}")


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
        from deepliflow_jax.compress import prune

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
        from deepliflow_jax.compress import quantize

        quant = quantize(variables, bits)
        counts = _count(quant)
        return quant, {"bits": bits, "zero_fraction": counts["zeros"] / max(counts["size"], 1)}

    return transform


def _leaves(tree: Any) -> list:
    import jax

    return jax.tree.leaves(tree)


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


register(RuntimeConfig("dense", "jax", "float32 params and compute (the baseline)"))
register(RuntimeConfig("bf16", "jax", "bfloat16 compute, float32 params (cast in the graph)",
                       dtype="bfloat16"))
register(RuntimeConfig("pruned", "jax", f"alias of pruned{DEFAULT_PRUNE_PERCENT:g}",
                       transform=prune_transform(DEFAULT_PRUNE_PERCENT)))
register_family(r"pruned(\d+(?:\.\d+)?)", _pruned)
register_family(r"fq(\d+)", _fake_quant)
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
# planned variants: registered so that the name is known and the reason is given
register(RuntimeConfig(
    "structured", "jax", "structurally pruned (channels removed: smaller dense convs)",
    unavailable="needs deepliflow_jax.compress structured pruning (not in the package yet); "
                "register a RuntimeConfig whose transform returns the slimmed params and "
                "whose model is built from them"))
register(RuntimeConfig(
    "int8", "jax", "integer (int8 x int8 -> int32) convolutions",
    unavailable="no integer-kernel model variant exists yet; fake quantization (fq8) runs "
                "float32 convolutions"))

DEFAULT_CONFIGS = ("dense,bf16,pruned50,fq16,fq14,fq12,fq10,fq8,fq6,"
                   "torch_eager,torch_compile,train_step")
