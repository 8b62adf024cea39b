"""Model zoo: plain Flax Linen classifiers that know nothing of compression.

Every classifier is called as ``model.apply(variables, x, train=...)`` with NHWC float32 input
and returns logits. Submodules have readable names (module paths such as
``"stage1/block0/conv1"``) so rules can target them, and per-layer widths are constructor fields
so channel pruning can rebuild a thinner model of the same class (``channels`` registers them
with :mod:`compressjax.prune.channels`).

An application layer: may import any layer of ``compressjax`` below it (the models themselves
import only Flax).
"""

from compressjax.models import channels  # registers the zoo with channel pruning
from compressjax.models.cnn import CNN
from compressjax.models.layers import ConvBN
from compressjax.models.lm import LM
from compressjax.models.mlp import MLP
from compressjax.models.mobilenet_v2 import BlockSpec, InvertedResidual, MobileNetV2, make_divisible
from compressjax.models.registry import get_model, model_names
from compressjax.models.resnet import BasicBlock, ResNet, ResNetStage, resnet, resnet20
from compressjax.models.vit import EncoderBlock, MlpBlock, ViT

__all__ = [
    "CNN",
    "MLP",
    "BasicBlock",
    "BlockSpec",
    "ConvBN",
    "EncoderBlock",
    "InvertedResidual",
    "LM",
    "MlpBlock",
    "MobileNetV2",
    "ResNet",
    "ResNetStage",
    "ViT",
    "get_model",
    "make_divisible",
    "model_names",
    "resnet",
    "resnet20",
]
