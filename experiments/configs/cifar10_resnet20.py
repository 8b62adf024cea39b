"""CIFAR-10 ResNet-20 float baseline (He et al. 2016 recipe, cosine schedule).

Run: ``compressjax train --config experiments/configs/cifar10_resnet20.py`` (needs CIFAR-10
prepared as array_record in the data dir, see ``compressjax.data.prepare_command``).
"""

from compressjax.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="cifar10_resnet20",
      data=DataConfig(name="cifar10"),
      model=ModelConfig(name="resnet20"),
      optim=OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, warmup_epochs=1.0),
      train=TrainConfig(epochs=200, batch_size=128),
  )
