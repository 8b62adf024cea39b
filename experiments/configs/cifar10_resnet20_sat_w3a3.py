"""CIFAR-10 ResNet-20, SAT W3A3 fine-tuned from the float run: the W4A4 recipe at 3 bits.

Run: ``compressjax train --config experiments/configs/cifar10_resnet20_sat_w3a3.py`` after
``cifar10_resnet20.py`` (see ``cifar10_resnet20_sat_w4a4.py``).
"""

import dataclasses
import os

from compressjax.config import Config, get_config as load

W4A4 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_resnet20_sat_w4a4.py")


def get_config() -> Config:
  base = load(W4A4)
  return dataclasses.replace(base, name="cifar10_resnet20_sat_w3a3",
                             quant=dataclasses.replace(base.quant, w_bits=3, a_bits=3))
