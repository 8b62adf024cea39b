"""ImageNet ResNet-18-like (64x64), LSQ W4A4 fine-tuned from the float run.

LSQ (Esser et al. 2020) recipe: start from the trained float network, 90 epochs, SGD momentum
0.9, cosine decay from lr 0.01 (per 256 images: 0.04 at batch 1024), weight decay 1e-4 at 4
bits (0.5e-4 at 3, 0.25e-4 at 2 bits); first and last layer 8-bit. The paper's knowledge
distillation variant is not used.

Run after ``imagenet_resnet18like.py`` (its workdir is ``quant.init_from``):
  compressjax train --config experiments/configs/imagenet_resnet18like_lsq_w4a4.py
"""

import dataclasses
import os

from compressjax.config import Config, QuantConfig, get_config as load

FLOAT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_resnet18like.py")


def get_config() -> Config:
  base = load(FLOAT)
  return dataclasses.replace(
      base, name="imagenet_resnet18like_lsq_w4a4",
      optim=dataclasses.replace(base.optim, lr=0.04, warmup_epochs=0.0, weight_decay=1e-4),
      quant=QuantConfig(method="lsq", w_bits=4, a_bits=4, edge_bits=8,
                        init_from=os.path.join("runs", base.name)))
