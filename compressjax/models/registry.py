"""Model registry: build a zoo model by name."""

from collections.abc import Callable

import flax.linen as nn

from compressjax.models.cnn import CNN
from compressjax.models.mlp import MLP
from compressjax.models.mobilenet_v2 import MobileNetV2
from compressjax.models.resnet import resnet20
from compressjax.models.vit import ViT

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet20": resnet20,
    "mobilenet_v2": MobileNetV2,
    "vit": ViT,
}


def model_names() -> tuple[str, ...]:
  return tuple(_MODELS)


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """Returns the named model; ``kwargs`` are its constructor fields (e.g. ``widths=(16, 32)``)."""
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; available: {', '.join(_MODELS)}")
  return _MODELS[name](num_classes=num_classes, **kwargs)
