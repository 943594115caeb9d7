"""Mixer / iMixer / Energy Transformer models: token mixers, the backbone, the typed model configs
and the variant registry."""

from imixer_jax.models.backbone import Backbone
from imixer_jax.models.configs import (
    EnergyTransformerConfig,
    MixerConfig,
    ModelConfig,
    ParaMixerConfig,
)
from imixer_jax.models.energy_transformer import EnergyTransformer
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
    "EnergyTransformer",
    "EnergyTransformerConfig",
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
