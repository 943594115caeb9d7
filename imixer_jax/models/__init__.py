"""Mixer / iMixer models: token mixers, the backbone, the typed model configs and the variant
registry."""

from imixer_jax.models.backbone import Backbone
from imixer_jax.models.configs import MixerConfig, ModelConfig, ParaMixerConfig
from imixer_jax.models.mixer import Mixer, MixerBlock
from imixer_jax.models.paramixer import ParaMixer
from imixer_jax.models.registry import (
    VARIANT_NAMES,
    build,
    create_model,
    model_config,
    param_count,
)

__all__ = [
    "VARIANT_NAMES",
    "Backbone",
    "Mixer",
    "MixerBlock",
    "MixerConfig",
    "ModelConfig",
    "ParaMixer",
    "ParaMixerConfig",
    "build",
    "create_model",
    "model_config",
    "param_count",
]
