"""CIFAR-10 ResNet-20, SAT W4A4 fine-tuned from the float run (``cifar10_resnet20.py``).

SAT weights (DoReFa clamp + scale adjustment) and PACT activations with the calibrated gradient,
first and last layer 8-bit (:mod:`compressjax.quant.recipes`). The "centered" weight grid is
used: the "modified" grid's mean shift collapses BN-free layers at 3 bits (see
experiments/results/quantization.md). METHODS.md gives no QAT schedule; this is the usual
fine-tune: 1/10 of the float learning rate, cosine, 60 epochs, same weight decay (none on
quantizer parameters).

Run, after the float run (its workdir is ``quant.init_from``):
  compressjax train --config experiments/configs/cifar10_resnet20.py
  compressjax train --config experiments/configs/cifar10_resnet20_sat_w4a4.py
"""

import dataclasses
import os

from compressjax.config import Config, QuantConfig, get_config as load

FLOAT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_resnet20.py")


def get_config() -> Config:
  base = load(FLOAT)
  return dataclasses.replace(
      base, name="cifar10_resnet20_sat_w4a4",
      optim=dataclasses.replace(base.optim, lr=0.01, warmup_epochs=0.0),
      train=dataclasses.replace(base.train, epochs=60),
      quant=QuantConfig(method="sat_centered", w_bits=4, a_bits=4, edge_bits=8,
                        init_from=os.path.join("runs", base.name)))
