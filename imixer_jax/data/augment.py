"""Per-example image augmentation in TensorFlow, reproducible from an explicit seed.

Everything here is a pure function of its inputs and a stateless seed (an int ``[2]`` tensor, as
``tf.random.stateless_*`` takes): there is no random state anywhere, so a batch is bit-exactly the
same whenever it is rebuilt from the same (seed, epoch, example index), on any number of threads.
Keras preprocessing layers are not used for the random ops because they draw from internal seed
generators (state advanced per call), which breaks that property.

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

from __future__ import annotations

import dataclasses
import functools
import math
import re

import tensorflow as tf

LEVEL_DENOM = 10.0  # timm _LEVEL_DENOM: magnitudes are on a 0..10 scale
FILL = 128  # timm img_mean for mean = 0.5: round(255 * 0.5)
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


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
    """``num`` independent stateless seeds ``[num, 2]`` derived from ``seed`` ``[2]``."""
    return tf.random.experimental.stateless_split(seed, num)


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
    """Round and clip a float image to uint8 (PIL's conversion of resampled pixels)."""
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def _truncate_uint8(x: tf.Tensor) -> tf.Tensor:
    """Clip and truncate a float image to uint8 (PIL's Image.blend)."""
    return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


# --------------------------------------------------------------------------------------------
# Random resized crop and resizing


def sample_crop_box(
    seed: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """timm's RandomResizedCrop box for an image of ``height x width``.

    Returns int32 scalars ``(top, left, crop_height, crop_width)``. All 10 attempts are drawn at
    once; the first valid one is used (same distribution as timm's loop).
    """
    seeds = split_seed(seed, 3)
    h_img = tf.cast(height, tf.float64)
    w_img = tf.cast(width, tf.float64)
    target_area = (
        h_img
        * w_img
        * tf.random.stateless_uniform([10], seeds[0], scale[0], scale[1], dtype=tf.float64)
    )
    log_ratio = tf.random.stateless_uniform(
        [10], seeds[1], math.log(ratio[0]), math.log(ratio[1]), dtype=tf.float64
    )
    aspect = tf.exp(log_ratio)
    w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    valid = (w <= width) & (h <= height) & (w >= 1) & (h >= 1)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    found = tf.reduce_any(valid)

    # timm's fallback: central crop with the aspect ratio clamped into `ratio`.
    in_ratio = w_img / h_img
    fallback_w = tf.where(
        in_ratio > ratio[1], tf.cast(tf.round(h_img * ratio[1]), tf.int32), tf.cast(width, tf.int32)
    )
    fallback_h = tf.where(
        in_ratio < ratio[0],
        tf.cast(tf.round(w_img / ratio[0]), tf.int32),
        tf.cast(height, tf.int32),
    )
    crop_h = tf.where(found, h[first], fallback_h)
    crop_w = tf.where(found, w[first], fallback_w)
    u = tf.random.stateless_uniform([2], seeds[2], dtype=tf.float64)
    random_top = tf.cast(tf.floor(u[0] * tf.cast(height - crop_h + 1, tf.float64)), tf.int32)
    random_left = tf.cast(tf.floor(u[1] * tf.cast(width - crop_w + 1, tf.float64)), tf.int32)
    top = tf.where(found, random_top, (height - crop_h) // 2)
    left = tf.where(found, random_left, (width - crop_w) // 2)
    return top, left, crop_h, crop_w


def resize(image: tf.Tensor, size: tuple[int, int] | tf.Tensor, method: str) -> tf.Tensor:
    """Resize a uint8 ``[h, w, c]`` image to ``size`` (``[H, W, c]`` uint8) like PIL.

    ``method`` is 'bicubic' or 'bilinear'; antialiased (the kernel widens when shrinking, as PIL
    does), result rounded and clipped to 0..255.
    """
    return _to_uint8(tf.image.resize(image, size, method=method, antialias=True))


def random_interpolation_resize(
    image: tf.Tensor, size: tuple[int, int], interpolation: str, seed: tf.Tensor
) -> tf.Tensor:
    """``resize`` with ``interpolation`` in {'bicubic', 'bilinear', 'random'}; 'random' picks
    bilinear or bicubic with probability 1/2 each (timm's train default)."""
    if interpolation != "random":
        return resize(image, size, interpolation)
    use_bicubic = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(
        use_bicubic,
        lambda: resize(image, size, "bicubic"),
        lambda: resize(image, size, "bilinear"),
    )


# --------------------------------------------------------------------------------------------
# RandAugment ops on uint8 [H, W, 3] images, PIL semantics


def _grey(image: tf.Tensor) -> tf.Tensor:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma, fixed point): int32 ``[H, W, 1]``."""
    x = tf.cast(image, tf.int32)
    luma = x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000
    return tf.bitwise.right_shift(luma, 16)[..., None]


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``Image.blend(degenerate, image, factor)`` (the ImageEnhance operation)."""
    d = tf.cast(degenerate, tf.float32)
    return _truncate_uint8(d + factor * (tf.cast(image, tf.float32) - d))


def _channel_histograms(image: tf.Tensor) -> tf.Tensor:
    """Per-channel 256-bin histograms, int32 ``[3, 256]``."""
    x = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))
    offsets = tf.constant([[0], [256], [512]], tf.int32)
    counts = tf.math.bincount(tf.reshape(x + offsets, [-1]), minlength=768, maxlength=768)
    return tf.reshape(counts, [3, 256])


def _apply_luts(image: tf.Tensor, luts: tf.Tensor) -> tf.Tensor:
    """Map every channel c of a uint8 image through ``luts[c]`` (``[3, 256]``, 0..255)."""
    shape = tf.shape(image)
    x = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))
    mapped = tf.gather(luts, x, batch_dims=1)
    return tf.reshape(tf.cast(tf.transpose(mapped), tf.uint8), shape)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.autocontrast`` (cutoff 0): stretch each channel's [min, max] to [0, 255]."""
    x = tf.cast(image, tf.float64)
    lo = tf.reduce_min(x, axis=[0, 1])
    hi = tf.reduce_max(x, axis=[0, 1])
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = tf.clip_by_value(tf.floor(x * scale - lo * scale), 0.0, 255.0)
    return tf.cast(tf.where(hi > lo, stretched, x), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.equalize``: per-channel histogram equalisation with PIL's integer LUT."""
    hist = _channel_histograms(image)
    total = tf.reduce_sum(hist, axis=1)
    top_value = tf.cast(tf.reduce_max(tf.reshape(image, [-1, 3]), axis=0), tf.int32)
    last = tf.gather(hist, top_value, batch_dims=1)  # count of the largest value present
    step = (total - last) // 255
    identity_lut = tf.range(256, dtype=tf.int32)[None, :]
    safe_step = tf.maximum(step, 1)[:, None]
    lut = (safe_step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step
    keep = (tf.math.count_nonzero(hist, axis=1) <= 1) | (step == 0)
    lut = tf.where(keep[:, None], identity_lut, tf.minimum(lut, 255))
    return _apply_luts(image, lut)


def invert(image: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.invert``."""
    return 255 - image


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.posterize``: keep the ``bits`` (0..8) most significant bits."""
    shift = 8 - tf.cast(bits, tf.int32)
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(x, shift), shift), tf.uint8)


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.solarize``: invert every value >= threshold."""
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.where(x < threshold, x, 255 - x), tf.uint8)


def solarize_add(image: tf.Tensor, add: tf.Tensor, threshold: int = 128) -> tf.Tensor:
    """timm ``solarize_add``: add ``add`` (saturating) to every value below ``threshold``."""
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.where(x < threshold, tf.minimum(x + add, 255), x), tf.uint8)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Color`` (saturation): blend with the grey version."""
    return _blend(tf.cast(tf.tile(_grey(image), [1, 1, 3]), tf.uint8), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Contrast``: blend with a flat image at the rounded mean grey level."""
    mean = tf.floor(tf.reduce_mean(tf.cast(_grey(image), tf.float64)) + 0.5)
    return _blend(tf.fill(tf.shape(image), tf.cast(mean, tf.uint8)), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Brightness``: blend with black."""
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with PIL's SMOOTH filter (3x3 kernel
    [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, border pixels left unfiltered)."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    x = tf.cast(image, tf.float32)
    smooth = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = _to_uint8(smooth)
    interior = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    shape = tf.shape(image)
    rows = tf.range(shape[0])[:, None, None]
    cols = tf.range(shape[1])[None, :, None]
    is_interior = (rows > 0) & (rows < shape[0] - 1) & (cols > 0) & (cols < shape[1] - 1)
    return _blend(tf.where(is_interior, interior, image), image, factor)


def affine(image: tf.Tensor, matrix: list[tf.Tensor], fill: int = FILL) -> tf.Tensor:
    """PIL ``Image.transform(size, AFFINE, matrix, BILINEAR, fillcolor=fill)``.

    ``matrix = (a, b, c, d, e, f)`` maps an output point (x, y) to the input point
    (a x + b y + c, d x + e y + f) in PIL's continuous coordinates (pixel i spans [i, i + 1] and
    is sampled at its centre i + 0.5). As in PIL, an output pixel whose input point falls outside
    the image gets ``fill``; inside, bilinear interpolation clamps at the edges. TF's op works on
    pixel indices (pixel i at i), hence the half-pixel conjugation. The raw op is used because no
    tf.image function exposes a general affine warp (Keras' wrapper follows the Keras backend,
    which may be JAX in this project).
    """
    a, b, c, d, e, f = (tf.cast(m, tf.float32) for m in matrix)
    shape = tf.shape(image)
    zero = tf.zeros([], tf.float32)
    transform = tf.stack(
        [a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5, zero, zero]
    )[None]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=transform,
        output_shape=shape[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )[0]
    y = tf.cast(tf.range(shape[0]), tf.float32)[:, None] + 0.5
    x = tf.cast(tf.range(shape[1]), tf.float32)[None, :] + 0.5
    x_in = a * x + b * y + c
    y_in = d * x + e * y + f
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    inside = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
    return _to_uint8(tf.where(inside[..., None], warped, float(fill)))


def rotate(image: tf.Tensor, degrees: tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """PIL ``Image.rotate(degrees)`` about the image centre (counter-clockwise), same size."""
    shape = tf.cast(tf.shape(image), tf.float32)
    cx, cy = shape[1] / 2.0, shape[0] / 2.0
    angle = -degrees * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    matrix = [cos, sin, -cos * cx - sin * cy + cx, -sin, cos, sin * cx - cos * cy + cy]
    return affine(image, matrix, fill)


def shear_x(image: tf.Tensor, factor: tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """timm ``shear_x``: AFFINE (1, factor, 0, 0, 1, 0)."""
    return affine(image, [1.0, factor, 0.0, 0.0, 1.0, 0.0], fill)


def shear_y(image: tf.Tensor, factor: tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """timm ``shear_y``: AFFINE (1, 0, 0, factor, 1, 0)."""
    return affine(image, [1.0, 0.0, 0.0, factor, 1.0, 0.0], fill)


def translate_x_rel(image: tf.Tensor, pct: tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """timm ``translate_x_rel``: shift by ``pct * width`` pixels."""
    pixels = pct * tf.cast(tf.shape(image)[1], tf.float32)
    return affine(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], fill)


def translate_y_rel(image: tf.Tensor, pct: tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """timm ``translate_y_rel``: shift by ``pct * height`` pixels."""
    pixels = pct * tf.cast(tf.shape(image)[0], tf.float32)
    return affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], fill)


def _signed(value: tf.Tensor, negate: tf.Tensor) -> tf.Tensor:
    return tf.where(negate, -value, value)


def _enhance_factor(level: tf.Tensor, negate: tf.Tensor, increasing: bool) -> tf.Tensor:
    if increasing:  # timm _enhance_increasing_level_to_arg: 1 +- 0.9 level, at least 0.1
        return tf.maximum(0.1, 1.0 + _signed(level * 0.9, negate))
    return level * 1.8 + 0.1  # timm _enhance_level_to_arg


def _floor_int(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.floor(x), tf.int32)


def apply_op(name: str, image: tf.Tensor, magnitude: tf.Tensor, negate: tf.Tensor) -> tf.Tensor:
    """One timm RandAugment op ``name`` at ``magnitude`` (0..10 scale, already clipped) with the
    random sign ``negate`` (used by the signed ops only), on a uint8 ``[H, W, 3]`` image."""
    level = magnitude / LEVEL_DENOM
    base = name.removesuffix("Increasing")
    increasing = name.endswith("Increasing")
    if name == "AutoContrast":
        return auto_contrast(image)
    if name == "Equalize":
        return equalize(image)
    if name == "Invert":
        return invert(image)
    if name == "Rotate":
        return rotate(image, _signed(level * 30.0, negate))
    if base == "Posterize":
        bits = _floor_int(level * 4.0)
        return posterize(image, 4 - bits if increasing else bits)
    if base == "Solarize":
        threshold = _floor_int(level * 256.0)
        return solarize(image, 256 - threshold if increasing else threshold)
    if name == "SolarizeAdd":
        return solarize_add(image, _floor_int(level * 110.0))
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
        enhance = {"Color": color, "Contrast": contrast, "Brightness": brightness}.get(
            base, sharpness
        )
        return enhance(image, _enhance_factor(level, negate, increasing))
    if name == "ShearX":
        return shear_x(image, _signed(level * 0.3, negate))
    if name == "ShearY":
        return shear_y(image, _signed(level * 0.3, negate))
    if name == "TranslateXRel":
        return translate_x_rel(image, _signed(level * TRANSLATE_PCT, negate))
    if name == "TranslateYRel":
        return translate_y_rel(image, _signed(level * TRANSLATE_PCT, negate))
    raise ValueError(f"unknown RandAugment op {name!r}")


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """timm's RandAugment: ``num_layers`` ops drawn uniformly with replacement from
    ``transforms``; each is applied with probability ``prob`` at a magnitude drawn from
    N(magnitude, magnitude_std) (uniform(0, magnitude) if the std is infinite) clipped to
    [0, magnitude_max]."""

    transforms: tuple[str, ...] = RAND_TRANSFORMS
    num_layers: int = 2
    magnitude: float = LEVEL_DENOM
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    prob: float = 0.5

    @classmethod
    def from_string(cls, spec: str) -> RandAugment:
        """Parse a timm config string, e.g. ``'rand-m9-mstd0.5-inc1'``.

        Sections: ``m`` magnitude (int), ``n`` number of ops, ``mstd`` magnitude noise std (>100
        means uniform), ``mmax`` magnitude upper bound, ``inc`` 1 = 'increasing' op variants.
        timm's ``w`` (weighted op choice) is not supported. Unlike timm, ``inc0`` means
        non-increasing (timm tests ``bool('0')``, which is True).
        """
        sections = spec.split("-")
        if sections[0] != "rand":
            raise ValueError(f"RandAugment spec must start with 'rand-': {spec!r}")
        kwargs: dict = {}
        for section in sections[1:]:
            parts = re.split(r"(\d.*)", section)
            if len(parts) < 2:
                continue  # as timm: sections without a number are ignored
            key, value = parts[:2]
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

    def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Augment a uint8 ``[H, W, 3]`` image; returns uint8 ``[H, W, 3]``."""
        num_ops = len(self.transforms)
        for layer_seed in tf.unstack(split_seed(seed, self.num_layers)):
            s = split_seed(layer_seed, 4)
            op = tf.random.stateless_uniform([], s[0], 0, num_ops, dtype=tf.int32)
            apply = tf.random.stateless_uniform([], s[1]) <= self.prob
            if math.isinf(self.magnitude_std):
                magnitude = tf.random.stateless_uniform([], s[2], 0.0, self.magnitude)
            elif self.magnitude_std > 0:
                noise = tf.random.stateless_normal([], s[2])
                magnitude = self.magnitude + self.magnitude_std * noise
            else:
                magnitude = tf.constant(self.magnitude, tf.float32)
            magnitude = tf.clip_by_value(magnitude, 0.0, self.magnitude_max)
            negate = tf.random.stateless_uniform([], s[3]) > 0.5
            branches = [
                functools.partial(apply_op, name, image, magnitude, negate)
                for name in self.transforms
            ]
            branches.append(functools.partial(tf.identity, image))  # op not applied
            image = tf.switch_case(tf.where(apply, op, num_ops), branches)
        return image


def random_erasing(
    image: tf.Tensor,
    seed: tf.Tensor,
    prob: float,
    *,
    min_area: float = 0.02,
    max_area: float = 1.0 / 3.0,
    min_aspect: float = 0.3,
) -> tf.Tensor:
    """timm ``RandomErasing(prob, mode='pixel', count=1)`` on a normalised float ``[H, W, C]``
    image: with probability ``prob`` one box is replaced by per-pixel N(0, 1) noise."""
    seeds = split_seed(seed, 5)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    area = tf.cast(height * width, tf.float64)
    target_area = area * tf.random.stateless_uniform(
        [10], seeds[0], min_area, max_area, dtype=tf.float64
    )
    log_aspect = tf.random.stateless_uniform(
        [10], seeds[1], math.log(min_aspect), math.log(1.0 / min_aspect), dtype=tf.float64
    )
    aspect = tf.exp(log_aspect)
    h = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    w = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    valid = (w < width) & (h < height)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    h, w = h[first], w[first]
    u = tf.random.stateless_uniform([3], seeds[2], dtype=tf.float64)
    top = tf.cast(tf.floor(u[0] * tf.cast(height - h + 1, tf.float64)), tf.int32)
    left = tf.cast(tf.floor(u[1] * tf.cast(width - w + 1, tf.float64)), tf.int32)
    erase = (u[2] <= prob) & tf.reduce_any(valid)

    def _erase():
        rows = tf.range(height)[:, None, None]
        cols = tf.range(width)[None, :, None]
        box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        noise = tf.random.stateless_normal(shape, seeds[3], dtype=image.dtype)
        return tf.where(box, noise, image)

    return tf.cond(erase, _erase, lambda: image)
