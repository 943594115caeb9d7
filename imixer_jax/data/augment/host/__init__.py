"""Per-example image augmentation in TensorFlow, reproducible from an explicit seed.

Everything here is a pure function of its inputs and a stateless seed (an int ``[2]`` tensor, as
``tf.random.stateless_*`` takes): there is no random state anywhere, so a batch is bit-exactly the
same whenever it is rebuilt from the same (seed, epoch, example index), on any number of threads.
Keras preprocessing layers are not used for the random ops because they draw from internal seed
generators (state advanced per call), which breaks that property.

Modules: ``crop`` (RandomResizedCrop box, resizing), ``randaugment`` (the RandAugment policy),
``image_ops`` (its ops with Pillow's semantics), ``erasing`` (random erasing), ``seeds``
(stateless seed splitting). Their public names are re-exported here.

It follows timm 0.6.11 (the official iMixer code base) as closely as TF allows:

* ``sample_crop_box``: ``RandomResizedCropAndInterpolation.get_params`` (10 attempts, area
  uniform in ``scale``, log-uniform aspect ratio, fallback to a central crop). Written by hand
  because ``tf.image.stateless_sample_distorted_bounding_box`` samples the aspect ratio uniformly
  (not log-uniformly) and falls back to the whole image, not to timm's ratio-clamped centre crop.
* ``resize``: bicubic (Keys, a = -0.5, half-pixel centres, antialiased when shrinking) like PIL,
  then clipped and rounded to uint8. PIL resizes in two passes with a uint8 rounding in between;
  TF does not, so results agree within one grey level almost everywhere but may differ by more
  where the cubic overshoots at sharp edges. Upsampling tiny images (digits 8x8 -> 16/32 px)
  gives smooth strokes; the overshoot is clipped to the pixel range.
* ``RandAugment``: timm's ``rand_augment_transform`` (config strings such as
  ``'rand-m9-mstd0.5-inc1'``), the 15 ops of ``_RAND_TRANSFORMS`` /
  ``_RAND_INCREASING_TRANSFORMS`` with timm's level-to-argument maps, each chosen op applied with
  probability 0.5, magnitude noise per op, fill colour 128 (= round(255 * mean 0.5)). No library
  provides this op set with timm's 'increasing' variants, so the ops are written here on uint8
  images with PIL's semantics (Image.blend, ImageOps.*, ImageEnhance.*, Image.transform); the
  tests check every pixel op equals Pillow exactly. Deviations: rotate/shear/translate sample
  bilinearly (``ImageProjectiveTransformV3`` has no bicubic mode; timm's official run draws
  bilinear or bicubic at random), matching Pillow's bilinear transform within one grey level;
  posterize to 0 bits (PosterizeIncreasing at magnitude 10) gives black, as the Pillow of timm
  0.6.11's time did (Pillow >= 10 raises instead).
* ``random_erasing``: timm's ``RandomErasing`` (mode 'pixel', count 1): with probability p, one
  box of area 2%-33% and log-uniform aspect ratio 0.3-3.3 (10 attempts) is replaced by N(0, 1)
  noise, on the already normalised image.
"""

from imixer_jax.data.augment.host.crop import (
    random_interpolation_resize,
    resize,
    sample_bilinear,
    sample_crop_box,
)
from imixer_jax.data.augment.host.erasing import random_erasing
from imixer_jax.data.augment.host.image_ops import (
    FILL,
    affine,
    auto_contrast,
    brightness,
    color,
    contrast,
    equalize,
    invert,
    posterize,
    rotate,
    sharpness,
    shear_x,
    shear_y,
    solarize,
    solarize_add,
    translate_x_rel,
    translate_y_rel,
)
from imixer_jax.data.augment.host.randaugment import RandAugment, apply_op
from imixer_jax.data.augment.host.seeds import split_seed
from imixer_jax.data.augment.policy import (
    LEVEL_DENOM,
    RAND_INCREASING_TRANSFORMS,
    RAND_TRANSFORMS,
    TRANSLATE_PCT,
)

__all__ = [
    "FILL",
    "LEVEL_DENOM",
    "RAND_INCREASING_TRANSFORMS",
    "RAND_TRANSFORMS",
    "TRANSLATE_PCT",
    "RandAugment",
    "affine",
    "apply_op",
    "auto_contrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "invert",
    "posterize",
    "random_erasing",
    "random_interpolation_resize",
    "resize",
    "rotate",
    "sample_bilinear",
    "sample_crop_box",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "solarize_add",
    "split_seed",
    "translate_x_rel",
    "translate_y_rel",
]
