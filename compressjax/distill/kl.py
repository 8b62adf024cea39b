"""Logit distillation (Hinton et al. 2015): tempered KL and the hard/soft mix.

The KL term is multiplied by T^2 so that its gradient keeps the same scale as the cross-entropy
term when the temperature changes (the gradient of the tempered softmax shrinks as 1/T^2).
"""

import jax
import jax.numpy as jnp


def _check_logits(student_logits: jax.Array, teacher_logits: jax.Array) -> None:
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
        f"student logits {student_logits.shape} and teacher logits {teacher_logits.shape} must "
        "have the same shape (batch, classes)")


def _check_temperature(temperature: float) -> None:
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")


def soft_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 4.0,
            top_k: int | None = None) -> jax.Array:
  """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch.

  With ``top_k`` both distributions are restricted to (and renormalised over) the teacher's k
  largest classes of each example, which drops the teacher's noisy tail.
  """
  _check_logits(student_logits, teacher_logits)
  _check_temperature(temperature)
  z_s = student_logits.astype(jnp.float32) / temperature
  z_t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
  if top_k is not None:
    classes = z_t.shape[-1]
    if not 1 <= top_k <= classes:
      raise ValueError(f"top_k must be in 1..{classes} (number of classes), got {top_k}")
    z_t, idx = jax.lax.top_k(z_t, top_k)
    z_s = jnp.take_along_axis(z_s, idx, axis=-1)
  log_p_t = jax.nn.log_softmax(z_t, axis=-1)
  log_p_s = jax.nn.log_softmax(z_s, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return temperature**2 * jnp.mean(kl)


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_mask: jax.Array | None = None) -> jax.Array:
  """Mean cross-entropy for integer labels (B,) or one-hot/soft labels (B, C).

  ``label_mask`` (B,) averages over the labelled examples only (few-label training).
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  if labels.ndim == logits.ndim:
    per_example = -jnp.sum(labels * log_p, axis=-1)
  elif labels.ndim == logits.ndim - 1 and jnp.issubdtype(labels.dtype, jnp.integer):
    per_example = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
  else:
    raise ValueError(f"labels must be integers of shape {logits.shape[:-1]} or one-hot of shape "
                     f"{logits.shape}, got {labels.dtype}{labels.shape}")
  if label_mask is None:
    return jnp.mean(per_example)
  mask = label_mask.astype(jnp.float32)
  return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def hinton_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                temperature: float = 4.0, alpha: float = 0.9,
                label_mask: jax.Array | None = None) -> jax.Array:
  """(1 - alpha) * CE(labels, student) + alpha * T^2 * KL(teacher_T || student_T).

  The KL term uses every example; ``label_mask`` restricts the CE term to labelled ones.
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  ce = cross_entropy(student_logits, labels, label_mask)
  kl = soft_kl(student_logits, teacher_logits, temperature)
  return (1.0 - alpha) * ce + alpha * kl
