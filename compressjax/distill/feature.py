"""Feature distillation by MSE through a learned 1x1 adaptor (as in GAN Compression).

The adaptor maps the student's channels (last axis) to the teacher's, so a thinner student can be
compared with a wider teacher. It is a plain pytree ``{"kernel": (Cs, Ct), "bias": (Ct,)}``; on NHWC
features it is exactly a 1x1 convolution, on (B, C) features a dense layer. Train it with the
student.
"""

import jax
import jax.numpy as jnp

Adaptor = dict[str, jax.Array]


def init_adaptor(key: jax.Array, student_channels: int, teacher_channels: int) -> Adaptor:
  """A 1x1 adaptor from ``student_channels`` to ``teacher_channels`` (LeCun-normal kernel)."""
  for name, c in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
    if c < 1:
      raise ValueError(f"{name} must be >= 1, got {c}")
  kernel = jax.random.normal(key, (student_channels, teacher_channels)) / jnp.sqrt(student_channels)
  return {"kernel": kernel, "bias": jnp.zeros((teacher_channels,))}


def adapt(adaptor: Adaptor, student_feat: jax.Array) -> jax.Array:
  """Applies the adaptor over the last (channel) axis."""
  cs = adaptor["kernel"].shape[0]
  if student_feat.shape[-1] != cs:
    raise ValueError(f"adaptor expects {cs} input channels, student feature has shape "
                     f"{student_feat.shape}")
  return student_feat @ adaptor["kernel"] + adaptor["bias"]


def feature_mse(student_feat: jax.Array, teacher_feat: jax.Array,
                adaptor: Adaptor | None = None) -> jax.Array:
  """mean((adapt(student) - teacher)^2); without an adaptor the shapes must already agree."""
  s = student_feat if adaptor is None else adapt(adaptor, student_feat)
  if s.shape != teacher_feat.shape:
    raise ValueError(f"(adapted) student feature {s.shape} and teacher feature "
                     f"{teacher_feat.shape} differ; pass an adaptor from init_adaptor")
  return jnp.mean((s.astype(jnp.float32) - jax.lax.stop_gradient(teacher_feat)) ** 2)
