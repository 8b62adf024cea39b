"""Knowledge distillation: losses over arrays, taps on unmodified models, GAN steps, and CAT.

Losses: ``soft_kl`` / ``hinton_loss`` (logits), ``kernel_alignment`` / ``cka`` / ``ka_loss``
(Gram-matrix similarity, any channel counts), ``feature_mse`` with a 1x1 adaptor,
``attention_transfer``, hinge GAN losses. ``taps`` reads intermediate outputs by module path.
``hinton_objective`` is the loss of ``compressjax.train.distill_step.make_distill_step``, which
trains a (compressed) classifier student; ``make_gan_step`` trains a pix2pix generator,
optionally distilled; ``cat_prune`` builds CAT's pruned generator under a MAC budget.

May import: ``compressjax.core``, ``compressjax.qarray``, ``compressjax.kernels`` and
``compressjax.cost`` (CAT's MACs).
"""

from compressjax.distill.alignment import cka, ka_loss, kernel_alignment
from compressjax.distill.attention import attention_map, attention_transfer
from compressjax.distill.cat import (PruneResult, cat_prune, generator_macs, prunable_scales,
                                     prune_at)
from compressjax.distill.feature import adapt, feature_mse, init_adaptor
from compressjax.distill.hinge import hinge_d_loss, hinge_g_loss
from compressjax.distill.image_metrics import psnr, ssim
from compressjax.distill.kl import cross_entropy, hinton_loss, soft_kl
from compressjax.distill.objective import DistillInputs, hinton_objective
from compressjax.distill.pix2pix import (FeatureDistill, GanState, evaluate_generator, generate,
                                         generator_variables, image_scores, init_gan_state,
                                         make_gan_step, pix2pix_init)
from compressjax.distill.taps import apply_with_taps, available_paths, taps

__all__ = [
    "DistillInputs", "FeatureDistill", "GanState", "PruneResult", "adapt", "apply_with_taps",
    "attention_map", "attention_transfer", "available_paths", "cat_prune", "cka",
    "cross_entropy", "evaluate_generator", "feature_mse", "generate", "generator_macs",
    "generator_variables", "hinge_d_loss", "hinge_g_loss", "hinton_loss", "hinton_objective",
    "image_scores", "init_adaptor", "init_gan_state", "ka_loss", "kernel_alignment",
    "make_gan_step", "pix2pix_init", "prunable_scales", "prune_at", "psnr", "soft_kl", "ssim",
    "taps",
]
