"""Official paramixer PyTorch ``state_dict`` <-> our ``ParaMixer`` (``weights.torch_paramixer``).

The official layout and eval-mode forward are written here with numpy from
github.com/Toshihiro-Ota/paramixer (``models/layers.py``: ``vMlp`` ``fc2(act(fc1 x))``, ``sMlp``
``F.linear(act(F.linear(x, fc2.weight)), fc2.weight.T)``, ``aMlp`` ``F.linear(h, fc1.weight.T) +
fc2(h)`` with ``h = act(F.linear(x, fc1.weight))``, all bias-free; ``vMixerBlock`` /
``pMixerBlock`` with ``nn.LayerNorm((seq_len, dim), eps=1e-6)`` and ``n_iter``
repeats (our ``repeats``);
``models/mixers.py``: timm's ``PatchEmbed`` stem, final ``LayerNorm(dim)``, mean over tokens,
``head``), independently of the converter's tables. timm (which the official code imports) cannot
be imported here, so the reference is this plain re-implementation of those module definitions;
the mapping runs on numpy dicts, so only the file round trip needs torch (skipped without it).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from imixer_jax.models import build, registry
from imixer_jax.weights import __main__ as weights_command
from imixer_jax.weights import formats, ours, torch_imixer
from imixer_jax.weights.mapping import PretrainedError
from tests.commands import call

KINDS = {  # official model kind -> (block, MLP class)
    "vanillamixer": ("serial", "vMlp"),
    "paramixer": ("parallel", "vMlp"),
    "symmixer": ("parallel", "sMlp"),
    "asymmixer": ("parallel", "aMlp"),
}
TINY = dict(classes=5, patch=4, img=16, dim=8, tokens=4, channels=32, blocks=2)


def official_shapes(kind: str, t=TINY) -> dict[str, tuple[int, ...]]:
    """Every ``state_dict`` key of an official model of ``kind`` and its torch shape."""
    block, mlp = KINDS[kind]
    s, d = (t["img"] // t["patch"]) ** 2, t["dim"]
    shapes = {"stem.proj.weight": (d, 3, t["patch"], t["patch"]), "stem.proj.bias": (d,)}
    for i in range(t["blocks"]):
        norms = ("norm1", "norm2") if block == "serial" else ("norm",)
        for norm in norms:
            shapes[f"blocks.{i}.{norm}.weight"] = shapes[f"blocks.{i}.{norm}.bias"] = (s, d)
        for name, n, k in (("mlp_tokens", s, t["tokens"]), ("mlp_channels", d, t["channels"])):
            if mlp == "sMlp":
                shapes[f"blocks.{i}.{name}.fc2.weight"] = (k, n)  # applied first, named fc2
            else:
                shapes[f"blocks.{i}.{name}.fc1.weight"] = (k, n)
                shapes[f"blocks.{i}.{name}.fc2.weight"] = (n, k)
    shapes.update({"norm.weight": (d,), "norm.bias": (d,)})
    shapes.update({"head.weight": (t["classes"], d), "head.bias": (t["classes"],)})
    return shapes


def official_state_dict(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 arrays under the official keys: O(1) LayerNorm gains and biases, weights
    scaled by 1/sqrt(fan-in) so that activations stay O(1) through the blocks."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in official_shapes(kind).items():
        scale = 1 / np.sqrt(shape[-1]) if key.endswith("weight") and len(shape) == 2 else 0.5
        if ".norm" in key or key.startswith("norm."):
            scale = 0.5
        value = scale * rng.standard_normal(shape)
        if key.endswith("weight") and ("norm" in key):
            value += 1
        sd[key] = value.astype(np.float32)
    return sd


def _gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _layer_norm(x, weight, bias, axes):
    mean = x.mean(axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axes, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * weight + bias


def _mlp(x, sd, name, mlp):
    if mlp == "sMlp":
        w = sd[f"{name}.fc2.weight"]
        return _gelu(x @ w.T) @ w
    h = _gelu(x @ sd[f"{name}.fc1.weight"].T)
    if mlp == "aMlp":
        return h @ sd[f"{name}.fc1.weight"] + h @ sd[f"{name}.fc2.weight"].T
    return h @ sd[f"{name}.fc2.weight"].T


def official_forward(sd, images, kind, repeats):
    """The official eval-mode forward in float64; ``images`` NHWC (the official NCHW)."""
    block, mlp = KINDS[kind]
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = np.asarray(images, np.float64)
    b, side, p = x.shape[0], x.shape[1], sd["stem.proj.weight"].shape[-1]
    g = side // p  # Conv PxP stride P == a matmul over (channel, row, column) patches
    patches = x.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 5, 2, 4).reshape(b, g * g, -1)
    x = patches @ sd["stem.proj.weight"].reshape(len(sd["stem.proj.bias"]), -1).T
    x = x + sd["stem.proj.bias"]  # [B, S, D], tokens in row-major order (flatten(2))
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})

    def norm(y, name):
        return _layer_norm(y, sd[f"{name}.weight"], sd[f"{name}.bias"], (-2, -1))

    for i in blocks:
        pre = f"blocks.{i}"
        for _ in range(repeats):
            if block == "serial":
                y = norm(x, f"{pre}.norm1").transpose(0, 2, 1)
                x = x + _mlp(y, sd, f"{pre}.mlp_tokens", mlp).transpose(0, 2, 1)
                x = x + _mlp(norm(x, f"{pre}.norm2"), sd, f"{pre}.mlp_channels", mlp)
            else:
                y = norm(x, f"{pre}.norm")
                tokens = _mlp(y.transpose(0, 2, 1), sd, f"{pre}.mlp_tokens", mlp)
                x = x + tokens.transpose(0, 2, 1) + _mlp(y, sd, f"{pre}.mlp_channels", mlp)
    x = _layer_norm(x, sd["norm.weight"], sd["norm.bias"], -1).mean(axis=1)
    return x @ sd["head.weight"].T + sd["head.bias"]


def _name(kind: str, repeats: int) -> str:
    return f"{kind}_s16_224" + (f"_ni{repeats}" if repeats > 1 else "")


def _model(sd, name, **overrides):
    config = torch_imixer.model_config(sd, name, **overrides)
    return nnx.eval_shape(lambda: build(config, rngs=nnx.Rngs(0)))


def _images(batch=3):
    return jax.random.uniform(jax.random.key(7), (batch, 16, 16, 3), minval=-1, maxval=1)


CASES = [(kind, n) for kind in KINDS for n in (1, 2)]
CASES.remove(("asymmixer", 2))  # the official code has no asymmixer repeats


@pytest.mark.parametrize("kind, repeats", CASES)
def test_logits_equal_the_official_forward_and_convert_back(kind, repeats):
    sd = official_state_dict(kind)
    model = _model(sd, _name(kind, repeats))
    assert (model.config.repeats, model.config.block) == (repeats, KINDS[kind][0])
    nnx.update(model, torch_imixer.from_torch(sd, nnx.state(model)))
    model.eval()
    ours_logits = np.asarray(model(_images()))
    ref = official_forward(sd, _images(), kind, repeats)
    # float32 (ours) vs float64 (reference): ~50-100 float32 ops per logit on O(1) values, each
    # within 6e-8 relative, and the LayerNorms divide by std ~ 1: a few 1e-7 expected. 1e-5 is far
    # below any mapping error (a transposed, swapped or misnamed weight, or a missing repeat,
    # changes the logits by O(0.1-1); checked below).
    np.testing.assert_allclose(ours_logits, ref, rtol=0, atol=1e-5)
    assert np.abs(ref).max() > 0.5
    other = official_forward(sd, _images(), kind, repeats + 1)
    assert np.abs(ref - other).max() > 1e-2
    back = torch_imixer.to_torch(nnx.state(model))
    assert sorted(back) == sorted(official_shapes(kind))  # exactly the official keys
    for key, value in sd.items():
        np.testing.assert_array_equal(back[key], value)


# The 36 official names: the asymmixer size grid (asymmixer_{s,b,l}{16,32}_224) is ours.
OFFICIAL = [
    n for n in registry.PARAMIXER_NAMES if not (n.startswith("asymmixer") and n.count("_") == 2)
]


@pytest.mark.parametrize(
    "name",  # the L variants trace 24 blocks (1-2 s each on 2 cores): the slow set has them
    [pytest.param(n, marks=pytest.mark.slow) if n.split("_")[1][0] == "l" else n for n in OFFICIAL],
)
def test_every_official_name_has_the_official_keys_and_shapes(name):
    """At full size (224 px, 1000 classes), from abstract shapes only: our state converts to
    exactly the official keys, each in its official shape."""
    kind, size = name.split("_")[:2]
    dim = {"s": 512, "b": 768, "l": 1024}[size[0]]
    blocks = {"s": 8, "b": 12, "l": 24}[size[0]]
    t = dict(classes=1000, patch=int(size[1:]), img=224, dim=dim, tokens=dim // 2)
    t.update(channels=4 * dim, blocks=blocks)
    config = registry.model_config(name)
    state = nnx.state(nnx.eval_shape(lambda: build(config, rngs=nnx.Rngs(0))))
    abstract = jax.tree.map(lambda x: np.broadcast_to(np.zeros((), np.float32), x.shape), state)
    exported = torch_imixer.to_torch(abstract)
    assert {k: v.shape for k, v in exported.items()} == official_shapes(kind, t)


def test_name_settles_what_shapes_cannot():
    sd = official_state_dict("paramixer")
    with pytest.raises(PretrainedError, match="paramixer_.* or an asymmixer_.*; give the model"):
        torch_imixer.model_config(sd)
    assert torch_imixer.model_config(sd, "asymmixer_s16_224_l01").asym_penalty == 0.1
    with pytest.raises(PretrainedError, match="not the serial vanilla blocks"):
        torch_imixer.model_config(sd, "vanillamixer_s16_224")
    assert torch_imixer.model_config(official_state_dict("symmixer")).mlp == "symmetric"
    assert torch_imixer.model_config(official_state_dict("vanillamixer")).block == "serial"
    assert torch_imixer.registered_name("symmixer_s16_224_ni3") == "symmixer_s16_224_ni3"
    assert torch_imixer.registered_name("imixer_b16_224") == "imixer_b16"


def test_npz_carries_name_and_settings(tmp_path):
    sd = official_state_dict("paramixer")
    model = _model(sd, "paramixer_s16_224_ni2")
    state = torch_imixer.from_torch(sd, nnx.state(model))
    path = str(tmp_path / "w.npz")
    ours.save(path, state, model.config, name="paramixer_s16_224_ni2")
    name, config = ours.settings_of(ours.read(path), path)
    assert name == "paramixer_s16_224_ni2" and config == model.config
    other = _model(sd, "paramixer_s16_224")  # repeats=1
    with pytest.raises(PretrainedError) as err:
        ours.load_into(other, path)
    assert str(err.value) == (
        f"{path!r} (paramixer_s16_224_ni2) was saved with repeats=2, the model has repeats=1; "
        "build the model with the checkpoint's settings"
    )
    same = _model(sd, "paramixer_s16_224_ni2", drop_path_rate=0.3)  # training-only: loads
    ours.load_into(same, path)
    np.testing.assert_array_equal(
        nnx.state(same)["blocks"][1]["mlp_channels"]["fc2"]["kernel"][...],
        sd["blocks.1.mlp_channels.fc2.weight"].T,
    )
    assert formats.detect(path) == "imixer_jax"


def test_pytorch_files_round_trip(tmp_path):
    torch = pytest.importorskip("torch", reason="torch (the optional extra) is not installed")
    sd = official_state_dict("asymmixer")
    pth = str(tmp_path / "official.pth")
    checkpoint = {"arch": "asymmixer_s16_224_l02", "state_dict": sd}
    torch.save({**checkpoint, "state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, pth)
    npz, back = str(tmp_path / "ours.npz"), str(tmp_path / "back.pth")
    call(weights_command, "--in", pth, "--out", npz)
    name, config = ours.settings_of(ours.read(npz), npz)
    assert (name, config.mlp, config.asym_penalty) == ("asymmixer_s16_224_l02", "asymmetric", 1e-2)
    call(weights_command, "--in", npz, "--out", back)
    reloaded = torch.load(back, weights_only=True)
    assert sorted(reloaded) == sorted(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(reloaded[key].numpy(), value)
