"""ImageNet MobileNetV2, SAT W4A4 (centered grid) fine-tuned from the float run.

SAT weights and PACT activations with the calibrated gradient, first and last layer 8-bit.
METHODS.md gives no schedule: 1/10 of the float learning rate, cosine over 60 epochs, the
float weight decay (none on quantizer parameters).

Run after ``imagenet_mobilenet_v2.py`` (its workdir is ``quant.init_from``):
  compressjax train --config experiments/configs/imagenet_mobilenet_v2_sat_w4a4.py
"""

import dataclasses
import os

from compressjax.config import Config, QuantConfig, get_config as load

FLOAT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_mobilenet_v2.py")


def get_config() -> Config:
  base = load(FLOAT)
  return dataclasses.replace(
      base, name="imagenet_mobilenet_v2_sat_w4a4",
      optim=dataclasses.replace(base.optim, lr=0.02, warmup_epochs=0.0),
      train=dataclasses.replace(base.train, epochs=60),
      quant=QuantConfig(method="sat_centered", w_bits=4, a_bits=4, edge_bits=8,
                        init_from=os.path.join("runs", base.name)))
