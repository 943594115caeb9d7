"""Training configuration: the base ``ConfigDict`` (the official recipe,
docs/recipe.md#official-recipe) and its checks.

Config files (``configs/*.py``) call ``base_config(model, **model_overrides)`` and change what they
need; the result is locked, so a misspelt key fails at once. ``validate(config)`` runs before
anything is compiled and raises ``ConfigError`` with one line naming the offending key.

Schema (defaults in ``base_config``):

    seed                   int: root of every random stream (init, data order, mixing, drop path)
    arch                   'mixer' (``Mixer``: MLP-Mixer, iMixer) or 'paramixer' (``ParaMixer``: the
                           parallelized Mixer family); ``registry.model_arch(name)``
    model                  the fields of that architecture's typed model config
                           (``models.configs.MixerConfig`` / ``ParaMixerConfig``;
                           ``model_section``);
                           ``model.dtype``: None (float32) or a compute dtype name ('bfloat16').
                           ``typed_model_config(config)`` converts it (validated once)
    data.name              TFDS dataset name, or 'synthetic' / 'synthetic/K' (numpy batches, no
                           TensorFlow); data.data_dir: TFDS data_dir (None = TFDS default)
    data.train_split; data.eval_split (None: 'validation' if the dataset has it, else 'test')
    data.crop_ratio        eval: resize to img_size / crop_ratio, centre crop
    data.augment           data.AUGMENT_DEFAULTS (crop, flip, RandAugment ('' = off), random
                           erasing, and the mix_batch keys mixup_alpha, cutmix_alpha,
                           switch_prob, label_smoothing)
    batch_size             global batch per step (all processes); eval_batch_size likewise
    init_from              path (None: from scratch), format ('auto': told by content), head:
                           initial weights from a vit_jax .npz, an official iMixer / paramixer
                           .pth or an .npz of ours (``weights.formats``; fresh runs only)
    optimizer              name ('adamw' | 'sgd' with momentum), lr (peak), b1, b2, eps,
                           weight_decay (not on 1-D params),
                           grad_clip_norm (0 = off), ema_decay (0 = off), accum_steps (>= 1)
    schedule               unit ('epochs' | 'steps'); length (warm-up + cosine, timm --epochs),
                           warmup, cooldown (extra, at min_lr) in that unit; init_lr, min_lr
    mesh.shape, mesh.axes  device mesh, e.g. (-1, 1) over ('data', 'model'); one -1 at most
    mesh.fsdp              also split parameters, optimiser and EMA state over 'data' (ZeRO-3 /
                           FSDP; arrays of at least sharding.FSDP_MIN_BYTES); False by default
    checkpoint             every_steps (0 = only at the end), keep (newest kept)
    log_every_steps, eval_every_steps (0 = only at the end)
    profile_steps          trace this many steps (after the first, compiling one) into
                           DIR/profile for TensorBoard's profiler; 0 = off
    distributed            initialize ('auto' | 'always' | 'never'), coordinator_address,
                           num_processes, process_id (None = detected by jax.distributed)

A step is one global batch; with ``accum_steps = k`` the optimiser updates every k steps, so the
schedule (defined in optimiser updates) spans ``steps / k`` updates.
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict

from imixer_jax.data import defaults as data
from imixer_jax.models import configs, registry
from imixer_jax.weights import formats as weights_formats

INITIALIZE = ("auto", "always", "never")
UNITS = ("epochs", "steps")


FLOAT32_MAX = 3.4028234663852886e38  # the trainer's parameters and learning rates are float32


class ConfigError(ValueError):
    """An invalid configuration; the message is one line that names the key."""


def base_config(model: str = "imixer_s16", **model_overrides) -> ml_collections.ConfigDict:
    """The official CIFAR-10 recipe (docs/recipe.md#official-recipe) for registered variant
    ``model``, locked.

    ``model_overrides`` are fields of the variant's typed config (``registry.model_config``; e.g.
    ``num_classes=10, img_size=32``).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    typed = _registered(model, **{"num_classes": 10, **model_overrides})
    c.arch = typed.arch  # the architecture whose config fields ``c.model`` holds
    c.model = _section(typed)

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"
    c.data.data_dir = config_dict.placeholder(str)
    c.data.train_split = "train"
    c.data.eval_split = config_dict.placeholder(str)
    c.data.crop_ratio = 0.875
    c.data.augment = ml_collections.ConfigDict(dict(data.AUGMENT_DEFAULTS))

    c.batch_size = 2048
    c.eval_batch_size = 1024

    c.optimizer = ml_collections.ConfigDict(
        dict(
            lr=5e-4,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.05,
            grad_clip_norm=0.0,
            ema_decay=0.0,
            accum_steps=1,
            name="adamw",
            momentum=0.9,  # 'sgd' only
        )
    )
    c.schedule = ml_collections.ConfigDict(
        dict(unit="epochs", length=300.0, warmup=20.0, cooldown=10.0, init_lr=1e-6, min_lr=1e-6)
    )
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1), axes=("data", "model"), fsdp=False))
    c.init_from = ml_collections.ConfigDict(
        dict(path=config_dict.placeholder(str), format="auto", head="zero")
    )
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3))
    c.log_every_steps = 100
    c.eval_every_steps = 0
    c.profile_steps = 0
    c.distributed = ml_collections.ConfigDict(
        dict(
            initialize="auto",
            coordinator_address=config_dict.placeholder(str),
            num_processes=config_dict.placeholder(int),
            process_id=config_dict.placeholder(int),
        )
    )
    c.lock()
    return c


def model_section(name: str, **overrides) -> ml_collections.ConfigDict:
    """The fields of ``registry.model_config(name, **overrides)`` as a ConfigDict whose ``dtype`` is
    a str field (None = float32), so that ``--config.model.dtype=bfloat16`` works on the command
    line.

    Raises:
      ConfigError: one line naming the first invalid ``config.model`` field.
    """
    return _section(_registered(name, **overrides))


def _registered(name: str, **overrides) -> configs.ModelConfig:
    try:
        return registry.model_config(name, **overrides)
    except configs.ModelConfigError as e:
        raise _model_error(e) from e


def _section(model: configs.ModelConfig) -> ml_collections.ConfigDict:
    fields = model.to_dict()
    dtype = fields.pop("dtype")
    c = ml_collections.ConfigDict(fields)
    c.dtype = config_dict.placeholder(str)
    c.dtype = dtype
    return c


def typed_model_config(config: ml_collections.ConfigDict) -> configs.ModelConfig:
    """``config.model`` as the typed config of architecture ``config.arch``.

    Raises:
      ConfigError: one line naming ``config.arch`` or the first invalid ``config.model`` field.
    """
    try:
        return configs.from_dict(config.arch, config.model.to_dict())
    except configs.ModelConfigError as e:
        raise _model_error(e) from e


def _model_error(e: configs.ModelConfigError) -> ConfigError:
    key = "arch" if e.field == "arch" else f"model.{e.field}"
    return ConfigError(f"config.{key}: {e}")


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"config.{key}: {message}")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        _fail(key, message)


def init_from(config: ml_collections.ConfigDict) -> weights_formats.InitFrom | None:
    """``config.init_from`` as the weights module's ``InitFrom``; None without a path.

    Raises:
      ConfigError: one line ``config.init_from.<field>: <what is wrong>``.
    """
    init = config.get("init_from")
    if init is None or init.path is None:
        return None
    try:
        return weights_formats.InitFrom(init.path, init.format, init.head)
    except weights_formats.PretrainedError as e:
        raise ConfigError(f"config.init_from.{e}") from e


def validate(config: ml_collections.ConfigDict) -> configs.ModelConfig:
    """Check ``config`` before anything is compiled or built; return its typed model config
    (``typed_model_config``), converted here once for the caller to keep.

    Raises:
      ConfigError: one line ``config.<key>: <what is wrong>``.
    """
    model = typed_model_config(config)  # the model's fields, checked without building anything

    _check(bool(config.data.name), "data.name", "must name a TFDS dataset")
    _check(0 < config.data.crop_ratio <= 1, "data.crop_ratio", "must be in (0, 1]")
    data_dir = config.data.data_dir
    _check(
        data_dir is None or os.path.isdir(data_dir),
        "data.data_dir",
        f"{data_dir} is not a directory; give the TFDS data_dir that holds the prepared dataset "
        "(create it first to prepare a dataset there)",
    )
    aug = config.data.augment
    for key in sorted(set(aug.keys()) ^ set(data.AUGMENT_DEFAULTS)):
        _fail(f"data.augment.{key}", "keys must be those of data.AUGMENT_DEFAULTS")
    try:
        data.augment_config(aug.to_dict())
    except ValueError as e:
        raise ConfigError(f"config.data.{e}") from e
    for key in ("mixup_alpha", "cutmix_alpha"):
        _check(aug[key] >= 0, f"data.augment.{key}", f"must be >= 0, got {aug[key]}")
    for key in ("switch_prob", "random_erasing"):
        _check(0 <= aug[key] <= 1, f"data.augment.{key}", f"must be in [0, 1], got {aug[key]}")
    _check(0 <= aug.label_smoothing < 1, "data.augment.label_smoothing", "must be in [0, 1)")

    for key in ("batch_size", "eval_batch_size"):
        _check(config[key] >= 1, key, f"must be >= 1, got {config[key]}")

    opt = config.optimizer
    for key in ("lr", "eps", "weight_decay", "grad_clip_norm"):
        _check(
            abs(opt[key]) < FLOAT32_MAX,
            f"optimizer.{key}",
            f"{opt[key]} overflows float32 (the largest float32 is {FLOAT32_MAX:.4g})",
        )
    _check(opt.lr > 0, "optimizer.lr", f"must be > 0, got {opt.lr}")
    for key in ("b1", "b2"):
        _check(0 <= opt[key] < 1, f"optimizer.{key}", f"must be in [0, 1), got {opt[key]}")
    _check(opt.eps > 0, "optimizer.eps", f"must be > 0, got {opt.eps}")
    for key in ("weight_decay", "grad_clip_norm"):
        _check(opt[key] >= 0, f"optimizer.{key}", f"must be >= 0, got {opt[key]}")
    _check(0 <= opt.ema_decay < 1, "optimizer.ema_decay", "must be in [0, 1) (0 = no EMA)")
    _check(opt.accum_steps >= 1, "optimizer.accum_steps", f"must be >= 1, got {opt.accum_steps}")
    names = ("adamw", "sgd")
    _check(opt.name in names, "optimizer.name", f"must be one of {names}, got {opt.name!r}")
    _check(0 <= opt.momentum < 1, "optimizer.momentum", f"must be in [0, 1), got {opt.momentum}")
    init_from(config)

    sch = config.schedule
    _check(sch.unit in UNITS, "schedule.unit", f"must be one of {UNITS}, got {sch.unit!r}")
    _check(sch.length > 0, "schedule.length", f"must be > 0, got {sch.length}")
    _check(0 <= sch.warmup <= sch.length, "schedule.warmup", "must be in [0, schedule.length]")
    _check(sch.cooldown >= 0, "schedule.cooldown", f"must be >= 0, got {sch.cooldown}")
    for key in ("init_lr", "min_lr"):
        _check(0 <= sch[key] <= opt.lr, f"schedule.{key}", "must be in [0, optimizer.lr]")

    shape, axes = tuple(config.mesh.shape), tuple(config.mesh.axes)
    _check(
        all(isinstance(n, int) and (n >= 1 or n == -1) for n in shape) and shape.count(-1) <= 1,
        "mesh.shape",
        f"entries must be positive integers with at most one -1, got {shape}",
    )
    _check(
        all(isinstance(a, str) and a.isidentifier() for a in axes),
        "mesh.axes",
        f"must be a tuple of axis names, got {axes}; on the command line quote each name: "
        "--config.mesh.axes=\"('data','model')\"",
    )
    _check(len(shape) == len(axes), "mesh.shape", f"{shape} does not match mesh.axes {axes}")
    _check("data" in axes, "mesh.axes", f"must contain 'data' (the batch axis), got {axes}")
    _check(len(set(axes)) == len(axes), "mesh.axes", f"names must be distinct, got {axes}")
    fsdp = config.mesh.fsdp
    _check(isinstance(fsdp, bool), "mesh.fsdp", f"must be True or False, got {fsdp!r}")

    _check(config.checkpoint.every_steps >= 0, "checkpoint.every_steps", "must be >= 0")
    _check(config.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    _check(config.log_every_steps >= 1, "log_every_steps", "must be >= 1")
    _check(config.eval_every_steps >= 0, "eval_every_steps", "must be >= 0 (0 = at the end)")
    _check(config.profile_steps >= 0, "profile_steps", "must be >= 0 (0 = no profile)")

    dist = config.distributed
    _check(
        dist.initialize in INITIALIZE,
        "distributed.initialize",
        f"must be one of {INITIALIZE}, got {dist.initialize!r}",
    )
    if dist.num_processes is not None:
        _check(dist.num_processes >= 1, "distributed.num_processes", "must be >= 1")
    if dist.process_id is not None and dist.num_processes is not None:
        _check(
            0 <= dist.process_id < dist.num_processes,
            "distributed.process_id",
            f"must be in [0, {dist.num_processes}), got {dist.process_id}",
        )
    return model
