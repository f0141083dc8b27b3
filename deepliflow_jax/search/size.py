"""Checkpoint size: the bytes ``save_checkpoint`` stores per plan, and measured on disk."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from deepliflow_jax.checkpoint import save_checkpoint
from deepliflow_jax.compress.quantize import QuantConfig
from deepliflow_jax.compress.structured import (
    rounded_keep,
)
from deepliflow_jax.fileio import discard
from deepliflow_jax.model.channels import (
    architecture_widths,
    dependency_graph,
    kernel_shape,
    layer_params,
    unwrap_params,
    widths_of,
)
from deepliflow_jax.search.plans import (
    Choice,
    check_groups,
    group_of_path,
)


def leaf_bytes(size: int, bits: int, nonzero: int, packed: bool) -> int:
    """Payload bytes of one parameter in a checkpoint (``compress.export.pack_params``'s rule).

    Args:
      size: entries of the tensor.
      bits: code width (0: float32).
      nonzero: entries that are not zero (not stored in the sparse form).
      packed: a packed checkpoint (else the float kind: float32 throughout).

    Returns:
      Bytes: float32 values, or whole-byte codes plus one float32 scale (per tensor); the
      sparse form (a 1-bit mask plus the nonzero entries) where it takes fewer bits.
    """
    if not packed:
        return 4 * size
    width, nbytes = (bits, (1 if bits <= 8 else 2)) if bits else (32, 4)
    scale = 4 if bits else 0
    if size + nonzero * width < size * width:
        return (size + 7) // 8 + nonzero * nbytes + scale
    return size * nbytes + scale


class SizeModel:
    """Checkpoint size of a plan, from the channel graph (no model is built).

    Args:
      params: the dense (or structured) model searched from.
      groups: the layer groups.
      multiple: channel counts are rounded to multiples of this.
      disk_factor: ``{bits: disk bytes / payload bytes}`` measured by saving the model
        (Orbax compresses); 0 is float32. Missing widths count 1.0.
    """

    def __init__(self, params: Any, groups: Sequence[tuple[str, str]], multiple: int = 8,
                 disk_factor: Mapping[int, float] | None = None):
        params = unwrap_params(params)[0]
        layers, _ = dependency_graph()
        self.groups = tuple(groups)
        self.multiple = multiple
        self.widths = widths_of(params)
        self.structured = architecture_widths(params) is not None
        self.members = check_groups(groups, self.widths)
        self.channel_owner = {c: g for g, cs in self.members.items() for c in cs}
        self.layers = []
        for path, lay in layers.items():
            shape = kernel_shape(lay, layer_params(params, path))
            self.layers.append((lay, int(np.prod(shape[:2])), group_of_path(path, groups)))
        self.disk_factor = {int(k): float(v) for k, v in (disk_factor or {}).items()}

    def widths_for(self, plan: Mapping[str, Choice]) -> dict[str, int]:
        """Channel widths after pruning each group by its ratio."""
        out = {}
        for c, w in self.widths.items():
            g = self.channel_owner.get(c)
            r = plan[g].ratio if g in plan else 0.0
            out[c] = rounded_keep(w, r, self.multiple, c) if r else w
        return out

    def leaves(self, plan: Mapping[str, Choice]) -> list[tuple[str, int, int, float]]:
        """``(parameter path, entries, bits, percent)`` of every parameter of the plan's model."""
        widths = self.widths_for(plan)
        structured = self.structured or any(c.ratio > 0 for c in plan.values())
        out = []
        for lay, spatial, g in self.layers:
            c = plan.get(g, Choice()) if g else Choice()
            cin = sum(widths[s] if isinstance(s, str) else s for s in lay.inputs)
            cout = widths[lay.group] if lay.group else lay.fixed_out
            p = lay.path + "/"
            if lay.kind == "nconv":
                out.append((p + "kernels", spatial * cin * cout, c.bits, c.percent))
                out += [(p + b, cout, c.bits, c.percent) for b in ("biases", "biases_1")]
                if structured:
                    out.append((p + "conf_mass", cout, 0, 0.0))
            else:
                out.append((p + "kernel", spatial * cin * cout, c.bits, c.percent))
                out.append((p + "bias", cout, c.bits, c.percent))
        return out

    def is_packed(self, plan: Mapping[str, Choice]) -> bool:
        return any(c.bits or c.percent for c in plan.values())

    def payload_bytes(self, plan: Mapping[str, Choice]) -> int:
        """Bytes of the parameters as ``save_checkpoint`` stores them (before compression)."""
        packed = self.is_packed(plan)
        return sum(leaf_bytes(n, b, n - int(round(n * p / 100.0)), packed)
                   for _, n, b, p in self.leaves(plan))

    def disk_bytes(self, plan: Mapping[str, Choice]) -> float:
        """Predicted size on disk: each parameter's payload times its bit width's factor."""
        packed = self.is_packed(plan)
        return float(sum(leaf_bytes(n, b, n - int(round(n * p / 100.0)), packed)
                         * self.disk_factor.get(b, 1.0) for _, n, b, p in self.leaves(plan)))


def dir_size(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path`` (or of the file)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# a fixed name: a call replaces what an interrupted one left, so scratch never fills up
SIZE_PROBE = "size_probe_checkpoint"


def disk_bytes(model: Any, workdir: Path) -> int:
    """Size of the model's checkpoint (``save_checkpoint``), measured in ``workdir``.

    Args:
      model: ``{'params': ...}`` (a float checkpoint) or an int8 model (``int8``).
      workdir: scratch folder.

    Raises:
      FileExistsError: ``workdir/size_probe_checkpoint`` exists and is not a checkpoint.
    """

    out = Path(workdir) / SIZE_PROBE
    save_checkpoint(out, model, overwrite=True)
    size = dir_size(out)
    discard(out)
    return size


def calibrate_disk(params: Any, bits: Sequence[int], workdir: str | Path, quant: QuantConfig
                   ) -> dict[int, float]:
    """``{bits: measured disk bytes / payload bytes}`` of the model saved float and packed.

    Saves ``params`` once as a float checkpoint (key 0) and once packed with every
    parameter at each bit width, in ``workdir/size_probe`` (removed afterwards).
    """
    from deepliflow_jax.fileio import discard

    params = unwrap_params(params)[0]
    out = Path(workdir) / "size_probe"
    model = SizeModel(params, (("all", r".*"),), 1)
    factors = {}
    for b in (0, *bits):
        plan = {"all": Choice(bits=int(b))}
        if b:
            bits_tree = jax.tree.map(lambda _, b=b: np.int32(b), {"params": dict(params)})
            save_checkpoint(out, {"params": params}, overwrite=True, quant=quant, bits=bits_tree)
        else:
            save_checkpoint(out, {"params": params}, overwrite=True)
        factors[int(b)] = dir_size(out) / model.payload_bytes(plan)
    discard(out)
    return factors
