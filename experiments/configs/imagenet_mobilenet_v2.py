"""ImageNet MobileNetV2 (width 1.0, 224x224), float baseline.

The paper trains with RMSProp (decay 0.9, momentum 0.9, lr 0.045 decayed by 0.98 per epoch,
weight decay 4e-5). The config offers SGD and AdamW, so this is the SGD recipe commonly used
to reproduce it: SGD momentum 0.9 (Nesterov), lr 0.05 per 256 images (0.2 at batch 1024) with
5 warmup epochs, cosine over 150 epochs, the paper's weight decay 4e-5 on kernels.

Needs ImageNet prepared as array_record (fails at once offline with the command that
prepares it).
  compressjax train --config experiments/configs/imagenet_mobilenet_v2.py
"""

from compressjax.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="imagenet_mobilenet_v2",
      data=DataConfig(name="imagenet2012", augment="flip"),
      model=ModelConfig(name="mobilenet_v2", kwargs={"width_multiplier": 1.0}),
      optim=OptimConfig(name="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=4e-5,
                        warmup_epochs=5.0),
      train=TrainConfig(epochs=150, batch_size=1024, eval_every_epochs=5, log_every_steps=100),
  )
