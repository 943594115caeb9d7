"""Mixer / iMixer models: token mixers, the backbone and the variant registry."""

from imixer_jax.models.mixer import Mixer, MixerBlock
from imixer_jax.models.registry import VARIANT_NAMES, create_model, model_kwargs, param_count

__all__ = ["VARIANT_NAMES", "Mixer", "MixerBlock", "create_model", "model_kwargs", "param_count"]
