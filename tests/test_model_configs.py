"""The typed, frozen model configs: every rule fails once with one line naming the field, configs
are immutable and hashable, and ConfigDict / dict / JSON round trips give the same config."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imixer_jax.models import configs, registry
from imixer_jax.models.configs import MixerConfig, ModelConfigError, ParaMixerConfig
from imixer_jax.training import config as config_lib
from tests import tiny

# 16 tokens (32 px, patch 8), D 16, T 8, C 32, 2 blocks.
TINY = dict(tiny.MODEL)

SHARED_RULES = [
    (dict(num_classes=0), "num_classes", "num_classes must be a positive integer"),
    (dict(img_size=30), "img_size", r"img_size \(30\) must be divisible by patch_size \(8\)"),
    (dict(patch_size=0), "patch_size", "patch_size must be a positive integer"),
    (dict(num_blocks=2.0), "num_blocks", "num_blocks must be a positive integer"),
    (dict(hidden_dim=True), "hidden_dim", "hidden_dim must be a positive integer"),
    (dict(tokens_mlp_dim=-8), "tokens_mlp_dim", "tokens_mlp_dim must be a positive integer"),
    (dict(channels_mlp_dim=None), "channels_mlp_dim", "channels_mlp_dim must be a positive"),
    (dict(activation="tanh"), "activation", "activation must be one of gelu, relu"),
    (dict(update_rule="momentum"), "update_rule", "update_rule must be one of residual, euler"),
    (dict(step_size=0.0), "step_size", "step_size must be > 0"),
    (dict(step_size="1"), "step_size", "step_size must be a number"),
    (dict(drop_path_rate=1.0), "drop_path_rate", r"drop_path_rate must be in \[0, 1\)"),
    (dict(dtype="int32"), "dtype", "dtype must be a floating dtype"),
    (dict(dtype="float33"), "dtype", "dtype must be None or a floating dtype name"),
]
MIXER_RULES = [
    (dict(token_mixer="attention"), "token_mixer", "token_mixer must be one of mlp, imlp"),
    (dict(hidden_ratio=0.01), "hidden_ratio", "hidden_ratio 0.01 gives no iMLP hidden neurons"),
    (dict(hidden_ratio=-1.0), "hidden_ratio", "hidden_ratio must be > 0"),
    (dict(n_iter=-1), "n_iter", "n_iter must be an integer >= 0"),
    (dict(n_power=0), "n_power", "n_power must be a positive integer"),
    (dict(sn_coeff=0.0), "sn_coeff", "sn_coeff must be > 0"),
    (dict(spectral_norm=1), "spectral_norm", "spectral_norm must be True or False"),
    (dict(tied="yes"), "tied", "tied must be True or False"),
    (dict(adjoint="backprop"), "adjoint", "adjoint must be one of unrolled, implicit"),
    (dict(tol=-1e-3), "tol", "tol must be >= 0"),
    (dict(scan_blocks=1), "scan_blocks", "scan_blocks must be True or False"),
    (dict(remat="all"), "remat", "remat must be one of none, activations, token_mixer, block"),
    (dict(n_iters=3), "n_iters", "n_iters is not a MixerConfig field; did you mean n_iter"),
]
PARAMIXER_RULES = [
    (dict(block="diagonal"), "block", "block must be one of serial, parallel"),
    (dict(mlp="tied"), "mlp", "mlp must be one of vanilla, symmetric, asymmetric"),
    (dict(repeats=0), "repeats", "repeats must be a positive integer"),
    (dict(mlp="asymmetric", asym_penalty=-0.1), "asym_penalty", "asym_penalty must be >= 0"),
    (dict(asym_penalty=0.1), "asym_penalty", "asym_penalty penalises the symmetry-breaking W_2"),
    (dict(scalar_scale=0), "scalar_scale", "scalar_scale must be True or False"),
    (dict(token_mixer="imlp"), "token_mixer", "token_mixer is not a ParaMixerConfig field"),
]


@pytest.mark.parametrize(
    "cls, override, field, message",
    [(MixerConfig, *rule) for rule in SHARED_RULES + MIXER_RULES]
    + [(ParaMixerConfig, *rule) for rule in SHARED_RULES + PARAMIXER_RULES],
)
def test_each_rule_fails_with_one_line_naming_the_field(cls, override, field, message):
    cls(**TINY)  # valid without the override
    with pytest.raises(ModelConfigError, match=f"^{message}") as info:
        cls(**{**TINY, **override})
    assert info.value.field == field
    assert "\n" not in str(info.value)
    # dataclasses.replace (``config.replace``) goes through the same checks.
    with pytest.raises(ModelConfigError, match=f"^{message}"):
        cls(**TINY).replace(**override)


def test_unknown_field_without_close_match_lists_the_fields():
    with pytest.raises(ModelConfigError, match="^colour is not a MixerConfig field; fields: num_"):
        MixerConfig(**TINY, colour="red")


def test_missing_required_field_is_one_line():
    fields = dict(TINY)
    del fields["hidden_dim"]
    with pytest.raises(ModelConfigError, match="^hidden_dim is missing") as info:
        MixerConfig.from_dict(fields)
    assert info.value.field == "hidden_dim"


def test_frozen_hashable_and_replace_returns_a_new_config():
    config = MixerConfig(**TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_iter = 4
    changed = config.replace(n_iter=4)
    assert (config.n_iter, changed.n_iter) == (2, 4)
    assert config == MixerConfig(**TINY) and hash(config) == hash(MixerConfig(**TINY))
    assert changed != config
    assert config != ParaMixerConfig(**TINY)


@pytest.mark.parametrize("dtype", ["bfloat16", jnp.bfloat16, np.dtype("bfloat16")])
def test_dtype_is_stored_by_name_and_converted_once(dtype):
    config = MixerConfig(**TINY, dtype=dtype)
    assert config.dtype == "bfloat16" and config.compute_dtype == jnp.bfloat16
    assert MixerConfig(**TINY).compute_dtype is None


def test_numbers_are_stored_as_their_field_type():
    config = MixerConfig(**TINY, step_size=1, tol=0, hidden_ratio=2)
    assert [type(v) for v in (config.step_size, config.tol, config.hidden_ratio)] == [float] * 3
    assert config == MixerConfig(**TINY)


@pytest.mark.parametrize("name", ["imixer_s16", "mixer_b32", "asymmixer_s16_224_l01"])
def test_round_trips(name):
    config = registry.model_config(name, num_classes=10, dtype="bfloat16")
    # dict and JSON (config.json) round trips
    assert configs.from_dict(config.arch, config.to_dict()) == config
    assert configs.from_dict(config.arch, json.loads(json.dumps(config.to_dict()))) == config
    # the trainer's ConfigDict and back
    trainer = config_lib.base_config(name, num_classes=10, dtype="bfloat16")
    assert trainer.arch == config.arch
    assert trainer.model.to_dict() == config.to_dict()
    assert config_lib.typed_model_config(trainer) == config


def test_config_dict_overrides_reach_the_typed_config():
    trainer = config_lib.base_config("imixer_s16")
    trainer.model.n_iter = 4
    trainer.model.dtype = "bfloat16"
    typed = config_lib.typed_model_config(trainer)
    assert (typed.n_iter, typed.dtype, typed.num_classes) == (4, "bfloat16", 10)


def test_old_config_json_without_newer_fields_loads():
    # A model section written before scan_blocks / remat existed: their defaults apply.
    fields = registry.model_config("imixer_s16", num_classes=10).to_dict()
    for newer in ("scan_blocks", "remat"):
        del fields[newer]
    config = configs.from_dict("mixer", fields)
    assert (config.scan_blocks, config.remat) == (False, "none")


def test_architectures_match_the_config_classes():
    assert set(registry.ARCHITECTURES) == set(configs.CONFIGS)
    for arch, model_class in registry.ARCHITECTURES.items():
        assert model_class.config_class is configs.CONFIGS[arch]
    with pytest.raises(ModelConfigError, match="^arch must be one of mixer, paramixer"):
        configs.from_dict("resnet", TINY)


def test_mixer_penalty_is_zero():
    # Abstract parameters (nothing initialised: eagerly each initialiser compiles on its own);
    # the penalty is computed by the model's own method.
    model = nnx.eval_shape(lambda: registry.build(MixerConfig(**TINY), rngs=nnx.Rngs(0)))
    penalty = model.penalty()
    assert penalty.shape == () and penalty.dtype == jnp.float32 and float(penalty) == 0.0


@pytest.mark.slow  # two train-step compiles: about 30 s on 2 shared cores
def test_train_step_adds_the_model_penalty():
    # The same initial parameters (asym_penalty draws nothing) and the same batch and keys: the
    # two losses differ by exactly lambda * sum ||W_2||^2 at the initial parameters (about 16
    # here), up to float32 rounding of the two losses (a few ulp of ~18, i.e. ~1e-6 relative).
    from configs import default
    from imixer_jax import training

    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
        "label": rng.integers(0, 10, 8).astype(np.int32),
    }
    tiny = dict(TINY, img_size=16, patch_size=4, num_blocks=1)
    losses, penalties = {}, {}
    for lam in (0.0, 0.5):
        c = default.get_config()
        c.arch = "paramixer"
        c.model = config_lib.model_section(
            "asymmixer_s16_224_l00", **tiny, drop_path_rate=0.0, asym_penalty=lam
        )
        c.data.name, c.batch_size = "synthetic/10", 8
        c.data.augment.mixup_alpha = c.data.augment.cutmix_alpha = 0.0
        c.schedule.unit, c.schedule.length, c.schedule.warmup = "steps", 2.0, 1.0
        run = training.prepare(c)
        state = training.init_state(run)
        model = nnx.merge(run.graphdef, state.params, state.rest)
        penalties[lam] = float(model.penalty())
        _, metrics = training.make_train_step(run)(state, batch)
        losses[lam] = float(metrics["loss"])
    assert penalties[0.0] == 0.0 and penalties[0.5] > 1.0
    np.testing.assert_allclose(losses[0.5] - losses[0.0], penalties[0.5], rtol=1e-5)
