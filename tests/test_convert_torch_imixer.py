"""Official iMixer PyTorch ``state_dict`` <-> our state (``imixer_jax.weights.torch_imixer``).

The official layout and forward are written here from github.com/Toshihiro-Ota/imixer
(``models/mlp_imixer.py``: ``PatchEmbed`` stem, ``MixerBlock`` with ``norm1``/``mlp_tokens``/
``norm2``/``mlp_channels``, ``iMlp`` with ``fc1``/``fc_sn1``/``fc_sn2``/``fc2``;
``utils/spectral_norm_fc.py``: ``weight_orig``, ``weight_u``, ``weight_v``, ``weight_sigma``),
independently of the converter's own tables. The mapping runs on numpy dicts, so these tests need
no torch; only the file round trip does (skipped without it).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from imixer_jax.models import build
from imixer_jax.weights import __main__ as weights_command
from imixer_jax.weights import formats, ours, torch_imixer
from imixer_jax.weights.mapping import PretrainedError
from tests.commands import call

TINY = dict(classes=5, patch=4, img=16, dim=8, tokens=6, channels=20, hidden=12, blocks=2)
COEFF = 0.9


def _normalize(x):
    return x / np.linalg.norm(x)


def _official_state_dict(seed: int = 0, t=TINY) -> dict[str, np.ndarray]:
    """Random float32 arrays under the official keys and torch shapes ([out, in] weights)."""
    rng = np.random.default_rng(seed)
    s = (t["img"] // t["patch"]) ** 2
    d, tok, c, h = t["dim"], t["tokens"], t["channels"], t["hidden"]

    def normal(*shape, scale=0.5):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    sd = {"stem.proj.weight": normal(d, 3, t["patch"], t["patch"]), "stem.proj.bias": normal(d)}

    def linear(name, n_out, n_in, spectral=False):
        w = normal(n_out, n_in)
        sd[f"{name}.bias"] = normal(n_out)
        if not spectral:
            sd[f"{name}.weight"] = w
            return
        u, v = _normalize(rng.standard_normal(n_out)), None
        for _ in range(3):  # a few power steps, as after some training: sigma > 0
            v = _normalize(w.T @ u)
            u = _normalize(w @ v)
        sd[f"{name}.weight_orig"] = w
        sd[f"{name}.weight_u"] = u.astype(np.float32)
        sd[f"{name}.weight_v"] = v.astype(np.float32)
        sd[f"{name}.weight_sigma"] = np.asarray([u @ w @ v], np.float32)

    for i in range(t["blocks"]):
        b = f"blocks.{i}"
        sd[f"{b}.norm1.weight"], sd[f"{b}.norm1.bias"] = 1 + normal(d), normal(d)
        linear(f"{b}.mlp_tokens.fc1", tok, s)
        linear(f"{b}.mlp_tokens.fc_sn1", h, tok, spectral=True)
        linear(f"{b}.mlp_tokens.fc_sn2", tok, h, spectral=True)
        linear(f"{b}.mlp_tokens.fc2", s, tok)
        sd[f"{b}.norm2.weight"], sd[f"{b}.norm2.bias"] = 1 + normal(d), normal(d)
        linear(f"{b}.mlp_channels.fc1", c, d)
        linear(f"{b}.mlp_channels.fc2", d, c)
    sd["norm.weight"], sd["norm.bias"] = 1 + normal(d), normal(d)
    linear("head", t["classes"], d)
    return sd


def _gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _layer_norm(x, sd, name):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _linear(x, sd, name):
    if f"{name}.weight_orig" in sd:  # evaluation-mode spectral norm: stored u, v, no update
        w = sd[f"{name}.weight_orig"].astype(np.float64)
        sigma = sd[f"{name}.weight_u"] @ w @ sd[f"{name}.weight_v"]
        w = w / max(1.0, sigma / COEFF)
    else:
        w = sd[f"{name}.weight"]
    return x @ w.T + sd[f"{name}.bias"]


def _official_forward(sd, images, n_iter):
    """The official eval-mode forward in float64 numpy; ``images`` NHWC, the official NCHW."""
    x = np.asarray(images, np.float64)
    b, side, p = x.shape[0], x.shape[1], sd["stem.proj.weight"].shape[-1]
    g = side // p  # Conv PxP stride P == a matmul over (channel, row, column) patches
    patches = x.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 5, 2, 4).reshape(b, g * g, -1)
    x = patches @ sd["stem.proj.weight"].reshape(len(sd["stem.proj.bias"]), -1).T
    x = x + sd["stem.proj.bias"]  # [B, S, D], tokens in row-major order (flatten(2))
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    for i in blocks:
        t = f"blocks.{i}.mlp_tokens"
        y = _layer_norm(x, sd, f"blocks.{i}.norm1").transpose(0, 2, 1)  # [B, D, S]
        z = _linear(y, sd, f"{t}.fc1")
        z_in = z
        for _ in range(n_iter):
            z = _linear(_gelu(_linear(_gelu(z), sd, f"{t}.fc_sn1")), sd, f"{t}.fc_sn2") + z_in
        x = x + _linear(_gelu(z), sd, f"{t}.fc2").transpose(0, 2, 1)
        y = _layer_norm(x, sd, f"blocks.{i}.norm2")
        x = x + _linear(
            _gelu(_linear(y, sd, f"blocks.{i}.mlp_channels.fc1")),
            sd,
            f"blocks.{i}.mlp_channels.fc2",
        )
    return _linear(_layer_norm(x, sd, "norm").mean(axis=1), sd, "head")


def _model_for(sd, **overrides):
    """A model of the architecture ``sd`` was saved from, with shape-only state
    (``nnx.eval_shape``): the conversion must replace every parameter and u, v."""
    config = torch_imixer.model_config(sd, **overrides)
    return nnx.eval_shape(lambda: build(config, rngs=nnx.Rngs(0)))


def _loaded_state(seed: int = 3) -> nnx.State:
    """A concrete state: the fabricated official weights of ``seed`` in our layout."""
    sd = _official_state_dict(seed)
    return torch_imixer.from_torch(sd, nnx.state(_model_for(sd)))


def _images(batch=3):
    return jax.random.uniform(jax.random.key(7), (batch, 16, 16, 3), minval=-1, maxval=1)


def test_architecture_is_inferred_from_shapes():
    fields = torch_imixer.model_config(_official_state_dict()).to_dict()
    expected = dict(
        num_classes=5,
        img_size=16,
        patch_size=4,
        num_blocks=2,
        hidden_dim=8,
        tokens_mlp_dim=6,
        channels_mlp_dim=20,
        hidden_ratio=2.0,
        token_mixer="imlp",
    )
    assert {k: fields[k] for k in expected} == expected


@pytest.mark.parametrize("n_iter", [0, 2])
def test_logits_equal_the_official_forward(n_iter):
    sd = _official_state_dict()
    model = _model_for(sd, n_iter=n_iter)
    nnx.update(model, torch_imixer.from_torch(sd, nnx.state(model)))
    model.eval()
    ours = np.asarray(model(_images()))
    ref = _official_forward(sd, _images(), n_iter)
    # float32 (ours) vs float64 (reference): ~60 float32 ops per logit on O(1) values, each within
    # 6e-8 relative, and LayerNorm divides by std ~ 1: a few 1e-7 (measured 2.8e-7). 1e-5 leaves a
    # wide margin yet is far below any mapping error (a transposed or swapped array changes the
    # logits by O(0.1-1), and so do the iMLP iterations, checked below).
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert np.abs(ref).max() > 0.5
    if n_iter:
        assert np.abs(ref - _official_forward(sd, _images(), 0)).max() > 1e-3
    # The soft normalisation is active (sigma > coeff) for the fabricated weights.
    assert sd["blocks.0.mlp_tokens.fc_sn1.weight_sigma"][0] > COEFF


def test_round_trip_ours_torch_ours_is_exact():
    ours = _loaded_state()
    sd = torch_imixer.to_torch(ours)
    assert set(sd) == set(_official_state_dict())  # exactly the official keys
    assert sd["blocks.1.mlp_tokens.fc_sn2.weight_orig"].shape == (6, 12)  # torch [out, in]
    restored = torch_imixer.from_torch(sd, nnx.state(_model_for(sd)))
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(restored), nnx.to_pure_dict(ours))
    # weight_sigma is u^T W v of the exported arrays.
    u, w, v = (sd[f"blocks.0.mlp_tokens.fc_sn1.weight_{k}"] for k in ("u", "orig", "v"))
    np.testing.assert_allclose(sd["blocks.0.mlp_tokens.fc_sn1.weight_sigma"], [u @ w @ v])


def test_timm_training_checkpoint_and_ddp_prefix():
    sd = _official_state_dict()
    checkpoint = {
        "epoch": 3,
        "arch": "imixer_s16_224",
        "state_dict": {f"module.{k}": v for k, v in sd.items()},
    }
    model = _model_for(sd)
    restored = nnx.to_pure_dict(torch_imixer.from_torch(checkpoint, nnx.state(model)))
    np.testing.assert_array_equal(
        restored["blocks"][1]["token_mixer"]["fc_sn1"]["u"],
        sd["blocks.1.mlp_tokens.fc_sn1.weight_u"],
    )
    np.testing.assert_array_equal(
        restored["stem"]["kernel"], sd["stem.proj.weight"].transpose(2, 3, 1, 0)
    )


def test_mismatch_is_one_line():
    sd = _official_state_dict()
    model = _model_for(sd, num_classes=10)
    with pytest.raises(
        PretrainedError, match=r"'head.bias' has shape \(5,\) but head.bias has \(10,\)"
    ) as err:
        torch_imixer.from_torch(sd, nnx.state(model))
    assert "\n" not in str(err.value)
    del sd["blocks.0.norm2.bias"]
    with pytest.raises(PretrainedError, match="lacks 'blocks.0.norm2.bias'"):
        torch_imixer.from_torch(sd, nnx.state(_model_for(_official_state_dict())))


def test_state_npz_round_trip(tmp_path):
    state = _loaded_state()
    config = torch_imixer.model_config(_official_state_dict())
    path = str(tmp_path / "weights.npz")
    ours.save(path, state, config, name="imixer_s16")
    entries = ours.read(path)
    assert ours.settings_of(entries, path) == ("imixer_s16", config)
    model = _model_for(_official_state_dict())
    ours.load_into(model, path)
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state(model)),
        nnx.to_pure_dict(state),
    )
    scanned = _model_for(_official_state_dict(), scan_blocks=True)  # stacked blocks: same file
    ours.load_into(scanned, path)
    np.testing.assert_array_equal(
        nnx.state(scanned)["blocks"]["token_mixer"]["fc_sn1"]["u"][...][1],
        entries["blocks.1.token_mixer.fc_sn1.u"],
    )
    other = _model_for(_official_state_dict(), num_blocks=1)
    with pytest.raises(
        PretrainedError, match=r"saved with num_blocks=2, the model has num_blocks=1"
    ):
        ours.load_into(other, path)


def test_n_iter_of_the_file_is_checked(tmp_path):
    """An n_iter=4 checkpoint loaded into the default n_iter=2 model is a one-line error (the
    logits would differ silently otherwise)."""
    sd = _official_state_dict()
    four = _model_for(sd, n_iter=4)
    path = str(tmp_path / "four.npz")
    ours.save(path, torch_imixer.from_torch(sd, nnx.state(four)), four.config)
    with pytest.raises(PretrainedError) as err:
        ours.load_into(_model_for(sd), path)
    assert str(err.value) == (
        f"{path!r} (mixer) was saved with n_iter=4, the model has n_iter=2; build the model with "
        "the checkpoint's settings"
    )


def test_pytorch_files_round_trip(tmp_path):
    torch = pytest.importorskip("torch", reason="torch (the optional extra) is not installed")
    sd = _official_state_dict()
    pth = str(tmp_path / "official.pth")
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, pth)
    npz, back = str(tmp_path / "ours.npz"), str(tmp_path / "back.pth")
    call(weights_command, "--in", pth, "--out", npz)
    call(weights_command, "--in", npz, "--out", back)
    reloaded = torch.load(back, weights_only=True)
    assert set(reloaded) == set(sd)
    for key, value in sd.items():
        # weight_sigma is recomputed as u^T W v in float32: equal to the stored one within
        # round-off; every other array is copied bit for bit.
        tol = 1e-6 if key.endswith("weight_sigma") else 0
        np.testing.assert_allclose(reloaded[key].numpy(), value, rtol=tol, atol=0)


def test_cli_from_torch_file(tmp_path, monkeypatch):
    """The CLI glue (architecture inference, checks, .npz output) with torch's file reading
    replaced by the fabricated state_dict, so that it runs without torch."""
    sd = _official_state_dict()
    monkeypatch.setattr(torch_imixer, "read_torch", lambda path, ema: (sd, "imixer_s16_224"))
    pth, npz = tmp_path / "official.pth.tar", str(tmp_path / "ours.npz")
    pth.write_bytes(b"\x80")  # a pickle's first byte: a (legacy) PyTorch file
    call(weights_command, "--in", str(pth), "--out", npz)
    loaded = ours.read(npz)
    np.testing.assert_array_equal(
        loaded["blocks.0.token_mixer.fc_sn2.v"], sd["blocks.0.mlp_tokens.fc_sn2.weight_v"]
    )
    assert formats.detect(npz) == "imixer_jax"
    with pytest.raises(PretrainedError, match="--out must end in .npz"):
        call(weights_command, "--in", str(pth), "--out", str(tmp_path / "x.pth"))


def test_without_torch_the_cli_says_what_to_install(tmp_path):
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed: the missing-torch message cannot be shown")
    path = str(tmp_path / "weights.npz")
    ours.save(path, _loaded_state(), torch_imixer.model_config(_official_state_dict()))
    with pytest.raises(PretrainedError, match=r"needs torch; pip install 'imixer_jax\[torch\]'"):
        call(weights_command, "--in", path, "--out", str(tmp_path / "x.pth"))


def _bad_inputs(tmp_path) -> dict[str, tuple[list[str], str]]:
    """name -> (converter arguments, the start of the one-line error)."""
    good = str(tmp_path / "ours.npz")
    ours.save(good, _loaded_state(), torch_imixer.model_config(_official_state_dict()))
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes((tmp_path / "ours.npz").read_bytes()[:-40])  # zip directory cut off
    flipped = tmp_path / "flipped.npz"
    data = bytearray((tmp_path / "ours.npz").read_bytes())
    data[200] ^= 0xFF  # inside the first member: its CRC no longer matches
    flipped.write_bytes(bytes(data))
    foreign = str(tmp_path / "foreign.npz")
    np.savez(foreign, a=np.zeros(3))
    objects = str(tmp_path / "objects.npz")
    np.savez(objects, a=np.array([{"x": 1}], dtype=object))
    vit = str(tmp_path / "vit.npz")
    np.savez(vit, **{"stem/kernel": np.zeros((4, 4, 3, 8)), "stem/bias": np.zeros(8)})
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).bytes(512))
    out = str(tmp_path / "out.pth")
    return {
        "corrupt npz": (["--in", str(corrupt), "--out", out], "error: "),
        "bit flip": (["--in", str(flipped), "--out", out], "error: "),
        "foreign npz": (["--in", foreign, "--out", out], "error: "),
        "object npz": (["--in", objects, "--out", out], "error: "),
        "vit_jax npz": (["--in", vit, "--out", out], "error: "),
        "random bytes": (["--in", str(noise), "--out", str(tmp_path / "o.npz")], "error: "),
        "missing --in": (["--in", str(tmp_path / "none.pth"), "--out", out], "error: "),
        "missing dir": (["--in", good, "--out", str(tmp_path / "no" / "x.pth")], "error: "),
        "--out a dir": (["--in", good, "--out", str(tmp_path)], "error: "),
    }


@pytest.fixture
def converter(monkeypatch, capsys):
    """Runs the converter as its command does (``cli.run``); returns (exit status,
    stderr lines). The process setup (log filter) is undone afterwards."""
    from absl import logging

    from imixer_jax import cli
    from imixer_jax.cli import app

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.delenv(cli.errors.VERBOSE_ENV, raising=False)

    def run(argv):
        with pytest.raises(SystemExit) as info:
            cli.run(weights_command.main, weights_command.FLAGS, ["imixer_jax.weights", *argv])
        return info.value.code, capsys.readouterr().err.strip().splitlines()

    yield run
    logging.get_absl_handler().removeFilter(app._FILTER)


EXPECTED = {
    "corrupt npz": "is neither an .npz nor a PyTorch file",
    "bit flip": "is a damaged .npz",
    "foreign npz": "has no '__imixer_jax__' entry (model settings)",
    "object npz": "holds pickled (object) arrays, which are never loaded",
    "vit_jax npz": "is a vit_jax checkpoint, which has no PyTorch form here",
    "random bytes": "is neither an .npz nor a PyTorch file",
    "missing --in": "no weights file",
    "missing dir": "is in a missing directory",
    "--out a dir": "is a directory; name a file in an existing directory",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_every_bad_input_is_one_line(case, tmp_path, converter):
    argv, start = _bad_inputs(tmp_path)[case]
    code, err = converter(argv)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(start) and EXPECTED[case] in err[0], err[0]
    assert len(err[0]) < 300 and "; " in err[0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]


def test_a_pth_holding_a_list_is_one_line(tmp_path, converter):
    torch = pytest.importorskip("torch", reason="torch (the optional extra) is not installed")
    path = str(tmp_path / "list.pth")
    torch.save([torch.zeros(2)], path)
    code, err = converter(["--in", path, "--out", str(tmp_path / "x.npz")])
    assert code == 1 and len(err) == 1 and len(err[0]) < 300
    assert "holds a list, not a state_dict; re-save it with torch.save" in err[0]
