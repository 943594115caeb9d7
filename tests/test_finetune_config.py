"""configs/finetune.py: the vit_jax CIFAR-10 fine-tuning recipe, valid for the trainer."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from configs import finetune
from imixer_jax.training import config as config_lib
from imixer_jax.training import optim
from imixer_jax.weights import formats as weights_formats


def test_recipe_is_vit_jax_and_validates():
    c = finetune.get_config("mixer_l16")
    config_lib.validate(c)
    assert (c.model.num_blocks, c.model.hidden_dim, c.model.patch_size) == (24, 1024, 16)
    assert (c.model.num_classes, c.model.img_size, c.model.drop_path_rate) == (10, 224, 0.0)
    assert c.init_from.format == "vit_jax" and c.init_from.head == "zero"
    assert c.init_from.path is None
    assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.lr) == ("sgd", 0.9, 0.03)
    assert (c.optimizer.weight_decay, c.optimizer.grad_clip_norm) == (0.0, 1.0)
    assert c.batch_size == 512 and c.data.train_split == "train[:98%]"
    aug = c.data.augment
    assert aug.mixup_alpha == aug.cutmix_alpha == aug.label_smoothing == aug.random_erasing == 0


def test_schedule_is_10k_steps_with_500_warmup():
    c = finetune.get_config("")
    run = optim.plan(c, num_train=49_000)
    assert (run.total_steps, run.warmup_updates) == (10_000, 500)
    lr = optim.learning_rate(c, run)
    # Linear warm-up from 0 to 0.03 over 500 updates, then cosine to 0 at update 10,000.
    np.testing.assert_allclose([lr(0), lr(250), lr(10_000)], [0.0, 0.015, 0.0], atol=1e-9)


def test_unknown_model_is_one_line():
    with pytest.raises(ValueError, match="takes one of mixer_b16, mixer_b32, mixer_l16"):
        finetune.get_config("imixer_b16")


def _tiny_finetune(tmp_path, path):
    """configs/finetune.py shrunk to tests/test_pretrained.py's tiny Mixer, on synthetic data."""
    from tests.test_pretrained import TINY, TINY_MLP

    c = finetune.get_config("mixer_b16")
    c.model = config_lib.model_section(
        "mixer_s16", num_classes=10, channels_mlp_dim=TINY_MLP, drop_path_rate=0.0, **TINY
    )
    c.data.name, c.data.train_split, c.data.eval_split = "synthetic/10", "train", "validation"
    c.batch_size, c.eval_batch_size = 8, 8
    c.mesh.shape = (1, 1)
    c.init_from.path = path
    return c


def test_missing_checkpoint_is_one_config_line(tmp_path):
    config = _tiny_finetune(tmp_path, str(tmp_path / "nowhere.npz"))
    with pytest.raises(
        config_lib.ConfigError, match=r"^config\.init_from\.path: no file .*nowhere\.npz"
    ):
        config_lib.validate(config)


def test_trainer_starts_from_the_checkpoint_with_a_zero_head(tmp_path):
    """The trainer's fresh state carries the checkpoint's weights (a new zero head for the new
    classes); the optimiser state is the one of those parameters."""
    import jax

    from imixer_jax import training
    from imixer_jax.training import loop
    from imixer_jax.weights import vit_jax as pretrained
    from tests.test_pretrained import _fabricated

    flat, _ = _fabricated(num_classes=21)  # another head: replaced by zeros
    path = str(tmp_path / "mixer.npz")
    np.savez(path, **flat)
    setup = training.prepare(_tiny_finetune(tmp_path, path))
    fresh = training.init_state(setup)  # init_state compiles on every call: one call
    initial = jax.tree.map(np.array, fresh.params)  # host copies of the fresh parameters
    state = loop._pretrained(setup, fresh)
    got = {k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
    want = pretrained.from_vit_jax(flat, initial, head="zero")
    for path_, value in jax.tree_util.tree_leaves_with_path(want):
        np.testing.assert_array_equal(got[path_], np.asarray(value), err_msg=str(path_))
    assert not np.any(np.asarray(state.params["head"]["kernel"][...]))
    stem = np.asarray(state.params["stem"]["kernel"][...])
    np.testing.assert_array_equal(stem, flat["stem/kernel"])


def test_trainer_starts_from_our_imixer_file_with_its_u_and_v(tmp_path):
    """An .npz of ours (here converted from an official iMixer state_dict) fine-tunes an iMixer:
    parameters and the spectral norm's u, v come from the file, the head is new."""
    import jax

    from imixer_jax import training
    from imixer_jax.training import loop
    from imixer_jax.weights import ours, torch_imixer
    from tests.test_convert_torch_imixer import _loaded_state, _official_state_dict

    sd = _official_state_dict(seed=3)
    path = str(tmp_path / "imixer.npz")
    ours.save(path, _loaded_state(seed=3), torch_imixer.model_config(sd))
    c = _tiny_finetune(tmp_path, path)
    c.arch = "mixer"
    c.model = config_lib.model_section(
        "imixer_s16", **{**torch_imixer.model_config(sd, num_classes=10).to_dict(), "dtype": None}
    )
    c.init_from.format = "auto"
    setup = training.prepare(c)
    abstract = setup.abstract_state
    weights_formats.check(
        config_lib.init_from(c), setup.model_config, abstract.params, abstract.rest
    )
    state = loop._pretrained(setup, training.init_state(setup))
    rest = jax.device_get(nnx.to_pure_dict(state.rest))
    np.testing.assert_array_equal(
        rest["blocks"][1]["token_mixer"]["fc_sn1"]["u"], sd["blocks.1.mlp_tokens.fc_sn1.weight_u"]
    )
    assert not np.any(np.asarray(state.params["head"]["kernel"][...]))
