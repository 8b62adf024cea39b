"""Runs described by a ``Config``: build the dataset and zoo model it names, then train,
evaluate or quantize them in a workdir (what the CLI, the pipeline and the experiments call).

An application layer above ``data``, ``models`` and ``config`` (and below ``cli`` and
``pipeline``): the training machinery it drives (``fit``, states, steps, checkpoints, meshes,
optimizers, QAT from float) lives in :mod:`compressjax.train` and takes plain arguments.
"""

from compressjax.runs.classifier import Setup, evaluate_workdir, setup, train_classifier
from compressjax.runs.qat import quantize_classifier

__all__ = ["Setup", "evaluate_workdir", "quantize_classifier", "setup", "train_classifier"]
