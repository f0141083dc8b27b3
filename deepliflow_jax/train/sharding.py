"""Data-parallel fine-tuning with ``jax.sharding``: one code path for 1..N devices.

A 1-D mesh with a ``"data"`` axis spans all devices (of all hosts after
:func:`initialize_distributed`). The train state is replicated, the batch is
split along its leading axis, and ``jit`` with these shardings lets XLA insert
the gradient all-reduce: the loss is a mean over the *global* batch, so the
result equals the single-device run up to float summation order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> bool:
    """Calls ``jax.distributed.initialize`` for multi-host runs (no-op otherwise).

    Call it before any other JAX call, on every host. It initialises when given
    a coordinator or more than one process, when ``JAX_COORDINATOR_ADDRESS`` /
    ``JAX_NUM_PROCESSES`` is set, or with ``auto=True`` (let JAX detect SLURM,
    Open MPI, Cloud TPU, ...). Afterwards :func:`make_mesh` spans all hosts'
    devices and each host feeds its own share of every global batch to
    :func:`shard_batch` (``data_fn(position)`` returns the process-local slice).

    Returns:
      Whether ``jax.distributed`` was initialised.
    """
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    detected = any(os.environ.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES"))
    if not (explicit or detected or auto):
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D data-parallel mesh over ``devices`` (default: all global devices)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (axis_name,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (params, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the mesh's data axis."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (e.g. the train state) replicated on the mesh."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Turns this process's share of the batch into global arrays split on axis 0.

    Args:
      batch: pytree of host arrays; each process passes its local examples (one
        process: the whole batch).
      mesh: the data-parallel mesh.

    Returns:
      The batch as global ``jax.Array``s sharded along the batch axis.

    Raises:
      ValueError: if the global batch does not divide over the devices.
    """
    sharding = data_sharded(mesh, axis_name)
    n_dev = mesh.shape[axis_name]
    n_local = len(mesh.local_devices)

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % n_local:
            raise ValueError(
                f"batch leaf with shape {x.shape} does not split over {n_local} local "
                f"devices ({n_dev} in the mesh); use a global batch divisible by {n_dev}"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)


def jit_step(
    step: Callable[[Any, Any], tuple[Any, Any]],
    mesh: Mesh,
    *,
    axis_name: str = DATA_AXIS,
    donate: bool = False,
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """The one ``jax.jit`` around a train step, with data-parallel shardings.

    Args:
      step: ``(state, batch) -> (state, metrics)``.
      mesh: from :func:`make_mesh` (1 device works the same way).
      axis_name: the mesh's data axis.
      donate: donate the input state's buffers (saves memory on accelerators).

    Returns:
      The jitted step: state and metrics replicated, batch split on axis 0.
    """
    repl = replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(repl, data_sharded(mesh, axis_name)),
        out_shardings=(repl, repl),
        donate_argnums=(0,) if donate else (),
    )
