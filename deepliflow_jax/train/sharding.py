"""Data-parallel fine-tuning with ``jax.sharding``: one code path for 1..N devices.

A 1-D mesh with a ``"data"`` axis spans the chosen devices (:func:`make_mesh`:
a count of this process's devices, a device list, or all devices of all hosts
after :func:`initialize_distributed`). The train state is replicated, the batch
is split along its leading axis, and ``jit`` with these shardings lets XLA
insert the gradient all-reduce: the loss is a mean over the *global* batch, so
the result equals the single-device run up to float summation order.
:class:`~deepliflow_jax.train.trainer.Trainer` (``devices=``) trains this way;
the study's ``--devices`` flag sets it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
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
    a coordinator or more than one process (arguments, or the environment's
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or with
    ``auto=True`` (let JAX detect SLURM, Open MPI, Cloud TPU, ...). Afterwards
    ``make_mesh()`` spans all hosts' devices and each host feeds its own share of
    every global batch to :func:`shard_batch`, while ``make_mesh(n)`` keeps to
    this process's devices (the study: each process is a worker that runs whole
    configurations).

    Returns:
      Whether ``jax.distributed`` was initialised.

    Raises:
      ValueError: ``JAX_NUM_PROCESSES`` or ``JAX_PROCESS_ID`` is not a whole number.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    # JAX reads only the coordinator from the environment; these two are ours
    num_processes = _env_int("JAX_NUM_PROCESSES", num_processes)
    process_id = _env_int("JAX_PROCESS_ID", process_id)
    if not (coordinator_address is not None or (num_processes or 1) > 1 or auto):
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return True


def _env_int(name: str, value: int | None) -> int | None:
    text = os.environ.get(name, "").strip()
    if value is not None or not text:
        return value
    try:
        return int(text)
    except ValueError as err:
        raise ValueError(f"{name}={text!r} is not a whole number") from err


def make_mesh(devices: int | Sequence[jax.Device] | None = None,
              axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D data-parallel mesh.

    Args:
      devices: a count (the first ``devices`` of this process's ``jax.local_devices()``),
        a list of devices, or None (all devices of all processes).
      axis_name: the mesh axis that splits the batch.

    Raises:
      ValueError: a count below 1 or above the local devices, or an empty list.
    """
    if isinstance(devices, int | np.integer):
        local = jax.local_devices()
        if not 1 <= devices <= len(local):
            raise ValueError(f"devices={devices}: this process has {len(local)} "
                             f"{local[0].platform} device(s); use 1..{len(local)}")
        devices = local[:devices]
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices: an empty device list")
    return Mesh(np.asarray(devices), (axis_name,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (params, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the mesh's data axis."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


def replicate(tree: Any, mesh: Mesh, *, copy: bool = False) -> Any:
    """Places a pytree (e.g. the train state) replicated on the mesh.

    ``copy=True`` never aliases the caller's device arrays (a donating step may then
    consume the result without deleting them).
    """
    return jax.device_put(tree, replicated(mesh), may_alias=False if copy else None)


def shard_batch(batch: Any, mesh: Mesh, axis_name: str = DATA_AXIS, *,
                unbatched: Collection[str] = ()) -> Any:
    """Turns this process's share of the batch into global arrays split on axis 0.

    Args:
      batch: pytree of host arrays; each process passes its local examples (one
        process: the whole batch). Scalars (e.g. a loss scale) are replicated.
      mesh: the data-parallel mesh.
      axis_name: the mesh's data axis.
      unbatched: top-level keys of a dict ``batch`` whose leaves have no batch axis
        (e.g. per-channel masks): replicated, not split.

    Returns:
      The batch as global ``jax.Array``s sharded along the batch axis.

    Raises:
      ValueError: if a batched leaf does not divide over the devices.
    """
    split, whole = data_sharded(mesh, axis_name), replicated(mesh)
    n_dev = mesh.shape[axis_name]
    n_local = len(mesh.local_devices)

    def put(x, sharding=split):
        x = np.asarray(x)
        if x.ndim == 0 or sharding is whole:
            return jax.make_array_from_process_local_data(whole, x)
        if x.shape[0] % n_local:
            raise ValueError(
                f"batch leaf with shape {x.shape} does not split over {n_local} local "
                f"devices ({n_dev} in the mesh); use a global batch divisible by {n_dev}"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    if unbatched and isinstance(batch, dict):
        return {k: jax.tree.map(lambda x: put(x, whole), v) if k in unbatched
                else jax.tree.map(put, v) for k, v in batch.items()}
    return jax.tree.map(put, batch)


def jit_step(
    step: Callable[[Any, Any], tuple[Any, Any]],
    mesh: Mesh,
    *,
    donate: bool = False,
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """The one ``jax.jit`` around a train step, with data-parallel shardings.

    The inputs keep the shardings they were placed with: the state by
    :func:`replicate`, the batch by :func:`shard_batch` (split on axis 0, its scalars
    and ``unbatched`` parts replicated); the outputs are replicated.

    Args:
      step: ``(state, batch) -> (state, metrics)``.
      mesh: from :func:`make_mesh` (1 device works the same way).
      donate: donate the input state's buffers (saves memory on accelerators).

    Returns:
      The jitted step: state and metrics replicated.
    """
    repl = replicated(mesh)
    return jax.jit(step, out_shardings=(repl, repl), donate_argnums=(0,) if donate else ())
