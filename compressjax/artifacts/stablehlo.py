"""StableHLO artifact: a ``jax.export`` module with the weights as inputs, plus the packed weights.

``save_stablehlo`` writes a directory::

  model.stablehlo   jax.export serialized module: fn(leaves: list, x) -> y
  weights.safetensors  the serving variables' flat leaves (QArrays as packed codes, scales,
                    zero points: the integer unpacking runs inside the module), in the
                    safetensors layout (a JSON header, then the raw arrays): readable by any
                    safetensors reader, and no per-array overhead beyond its header entry
  expand.stablehlo  only with sparse weights: stored leaves -> the module's leaves, run once
                    at load (the weights then hold the sparse storage, ``artifacts.sparse``)
  manifest.json     input / output shape and dtype, leaf names, shapes, dtypes and byte sizes

The batch dimension is symbolic (``jax.export.symbolic_shape("b, ...")``): one artifact serves
any batch size; the manifest's input and output shapes have ``null`` there.

Weights are inputs, not constants baked into the module, so the module stays small, the weights
stay packed and inspectable, and a new checkpoint of the same architecture needs only a new
weights file. ``load_stablehlo`` needs only JAX and NumPy (this file imports nothing from
compressjax, so a server can load it by file path without installing the library).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import numpy as np

MODULE = "model.stablehlo"
EXPAND = "expand.stablehlo"
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
FORMAT = "compressjax.stablehlo/2"  # 2: safetensors weights, symbolic batch, sparse expansion


def save_stablehlo(serving_model: Any, serving_vars: dict | None, example_input: Any,
                   path: str, platforms: tuple[str, ...] | None = None,
                   sparse: dict[str, str] | None = None) -> dict:
  """Writes the StableHLO artifact of a serving model to directory ``path``; returns the manifest.

  ``example_input`` (array or ShapeDtypeStruct) fixes the input's dtype and its shape after the
  batch axis. ``platforms`` are the lowering targets of ``jax.export`` (None: the current
  backend). ``sparse``: site name -> "bitmap" or "N:M"; those served weights are stored sparse
  (:func:`compressjax.artifacts.sparse.pack_sites`) and expanded once by the loader.
  """
  from compressjax.artifacts.serving_fn import serving_function  # pylint: disable=g-import-not-at-top

  fn, leaves, names = serving_function(serving_model, serving_vars)
  rest = ", ".join(str(d) for d in example_input.shape[1:])
  x = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {rest}" if rest else "b"),
                           example_input.dtype)
  specs = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in leaves]
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(specs, x)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, MODULE), "wb") as f:
    f.write(exported.serialize())
  stored = dict(zip(names, leaves))
  manifest = {"format": FORMAT, "platforms": list(exported.platforms)}
  if sparse:
    stored, manifest["sparse"] = _save_expand(serving_vars, sparse, leaves, path, platforms)
  write_safetensors(os.path.join(path, WEIGHTS), stored)
  out = exported.out_avals[0]
  manifest.update({
      "input": {"shape": _dims(x.shape), "dtype": np.dtype(x.dtype).name},
      "output": {"shape": _dims(out.shape), "dtype": np.dtype(out.dtype).name},
      "leaves": [{"name": n, "shape": list(v.shape), "dtype": v.dtype.name, "bytes": v.nbytes}
                 for n, v in stored.items()],
      "module_bytes": os.path.getsize(os.path.join(path, MODULE)),
      "weights_bytes": os.path.getsize(os.path.join(path, WEIGHTS)),
  })
  if sparse:
    manifest["expand_bytes"] = os.path.getsize(os.path.join(path, EXPAND))
  with open(os.path.join(path, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def _save_expand(serving_vars, sparse, leaves, path, platforms):
  """Writes ``expand.stablehlo`` (stored sparse leaves -> dense leaves); returns the stored
  leaves by name and the sites' formats."""
  from compressjax.artifacts import sparse as sp  # pylint: disable=g-import-not-at-top

  packed = sp.pack_sites(serving_vars, sparse)
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(packed)
  names = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in with_paths]
  stored = [np.asarray(v) for _, v in with_paths]

  def expand(flat):
    return jax.tree_util.tree_leaves(sp.unpack_tree(jax.tree_util.tree_unflatten(treedef, flat)))

  exported = jax.export.export(jax.jit(expand), platforms=platforms)(
      [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in stored])
  if [(a.shape, a.dtype) for a in exported.out_avals] != [(v.shape, v.dtype) for v in leaves]:
    raise AssertionError("expanded sparse leaves differ from the serving leaves")
  with open(os.path.join(path, EXPAND), "wb") as f:
    f.write(exported.serialize())
  return dict(zip(names, stored)), dict(sparse)


def _dims(shape) -> list:
  """A shape for the manifest: symbolic dimensions become None."""
  return [d if isinstance(d, int) else None for d in shape]


def load_stablehlo(path: str) -> Callable[[Any], jax.Array]:
  """The callable ``x -> y`` of a StableHLO artifact directory (JAX and NumPy only)."""
  with open(os.path.join(path, MANIFEST)) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path}: not a {FORMAT} artifact (format {manifest.get('format')!r})")
  exported = _read(os.path.join(path, MODULE))
  arrays = read_safetensors(os.path.join(path, WEIGHTS))
  leaves = [jax.device_put(arrays[leaf["name"]]) for leaf in manifest["leaves"]]
  if "sparse" in manifest:
    leaves = _read(os.path.join(path, EXPAND)).call(leaves)
  want = manifest["input"]["shape"], np.dtype(manifest["input"]["dtype"])

  def call(x):
    x = jax.numpy.asarray(x)
    if len(x.shape) != len(want[0]) or any(
        w is not None and d != w for d, w in zip(x.shape, want[0])) or x.dtype != want[1]:
      shape = tuple("batch" if w is None else w for w in want[0])
      raise ValueError(f"input of shape {x.shape} and dtype {x.dtype}; the artifact was "
                       f"exported for shape {shape} and dtype {want[1]}")
    return exported.call(leaves, x)

  return call


def _read(path: str):
  with open(path, "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))


_DTYPES = {np.dtype(t): name for t, name in (
    (np.bool_, "BOOL"), (np.uint8, "U8"), (np.int8, "I8"), (np.uint16, "U16"), (np.int16, "I16"),
    (np.uint32, "U32"), (np.int32, "I32"), (np.uint64, "U64"), (np.int64, "I64"),
    (np.float16, "F16"), (jax.numpy.bfloat16, "BF16"), (np.float32, "F32"), (np.float64, "F64"))}


def write_safetensors(path: str, arrays: dict[str, np.ndarray]) -> None:
  """``arrays`` in the safetensors layout: u64 header size, JSON header, raw little-endian data."""
  header, offset = {}, 0
  for name, a in arrays.items():
    header[name] = {"dtype": _DTYPES[np.dtype(a.dtype)], "shape": list(a.shape),
                    "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for a in arrays.values():
      f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The arrays of a safetensors file, by name (NumPy only)."""
  names = {v: k for k, v in _DTYPES.items()}
  with open(path, "rb") as f:
    data = f.read()
  size = int.from_bytes(data[:8], "little")
  header = json.loads(data[8:8 + size])
  header.pop("__metadata__", None)
  body = memoryview(data)[8 + size:]
  return {name: np.frombuffer(body[e["data_offsets"][0]:e["data_offsets"][1]],
                              names[e["dtype"]].newbyteorder("<")).reshape(e["shape"])
          for name, e in header.items()}
