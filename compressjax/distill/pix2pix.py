"""pix2pix training of a generator, optionally distilled from a frozen teacher generator (CAT).

Generator loss: ``gan_weight * hinge_G + lambda_recon * L1 + weight * distill`` where ``distill``
is CAT's ``-sum_l KA(student_l, teacher_l)`` (``kind="ka"``, no adaptor) or GAN Compression's
``sum_l MSE(adaptor_l(student_l), teacher_l)`` (``kind="mse"``, learned 1x1 adaptors trained
with the generator). The discriminator (conditional PatchGAN) takes the hinge loss. Both players are
updated in one jitted step from the same generator forward pass. Generators are called as
``apply(variables, x, train=...)``; their non-parameter collections (BatchNorm statistics) are
updated in training mode, and the frozen teacher runs with ``train=False``.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from compressjax.distill.alignment import ka_loss
from compressjax.distill.feature import feature_mse, init_adaptor
from compressjax.distill.hinge import hinge_d_loss, hinge_g_loss
from compressjax.distill.image_metrics import psnr, ssim
from compressjax.distill.taps import apply_with_taps, taps

DISTILL_KINDS = ("ka", "mse")


@dataclasses.dataclass(frozen=True)
class FeatureDistill:
  """Which teacher features the student matches, how, and with what weight."""
  teacher: nn.Module
  teacher_variables: Any
  student_paths: tuple[str, ...]
  teacher_paths: tuple[str, ...]
  kind: str = "ka"
  weight: float = 1.0

  def __post_init__(self):
    if self.kind not in DISTILL_KINDS:
      raise ValueError(f"FeatureDistill.kind must be one of {DISTILL_KINDS}, got {self.kind!r}")
    if len(self.student_paths) != len(self.teacher_paths) or not self.student_paths:
      raise ValueError(f"student_paths {self.student_paths} and teacher_paths "
                       f"{self.teacher_paths} must be non-empty and pair up one to one")


@struct.dataclass
class GanState:
  """``g_params`` = {"generator": ..., "adaptors": {student path: adaptor}} (adaptors for mse);
  ``g_state``: the generator's other collections (e.g. "batch_stats")."""
  step: jax.Array
  g_params: Any
  g_state: Any
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any


def pix2pix_init(model: nn.Module, seed: int, *example_args: Any) -> dict[str, Any]:
  """Variables with pix2pix/CAT's initialisation: kernels N(0, 0.02), norm scales N(1, 0.02),
  biases 0, BatchNorm statistics (0, 1).

  Only shapes are traced (``eval_shape``); values come from ``np.random.default_rng(seed)``.
  This avoids compiling an init program with a PRNG call per parameter, which takes XLA tens
  of seconds on CPU for a generator with ~100 parameter arrays.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), *example_args)
  rng = np.random.default_rng(seed)
  fill = {"kernel": lambda s: rng.normal(0.0, 0.02, s), "scale": lambda s: rng.normal(1.0, 0.02, s),
          "bias": np.zeros, "mean": np.zeros, "var": np.ones}

  def make(path, leaf):
    name = jax.tree_util.keystr(path[-1:], simple=True)
    if name not in fill:
      raise ValueError(f"pix2pix_init knows kernel/scale/bias/mean/var leaves, not "
                       f"{jax.tree_util.keystr(path, simple=True, separator='/')}")
    return jnp.asarray(fill[name](leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, shapes)


def init_gan_state(seed: int, generator: nn.Module, discriminator: nn.Module,
                   g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
                   example_input: jax.Array, example_target: jax.Array,
                   distill: FeatureDistill | None = None) -> GanState:
  """Initialises both players with ``pix2pix_init`` (and the MSE adaptors, sized from the
  tapped feature shapes)."""
  g_vars = dict(pix2pix_init(generator, seed, example_input))
  d_vars = pix2pix_init(discriminator, seed + 1, example_input, example_target)
  ka = jax.random.key(seed)
  adaptors = {}
  if distill is not None and distill.kind == "mse":
    s_feats = jax.eval_shape(lambda v: taps(generator, v, example_input, distill.student_paths),
                             g_vars)
    t_feats = jax.eval_shape(lambda v: taps(distill.teacher, v, example_input,
                                            distill.teacher_paths, train=False),
                             distill.teacher_variables)
    keys = jax.random.split(ka, len(distill.student_paths))
    for k, sp, tp in zip(keys, distill.student_paths, distill.teacher_paths):
      adaptors[sp] = init_adaptor(k, s_feats[sp].shape[-1], t_feats[tp].shape[-1])
  g_params = {"generator": g_vars.pop("params"), "adaptors": adaptors}
  return GanState(jnp.zeros((), jnp.int32), g_params, g_vars, d_vars["params"],
                  g_tx.init(g_params), d_tx.init(d_vars["params"]))


def _distill_loss(distill: FeatureDistill, s_feats: dict, t_feats: dict,
                  adaptors: dict) -> jax.Array:
  s = [s_feats[p] for p in distill.student_paths]
  t = [jax.lax.stop_gradient(t_feats[p]) for p in distill.teacher_paths]
  if distill.kind == "ka":
    return ka_loss(s, t)
  return sum(feature_mse(si, ti, adaptors[p]) for si, ti, p in zip(s, t, distill.student_paths))


def make_gan_step(generator: nn.Module, discriminator: nn.Module,
                  g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
                  lambda_recon: float = 100.0, distill: FeatureDistill | None = None,
                  gan_weight: float | Callable[[jax.Array], jax.Array] = 1.0
                  ) -> Callable[[GanState, jax.Array, jax.Array], tuple[GanState, dict]]:
  """A jitted ``step(state, inputs, targets) -> (state, metrics)`` updating G and D once.

  ``gan_weight`` scales the generator's hinge term: a float, or a function of the step count
  (e.g. an optax schedule) for an L1-only warm-up before the adversarial term switches on. With
  weight 0 the generator trains on L1 (+ distillation) alone; the discriminator still trains,
  so ``d_loss`` keeps reporting how well it separates real from generated images.
  """
  weight_at = gan_weight if callable(gan_weight) else lambda _: gan_weight

  def g_loss_fn(g_params, g_state, d_params, teacher_vars, x, y, step):
    g_vars = {"params": g_params["generator"], **g_state}
    paths = () if distill is None else distill.student_paths
    fake, s_feats, g_state = apply_with_taps(generator, g_vars, x, paths=paths,
                                             mutable=list(g_state), train=True)
    metrics = {}
    loss = 0.0
    if distill is not None:
      t_feats = taps(distill.teacher, teacher_vars, x, distill.teacher_paths, train=False)
      d_term = _distill_loss(distill, s_feats, t_feats, g_params["adaptors"])
      metrics["distill"] = d_term
      loss = distill.weight * d_term
    gan = hinge_g_loss(discriminator.apply({"params": d_params}, x, fake))
    l1 = jnp.mean(jnp.abs(fake - y))
    w_gan = jnp.asarray(weight_at(step), jnp.float32)
    metrics.update(g_gan=gan, l1=l1, gan_weight=w_gan)
    return loss + w_gan * gan + lambda_recon * l1, (fake, g_state, metrics)

  def d_loss_fn(d_params, x, y, fake):
    real_logits = discriminator.apply({"params": d_params}, x, y)
    fake_logits = discriminator.apply({"params": d_params}, x, fake)
    return hinge_d_loss(real_logits, fake_logits)

  @jax.jit
  def _step(state: GanState, x, y, teacher_vars):
    (g_loss, (fake, g_state, metrics)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
        state.g_params, state.g_state, state.d_params, teacher_vars, x, y, state.step)
    d_loss, d_grads = jax.value_and_grad(d_loss_fn)(state.d_params, x, y,
                                                    jax.lax.stop_gradient(fake))
    g_updates, g_opt = g_tx.update(g_grads, state.g_opt_state, state.g_params)
    d_updates, d_opt = d_tx.update(d_grads, state.d_opt_state, state.d_params)
    new = state.replace(step=state.step + 1,
                        g_params=optax.apply_updates(state.g_params, g_updates),
                        g_state=g_state,
                        d_params=optax.apply_updates(state.d_params, d_updates),
                        g_opt_state=g_opt, d_opt_state=d_opt)
    return new, {**metrics, "g_loss": g_loss, "d_loss": d_loss}

  teacher_vars = None if distill is None else distill.teacher_variables

  def step(state: GanState, x: jax.Array, y: jax.Array) -> tuple[GanState, dict]:
    return _step(state, x, y, teacher_vars)

  return step


def generator_variables(state: GanState) -> dict[str, Any]:
  """The generator's variables for ``apply`` (params and e.g. batch_stats)."""
  return {"params": state.g_params["generator"], **state.g_state}


def generate(generator: nn.Module, variables: Any, inputs: np.ndarray,
             batch_size: int = 8) -> np.ndarray:
  """Generator outputs (``train=False``) for ``inputs``, computed in batches."""
  apply = jax.jit(lambda v, x: generator.apply(v, x, train=False))
  return np.concatenate([np.asarray(apply(variables, inputs[i:i + batch_size]))
                         for i in range(0, len(inputs), batch_size)])


def image_scores(outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
  """Mean PSNR (dB) and SSIM of outputs against targets, both in [-1, 1]."""
  return {"psnr": float(jnp.mean(psnr(outputs, targets, 2.0))),
          "ssim": float(jnp.mean(ssim(outputs, targets, 2.0)))}


def evaluate_generator(generator: nn.Module, variables: Any, inputs: np.ndarray,
                       targets: np.ndarray) -> dict[str, float]:
  """``image_scores`` of the generator's outputs (``train=False``) for ``inputs``."""
  return image_scores(generate(generator, variables, inputs), targets)
