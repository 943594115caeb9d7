"""timm's RandAugment policy, shared by the TensorFlow (host) and JAX (device) implementations.

The op names of ``_RAND_TRANSFORMS`` / ``_RAND_INCREASING_TRANSFORMS``, the magnitude scale and
the parsing of timm config strings such as ``'rand-m9-mstd0.5-inc1'``. Importing this module
imports neither TensorFlow nor JAX.
"""

from __future__ import annotations

import dataclasses
import math
import re

FILL = 128  # timm img_mean for mean = 0.5: round(255 * 0.5)
LEVEL_DENOM = 10.0  # timm _LEVEL_DENOM: magnitudes are on a 0..10 scale
TRANSLATE_PCT = 0.45  # timm default translate_pct of TranslateXRel / TranslateYRel

RAND_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


@dataclasses.dataclass(frozen=True)
class RandAugmentPolicy:
    """timm's RandAugment: ``num_layers`` ops drawn uniformly with replacement from
    ``transforms``; each is applied with probability ``prob`` at a magnitude drawn from
    N(magnitude, magnitude_std) (uniform(0, magnitude) if the std is infinite) clipped to
    [0, magnitude_max]; the signed ops negate their argument with probability 1/2."""

    transforms: tuple[str, ...] = RAND_TRANSFORMS
    num_layers: int = 2
    magnitude: float = LEVEL_DENOM
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    prob: float = 0.5

    @classmethod
    def from_string(cls, spec: str):
        """Parse a timm config string, e.g. ``'rand-m9-mstd0.5-inc1'``.

        Sections: ``m`` magnitude (int), ``n`` number of ops, ``mstd`` magnitude noise std (>100
        means uniform), ``mmax`` magnitude upper bound, ``inc`` 1 = 'increasing' op variants.
        timm's ``w`` (weighted op choice) is not supported. Unlike timm, ``inc0`` means
        non-increasing (timm tests ``bool('0')``, which is True), and a section without a number
        (``'rand-zz'``) is an error where timm ignores it: a misspelt spec must not train with
        the default policy.
        """
        sections = spec.split("-")
        if sections[0] != "rand":
            raise ValueError(f"RandAugment spec must start with 'rand-': {spec!r}")
        kwargs: dict = {}
        for section in sections[1:]:
            match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", section)
            if match is None:
                raise ValueError(f"RandAugment section {section!r} of {spec!r} has no number")
            key, value = match.groups()
            if key == "m":
                kwargs["magnitude"] = float(int(value))
            elif key == "n":
                kwargs["num_layers"] = int(value)
            elif key == "mstd":
                std = float(value)
                kwargs["magnitude_std"] = math.inf if std > 100 else std
            elif key == "mmax":
                kwargs["magnitude_max"] = float(int(value))
            elif key == "inc":
                kwargs["transforms"] = RAND_INCREASING_TRANSFORMS if int(value) else RAND_TRANSFORMS
            else:
                raise ValueError(f"unsupported RandAugment section {section!r} in {spec!r}")
        return cls(**kwargs)
