"""The device mesh of a run, and multi-host start-up.

A mesh has two axes: "data" and "fsdp". Batches are split over both (every device sees its own
examples); "fsdp" additionally shards large parameters (see :mod:`compressjax.train.sharding`).
On several hosts (``jax.distributed``), the mesh spans the devices of every process.
"""

import math
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from compressjax.train.settings import MeshConfig, TrainConfig

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
_PROCESS_ENV = ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes of ``cfg`` on ``num_devices`` devices (``data=-1``: the rest)."""
  if cfg.fsdp < 1 or (cfg.data < 1 and cfg.data != -1):
    raise ValueError(f"train.mesh data={cfg.data}, fsdp={cfg.fsdp}: sizes must be >= 1 "
                     "(data may be -1 for all remaining devices)")
  if cfg.data == -1 and num_devices % cfg.fsdp:
    raise ValueError(f"train.mesh fsdp={cfg.fsdp} does not divide the {num_devices} devices "
                     "(with data=-1 the mesh uses them all); set train.mesh.data explicitly")
  data = num_devices // cfg.fsdp if cfg.data == -1 else cfg.data
  if data < 1 or data * cfg.fsdp > num_devices:
    raise ValueError(f"train.mesh data={cfg.data} x fsdp={cfg.fsdp} needs "
                     f"{max(cfg.data, 1) * cfg.fsdp} devices but only {num_devices} are available")
  return data, cfg.fsdp


def make_mesh(cfg: MeshConfig, devices: list[jax.Device] | None = None) -> Mesh:
  """The ("data", "fsdp") mesh of ``cfg`` over ``devices`` (default: all, every process).

  A mesh smaller than the device count uses the first devices. Axes are of the "Auto" kind:
  the compiler propagates shardings from the ones ``fit`` pins (state, batch).
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(cfg, len(devices))
  if jax.process_count() > 1 and math.prod(shape) != len(devices):
    raise ValueError(f"train.mesh {shape[0]}x{shape[1]} must use all {len(devices)} devices "
                     f"of a {jax.process_count()}-process run")
  grid = np.asarray(devices[:math.prod(shape)], dtype=object).reshape(shape)
  return Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto,) * 2)


def initialize_distributed(cfg: TrainConfig) -> bool:
  """Starts ``jax.distributed`` when asked: ``train.distributed=true`` or $JAX_COORDINATOR_ADDRESS.

  The coordinator address, process count and id come from $JAX_COORDINATOR_ADDRESS,
  $JAX_NUM_PROCESSES and $JAX_PROCESS_ID when set, else from JAX's cluster detection (SLURM,
  Open MPI, TPU pods, Kubernetes). Must run before anything else touches JAX; returns whether
  it initialised.
  """
  if not (cfg.distributed or os.environ.get(COORDINATOR_ENV)):
    return False
  if jax.distributed.is_initialized():
    return True
  num_processes, process_id = (os.environ.get(k) for k in _PROCESS_ENV)
  jax.distributed.initialize(
      coordinator_address=os.environ.get(COORDINATOR_ENV),
      num_processes=None if num_processes is None else int(num_processes),
      process_id=None if process_id is None else int(process_id))
  return True
