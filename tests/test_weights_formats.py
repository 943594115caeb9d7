"""``weights.formats``: the format of a weights file told by content, the check from headers
only, and ``init_from`` from every format (vit_jax .npz, official iMixer / paramixer .pth, ours).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from imixer_jax.models import build
from imixer_jax.weights import formats, mapping, ours, torch_imixer
from tests.test_convert_torch_imixer import _official_state_dict
from tests.test_convert_torch_paramixer import official_state_dict
from tests.test_pretrained import _fabricated


def _abstract(config):
    """(params, rest) of a model of ``config``, shape-only (as the trainer's abstract state)."""
    model = nnx.eval_shape(lambda: build(config, rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param, ...), model


def test_format_is_told_by_content(tmp_path):
    flat, _ = _fabricated(7)
    vit = tmp_path / "weights.pth"  # a misleading name: the content decides
    with open(vit, "wb") as f:
        np.savez(f, **flat)
    assert formats.detect(str(vit)) == "vit_jax"
    np.savez(tmp_path / "big_vision.npz", **{f"params/{k}": v for k, v in flat.items()})
    assert formats.detect(str(tmp_path / "big_vision.npz")) == "vit_jax"
    sd = _official_state_dict()
    config = torch_imixer.model_config(sd)
    ours.save(
        str(tmp_path / "ours.npz"),
        torch_imixer.from_torch(sd, nnx.state(_abstract(config)[1])),
        config,
    )
    assert formats.detect(str(tmp_path / "ours.npz")) == "imixer_jax"


def test_foreign_files_are_named_as_such(tmp_path):
    """Issue 17 item 7: a foreign .npz said "entry '' has no place", random bytes "unexpected
    ValueError: This file contains pickled (object) data"."""
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3), b=np.ones(2))
    with pytest.raises(mapping.PretrainedError) as err:
        formats.detect(str(tmp_path / "foreign.npz"))
    assert "is an .npz of no known weights format (entries 'a', 'b')" in str(err.value)
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(mapping.PretrainedError, match="is neither an .npz nor a PyTorch file"):
        formats.detect(str(tmp_path / "noise.npz"))
    np.savez(tmp_path / "objects.npz", stem=np.array([None], dtype=object))
    with pytest.raises(mapping.PretrainedError, match="holds pickled objects, which are never"):
        formats.detect(str(tmp_path / "objects.npz"))


def test_check_reads_headers_only_and_names_the_mismatch(tmp_path, monkeypatch):
    sd = official_state_dict("symmixer")
    config = torch_imixer.model_config(sd, "symmixer_s16_224_ni2")
    (params, rest), model = _abstract(config)
    path = tmp_path / "sym.npz"
    ours.save(str(path), torch_imixer.from_torch(sd, nnx.state(model)), config, name="s")
    monkeypatch.setattr(formats, "read_npz", lambda p: pytest.fail("array data was read"))
    formats.check(formats.InitFrom(str(path)), config, params, rest)
    (params2, rest2), _ = _abstract(config.replace(repeats=3))
    with pytest.raises(
        mapping.PretrainedError, match="saved with repeats=2, the model has repeats=3"
    ):
        formats.check(formats.InitFrom(str(path)), config.replace(repeats=3), params2, rest2)
    (params3, rest3), _ = _abstract(config.replace(hidden_dim=16))
    with pytest.raises(mapping.PretrainedError, match="saved with hidden_dim=8"):
        formats.check(formats.InitFrom(str(path)), config.replace(hidden_dim=16), params3, rest3)


def test_init_from_ours_with_a_new_head(tmp_path):
    sd = official_state_dict("asymmixer")
    config = torch_imixer.model_config(sd, "asymmixer_s16_224_l01")
    path = tmp_path / "asym.npz"
    ours.save(str(path), torch_imixer.from_torch(sd, nnx.state(_abstract(config)[1])), config)
    three = config.replace(num_classes=3, asym_penalty=0.0)  # training-only lambda may differ
    (params, rest), _ = _abstract(three)
    formats.check(formats.InitFrom(str(path)), three, params, rest)
    loaded, _ = formats.apply_init(formats.InitFrom(str(path)), three, params, rest)
    pure = nnx.to_pure_dict(loaded)
    assert pure["head"]["kernel"].shape == (8, 3) and not np.any(pure["head"]["kernel"])
    np.testing.assert_array_equal(
        pure["blocks"][0]["mlp_tokens"]["fc2"]["kernel"], sd["blocks.0.mlp_tokens.fc2.weight"].T
    )
    with pytest.raises(
        mapping.PretrainedError, match="has 5 classes, the model 3; use head='zero'"
    ):
        formats.apply_init(formats.InitFrom(str(path), head="keep"), three, params, rest)


def _save_torch(torch, path, sd, arch=None):
    checkpoint = {"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}
    torch.save({**checkpoint, "arch": arch} if arch else checkpoint, path)


def test_init_from_official_pth_loads_u_and_v(tmp_path):
    torch = pytest.importorskip("torch", reason="torch (the optional extra) is not installed")
    sd = _official_state_dict()
    path = tmp_path / "imixer.pth.tar"
    _save_torch(torch, path, sd)
    config = torch_imixer.model_config(sd, num_classes=10)
    (params, rest), _ = _abstract(config)
    formats.check(
        formats.InitFrom(str(path)), config, params, rest
    )  # tensors memory-mapped, shapes only
    params, rest = formats.apply_init(formats.InitFrom(str(path)), config, params, rest)
    np.testing.assert_array_equal(
        nnx.to_pure_dict(rest)["blocks"][1]["token_mixer"]["fc_sn2"]["v"],
        sd["blocks.1.mlp_tokens.fc_sn2.weight_v"],
    )
    assert not np.any(nnx.to_pure_dict(params)["head"]["bias"])


def test_init_from_official_paramixer_pth_checks_its_recorded_model(tmp_path):
    torch = pytest.importorskip("torch", reason="torch (the optional extra) is not installed")
    sd = official_state_dict("paramixer")
    path = tmp_path / "para.pth"
    _save_torch(torch, path, sd, arch="paramixer_s16_224_ni3")
    config = torch_imixer.model_config(sd, "paramixer_s16_224_ni3")
    (params, rest), _ = _abstract(config)
    loaded, _ = formats.apply_init(formats.InitFrom(str(path), head="keep"), config, params, rest)
    np.testing.assert_array_equal(
        nnx.to_pure_dict(loaded)["blocks"][1]["norm"]["scale"], sd["blocks.1.norm.weight"]
    )
    one = config.replace(repeats=1)
    (params, rest), _ = _abstract(one)
    with pytest.raises(
        mapping.PretrainedError, match="saved with repeats=3, the model has repeats=1"
    ):
        formats.check(formats.InitFrom(str(path)), one, params, rest)


def test_scanned_model_takes_the_per_block_file(tmp_path):
    flat, _ = _fabricated(7)
    np.savez(tmp_path / "vit.npz", **flat)
    from imixer_jax.models import model_config
    from tests.test_pretrained import TINY, TINY_MLP

    config = model_config(
        "mixer_s16", num_classes=7, channels_mlp_dim=TINY_MLP, scan_blocks=True, **TINY
    )
    (params, rest), _ = _abstract(config)
    loaded, _ = formats.apply_init(
        formats.InitFrom(str(tmp_path / "vit.npz"), head="keep"), config, params, rest
    )
    kernel = nnx.to_pure_dict(loaded)["blocks"]["token_mixer"]["fc1"]["kernel"]
    np.testing.assert_array_equal(kernel[1], flat["MixerBlock_1/token_mixing/Dense_0/kernel"])
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
