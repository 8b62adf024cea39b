"""ImageNet, a ResNet-18-like network at 64x64 pixels, float baseline.

The zoo's ResNet is the CIFAR family (3x3 stride-1 stem, no max-pool, 3 basic blocks per
stage); with ResNet-18's widths (64, 128, 256, 512) and 64x64 inputs its four stages run at
64, 32, 16, 8 pixels, close to ResNet-18's 56, 28, 14, 7 (26 layers instead of 18, ~2x the
MACs of ResNet-18 at 224). A true ResNet-18 (7x7 stride-2 stem, max-pool, 2 blocks per stage)
needs a zoo model. 64x64 ImageNet follows Chrabaszcz et al. 2017 (downsampled ImageNet).

Hyperparameters: the ResNet ImageNet recipe (He et al. 2016; linear scaling and warmup of
Goyal et al. 2017): SGD momentum 0.9 (Nesterov), lr 0.1 per 256 images, so 0.4 at batch 1024,
5 warmup epochs, cosine to 0 over 90 epochs, weight decay 1e-4 on kernels.

Needs ImageNet prepared as array_record (``compressjax.data.prepare_command("imagenet2012",
...)``; offline it fails at once with that command). Runs data-parallel on every device
(batch 1024 splits over 8, 16, ... devices); ``--set train.mesh.fsdp=N`` shards the larger
kernels too, ``--set train.distributed=true`` on several hosts.
  compressjax train --config experiments/configs/imagenet_resnet18like.py
"""

from compressjax.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="imagenet_resnet18like",
      data=DataConfig(name="imagenet2012", image_size=64, augment="flip"),
      model=ModelConfig(name="resnet20", kwargs={"stage_widths": (64, 128, 256, 512),
                                                 "stem_width": 64}),
      optim=OptimConfig(name="sgd", lr=0.4, momentum=0.9, nesterov=True, weight_decay=1e-4,
                        warmup_epochs=5.0),
      train=TrainConfig(epochs=90, batch_size=1024, eval_every_epochs=5, log_every_steps=100),
  )
