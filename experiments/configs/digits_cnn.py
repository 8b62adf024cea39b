"""The demo's float digits CNN as a config file (same as the preset name "digits_cnn").

Run: ``compressjax train --config experiments/configs/digits_cnn.py [--set train.epochs=5]``.
"""

from compressjax.config import Config, digits_cnn


def get_config() -> Config:
  return digits_cnn()
