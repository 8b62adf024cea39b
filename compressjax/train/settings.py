"""The settings ``fit``, the mesh and the optimizers take: frozen dataclasses of plain values.

:mod:`compressjax.config` nests them in an experiment's ``Config`` (with type-checked
overrides); library users build them directly.
"""

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimizer and learning-rate schedule; weight decay skips biases and norm scales."""

  name: Literal["sgd", "adamw"] = "sgd"
  lr: float = 0.1
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 5e-4
  schedule: Literal["cosine", "constant"] = "cosine"
  warmup_epochs: float = 0.0
  end_lr_factor: float = 0.0
  grad_clip_norm: float | None = None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The device mesh ``fit`` runs on: axes ("data", "fsdp"), data-parallel over both.

  Batches are split over all ``data x fsdp`` devices. With ``fsdp > 1`` every parameter of at
  least ``fsdp_min_size`` elements is sharded along its largest axis divisible by ``fsdp``
  (FSDP/ZeRO-3 style); its optimizer state and quantizer state follow it. ``data=-1`` uses
  every device not taken by ``fsdp``. The default is plain data parallelism on all devices.
  """

  data: int = -1
  fsdp: int = 1
  fsdp_min_size: int = 2**16


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Training loop: length, batching, seeding, evaluation, checkpointing, logging, devices.

  ``mesh``, ``distributed`` and ``prefetch`` say how a run is executed, not what it computes:
  a run may resume with other values (e.g. on another mesh).
  """

  epochs: int = 10
  steps: int | None = None  # if set, overrides epochs
  batch_size: int = 128
  seed: int = 0
  eval_every_epochs: int | None = 1
  eval_every_steps: int | None = None
  checkpoint_every_steps: int | None = None  # None: once per epoch
  max_to_keep: int = 2
  log_every_steps: int = 50
  progress: bool | None = None  # None: only when stderr is a terminal
  mesh: MeshConfig = MeshConfig()
  distributed: bool = False  # jax.distributed.initialize (multi-host; see train/mesh.py)
  prefetch: int = 2  # batches placed on the devices ahead of the step (0: no background thread)
