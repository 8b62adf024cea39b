"""StableHLO artifact: a ``jax.export`` module with the weights as inputs, plus the packed weights.

``save_stablehlo`` writes a directory::

  model.stablehlo   jax.export serialized module: fn(leaves: list, x) -> y
  weights.npz       the serving variables' flat leaves (QArrays as packed codes, scales, zero
                    points: the integer unpacking runs inside the module)
  manifest.json     input / output shape and dtype, leaf names, shapes, dtypes and byte sizes

Weights are inputs, not constants baked into the module, so the module stays small, the weights
stay packed and inspectable, and a new checkpoint of the same architecture needs only a new
``weights.npz``. ``load_stablehlo`` needs only JAX and NumPy (this file imports nothing from
compressjax, so a server can load it by file path without installing the library).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import numpy as np

MODULE = "model.stablehlo"
WEIGHTS = "weights.npz"
MANIFEST = "manifest.json"
FORMAT = "compressjax.stablehlo/1"


def save_stablehlo(serving_model: Any, serving_vars: dict | None, example_input: Any,
                   path: str, platforms: tuple[str, ...] | None = None) -> dict:
  """Writes the StableHLO artifact of a serving model to directory ``path``; returns the manifest.

  ``example_input`` (array or ShapeDtypeStruct) fixes the input shape and dtype. ``platforms``
  are the lowering targets of ``jax.export`` (None: the current backend).
  """
  from compressjax.artifacts.serving_fn import serving_function  # pylint: disable=g-import-not-at-top

  fn, leaves, names = serving_function(serving_model, serving_vars)
  x = jax.ShapeDtypeStruct(tuple(example_input.shape), example_input.dtype)
  specs = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in leaves]
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(specs, x)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, MODULE), "wb") as f:
    f.write(exported.serialize())
  np.savez(os.path.join(path, WEIGHTS), **dict(zip(names, leaves)))
  out = exported.out_avals[0]
  manifest = {
      "format": FORMAT,
      "platforms": list(exported.platforms),
      "input": {"shape": list(x.shape), "dtype": np.dtype(x.dtype).name},
      "output": {"shape": list(out.shape), "dtype": np.dtype(out.dtype).name},
      "leaves": [{"name": n, "shape": list(v.shape), "dtype": v.dtype.name, "bytes": v.nbytes}
                 for n, v in zip(names, leaves)],
      "module_bytes": os.path.getsize(os.path.join(path, MODULE)),
      "weights_bytes": os.path.getsize(os.path.join(path, WEIGHTS)),
  }
  with open(os.path.join(path, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def load_stablehlo(path: str) -> Callable[[Any], jax.Array]:
  """The callable ``x -> y`` of a StableHLO artifact directory (JAX and NumPy only)."""
  with open(os.path.join(path, MANIFEST)) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path}: not a {FORMAT} artifact (format {manifest.get('format')!r})")
  with open(os.path.join(path, MODULE), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with np.load(os.path.join(path, WEIGHTS)) as z:
    leaves = [jax.device_put(z[leaf["name"]]) for leaf in manifest["leaves"]]
  want = tuple(manifest["input"]["shape"]), np.dtype(manifest["input"]["dtype"])

  def call(x):
    x = jax.numpy.asarray(x)
    if (x.shape, x.dtype) != want:
      raise ValueError(f"input of shape {x.shape} and dtype {x.dtype}; the artifact was "
                       f"exported for shape {want[0]} and dtype {want[1]}")
    return exported.call(leaves, x)

  return call
