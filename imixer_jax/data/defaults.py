"""TensorFlow-free definitions shared by the config and every input source.

The ``augment`` mapping's keys and defaults (the official training recipe, see
``docs/recipe.md``), its validation, and ``DatasetInfo``, the facts about a dataset the trainer
needs. Importing this module imports neither TensorFlow nor TFDS, so a config file stays cheap to
import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from imixer_jax.data.augment.policy import RandAugmentPolicy

AUGMENT_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        # RandomResizedCrop to image_size; False = resize the shorter side and centre crop.
        "random_resized_crop": True,
        "scale": (0.08, 1.0),  # crop area fraction range
        "ratio": (3.0 / 4.0, 4.0 / 3.0),  # crop aspect ratio range (sampled log-uniformly)
        # Resampling of the crop: 'bicubic' (the paper's), 'bilinear' or 'random' (timm train
        # default: bilinear or bicubic with probability 1/2 per image).
        "interpolation": "bicubic",
        "hflip": True,  # horizontal flip with probability 0.5
        "randaugment": "rand-m9-mstd0.5-inc1",  # timm config string, or None
        "random_erasing": 0.25,  # probability of erasing one box with N(0, 1) pixel noise
        # True: the host stops after the crop and resize and ships uint8 images; flip,
        # RandAugment, normalisation and erasing run in the train step on the accelerator
        # (imixer_jax.data.augment.device; equal in distribution, not draw by draw).
        "on_device": False,
        # Used on device by mix_batch (not by train_batches):
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        "switch_prob": 0.5,
        "label_smoothing": 0.1,
    }
)
MIX_KEYS = ("mixup_alpha", "cutmix_alpha", "switch_prob", "label_smoothing")
INTERPOLATIONS = ("bicubic", "bilinear", "random")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset.

    ``image_shape`` is the stored shape ``(H, W, C)``; H and W are None for variable-size images.
    """

    name: str
    num_classes: int
    num_train: int
    num_eval: int
    train_split: str
    eval_split: str
    image_shape: tuple[int | None, int | None, int]


def augment_config(augment: Mapping[str, Any]) -> dict[str, Any]:
    """``AUGMENT_DEFAULTS`` updated by ``augment``, validated.

    Raises:
      ValueError: one line ``augment.<key>: <what is wrong>``.
    """
    augment = dict(augment.items())
    unknown = sorted(set(augment) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown augment keys {unknown}; known: {sorted(AUGMENT_DEFAULTS)}")
    config = {**AUGMENT_DEFAULTS, **augment}
    if config["interpolation"] not in INTERPOLATIONS:
        raise ValueError(
            f"augment.interpolation: {config['interpolation']!r} is not supported; use one of "
            f"{', '.join(INTERPOLATIONS)}"
        )
    if not 0.0 <= config["random_erasing"] <= 1.0:
        raise ValueError(
            f"augment.random_erasing: {config['random_erasing']} is not a probability; use a "
            "value in [0, 1]"
        )
    for key, high in (("scale", 1.0), ("ratio", float("inf"))):
        value = config[key]
        pair = isinstance(value, tuple | list) and len(value) == 2
        if not (pair and all(isinstance(v, int | float) for v in value)):
            raise ValueError(f"augment.{key}: got {value!r}; give a pair (low, high)")
        if not 0 < value[0] <= value[1] <= high:
            bound = "" if high == float("inf") else f" <= {high:g}"
            raise ValueError(
                f"augment.{key}: got {value!r}; give (low, high) with 0 < low <= high{bound}"
            )
    if config["randaugment"]:
        try:
            RandAugmentPolicy.from_string(config["randaugment"])
        except ValueError as e:
            raise ValueError(
                f"augment.randaugment: {e}; timm's sections m, n, mstd, mmax and inc are "
                "supported, e.g. 'rand-m9-mstd0.5-inc1'"
            ) from e
    return config


def local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    """This process's share of a global batch (ValueError unless it divides evenly)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of "
            f"process_count {process_count}"
        )
    return global_batch_size // process_count
