"""QArrays (export's format) are saved and restored by orbax, static fields included."""

import jax
import numpy as np
import orbax.checkpoint as ocp

import compressjax as cj


def test_exported_variables_round_trip_through_orbax(tmp_path, toy_net, toy_input):
  model = cj.compress(toy_net, [cj.Rule(pattern=".", weight=cj.quant.LSQ(bits=4))])
  variables = model.init(jax.random.key(0), toy_input)
  serving_model, serving_vars = cj.export(model, variables, toy_input)
  path = (tmp_path / "served").absolute()
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, serving_vars)
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, serving_vars))
  q = serving_vars["served"]["mix"]["kernel"]["weight"]
  r = restored["served"]["mix"]["kernel"]["weight"]
  assert isinstance(r, cj.QArray) and (r.bits, r.signed, r.shape) == (q.bits, q.signed, q.shape)
  np.testing.assert_array_equal(r.packed, q.packed)
  np.testing.assert_array_equal(serving_model.apply(restored, toy_input),
                                serving_model.apply(serving_vars, toy_input))
