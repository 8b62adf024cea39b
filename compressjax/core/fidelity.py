"""How close a compressed model starts to its float model, and a warning when it is not close.

Init-from-float (``init_from``, NNX ``compress``) sets quantizer state from real tensors and
recalibrates BatchNorm, but at 2-3 bits with every layer quantized no initialisation keeps a
model at its float accuracy. :func:`check_fidelity` compares the two models' outputs on the same
batch (the init batch) and warns, with the numbers, when the compressed one agrees with float on
fewer than ``min_agreement`` of its top-1 predictions, so a QAT run that starts far away says so
instead of silently spending its budget on recovery.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np

MIN_AGREEMENT = 0.9  # top-1 agreement with float below which init-from-float warns


class FidelityWarning(UserWarning):
  """The compressed model starts far from its float model."""


def fidelity(reference: jax.Array, compressed: jax.Array) -> dict[str, float]:
  """``top1_agreement`` (argmax over the last axis; NaN for a scalar output) and
  ``relative_error`` ``||compressed - reference|| / ||reference||`` of two outputs."""
  ref = np.asarray(reference, np.float64)
  out = np.asarray(compressed, np.float64)
  if ref.shape != out.shape:
    raise ValueError(f"fidelity: output shapes differ: float {ref.shape}, compressed {out.shape}")
  agreement = (float(np.mean(ref.argmax(-1) == out.argmax(-1))) if ref.ndim and ref.shape[-1] > 1
               else float("nan"))
  norm = float(np.linalg.norm(ref))
  error = float(np.linalg.norm(out - ref)) / norm if norm > 0 else float(np.linalg.norm(out))
  return {"top1_agreement": agreement, "relative_error": error}


def check_fidelity(reference: jax.Array, compressed: jax.Array, *, what: str,
                   min_agreement: float = MIN_AGREEMENT) -> dict[str, float]:
  """:func:`fidelity`, warning (:class:`FidelityWarning`, naming ``what``) below
  ``min_agreement`` top-1 agreement or on non-finite compressed outputs."""
  result = fidelity(reference, compressed)
  agreement, error = result["top1_agreement"], result["relative_error"]
  if not np.isfinite(error) or agreement < min_agreement:
    warnings.warn(
        f"{what}: right after init-from-float the compressed model agrees with float on "
        f"{100 * agreement:.1f}% of top-1 predictions (relative output error {error:.3g}) over "
        f"{np.shape(reference)[0] if np.ndim(reference) else 1} examples; below "
        f"{100 * min_agreement:.0f}%, training has to recover the rest (lower-bit sites, "
        "first/last layers at higher bits, or a longer fine-tune help)",
        FidelityWarning, stacklevel=2)
  return result
