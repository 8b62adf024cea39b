import jax
import jax.numpy as jnp
import numpy as np
import optax

from compressjax.core import Rule, compress
from compressjax.distill.alignment import kernel_alignment
from compressjax.distill.kl import hinton_loss, soft_kl
from compressjax.distill.objective import DistillInputs, hinton_objective
from compressjax.models import get_model
from compressjax.prune import Rule as PruneRule
from compressjax.prune import magnitude
from compressjax.quant import LSQ
from compressjax.train import create_train_state
from compressjax.train.distill_step import make_distill_step

X = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
Y = jnp.arange(8) % 10
TEACHER = get_model("cnn", 10, widths=(8, 16), hidden=32)
T_VARS = TEACHER.init(jax.random.key(2), X)
STUDENT = get_model("cnn", 10, widths=(4, 8), hidden=16)


def _state(model, tx):
  return create_train_state(model, tx, X[:1], jax.random.PRNGKey(0))


def test_step_minimises_hinton_loss_with_features_and_few_labels():
  tx = optax.adam(1e-2)
  terms = [("conv1", "conv1", lambda s, t: -kernel_alignment(s, t), 0.5)]
  step = make_distill_step(STUDENT, tx, TEACHER, T_VARS, hinton_objective(feature_terms=terms),
                           student_paths=["conv1"], teacher_paths=["conv1"])
  state = _state(STUDENT, tx)
  labels = jnp.where(jnp.arange(8) < 4, Y, -1)  # half the batch unlabelled
  batch = {"image": X, "label": labels}
  # the first step's loss is the hinton loss of the untrained student (train-mode BatchNorm)
  s_logits = STUDENT.apply(state.variables, X, train=True, mutable=["batch_stats"])[0]
  t_logits = TEACHER.apply(T_VARS, X)
  expected_kd = hinton_loss(s_logits, t_logits, jnp.maximum(labels, 0),
                            label_mask=labels >= 0)
  state, m = step(state, batch)
  np.testing.assert_allclose(m["kd"], expected_kd, rtol=1e-4)
  assert -1.0 <= float(m["feat/conv1"]) < 0.0
  first = float(m["loss"])
  for _ in range(15):
    state, m = step(state, batch)
  assert float(m["loss"]) < first
  assert int(state.step) == 16


def test_unlabelled_examples_get_only_the_soft_term():
  s = jax.random.normal(jax.random.key(3), (4, 10))
  t = jax.random.normal(jax.random.key(4), (4, 10))
  loss, _ = hinton_objective()(DistillInputs(s, t, {}, {}, {"label": -jnp.ones(4, jnp.int32)}))
  np.testing.assert_allclose(loss, 0.9 * soft_kl(s, t, 4.0), rtol=1e-6)


def test_composes_with_a_pruning_chain_and_a_quantized_student():
  qstudent = compress(STUDENT, [Rule(pattern="conv|hidden", weight=LSQ(bits=4))])
  tx = optax.chain(optax.adam(1e-2), magnitude(0.5, skip_first_last=False,
                                               layers=[PruneRule(pattern="hidden")]))
  step = make_distill_step(qstudent, tx, TEACHER, T_VARS, hinton_objective())
  state = _state(qstudent, tx)
  step0 = state.params["compressjax"]["conv1"]["kernel"]["weight"]["step"]
  for _ in range(3):
    state, m = step(state, {"image": X, "label": Y})
  assert np.isfinite(float(m["loss"]))
  hidden = np.asarray(state.params["hidden"]["kernel"])
  assert np.mean(hidden == 0.0) >= 0.5  # pruned weights stay exactly zero
  assert not np.allclose(state.params["compressjax"]["conv1"]["kernel"]["weight"]["step"], step0)  # LSQ step is learned
  assert "quant_stats" in state.model_state or "batch_stats" in state.model_state
