"""Tests of the parallelized MLP-Mixer family: structure, energy, registry and parameter counts."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imixer_jax.hopfield import Dense, Directed
from imixer_jax.models import paramixer, registry
from imixer_jax.models.configs import ParaMixerConfig
from imixer_jax.models.paramixer import ParallelBlock, ParaMixer, SerialBlock, reduced_energy
from tests import random_draws, tiny

# A small model: 16 tokens (32 px, patch 8), D 16, T 8, C 32, 2 blocks.
TINY = dict(tiny.MODEL)
# A single block on S = 6 tokens, D = 4 channels, T = 3, C = 8.
S, D, T, C = 6, 4, 3, 8


def _block(block_class=ParallelBlock, **kwargs) -> ParallelBlock | SerialBlock:
    return block_class(S, D, T, C, rngs=nnx.Rngs(0), **kwargs)


def _x(seed: int = 1, batch: int = 3) -> jax.Array:
    return random_draws.normal(jax.random.key(seed), (batch, S, D)) * 2.0 + 0.5


def _ln(x: np.ndarray) -> np.ndarray:
    """Reference symmetric layernorm: statistics over the whole [S, D] matrix, eps 1e-6."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6)


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


# --- Parameter counts (official definitions: timm MlpMixer with vMlp / sMlp / aMlp MLPs) ---------

# Exact counts with the 1000-class head.
PARAMS_1000 = {
    "vanillamixer_s16_224": 21_699_048,
    "vanillamixer_s32_224": 19_868_136,
    "vanillamixer_b16_224": 67_015_912,
    "vanillamixer_b32_224": 62_011_624,
    "vanillamixer_l16_224": 227_225_576,
    "vanillamixer_l32_224": 211_521_512,
    "paramixer_s16_224": 20_093_416,
    "paramixer_s32_224": 19_466_728,
    "paramixer_b16_224": 63_403_240,
    "paramixer_b32_224": 61_108_456,
    "paramixer_l16_224": 217_591_784,
    "paramixer_l32_224": 209_113_064,
    "symmixer_s16_224": 11_303_400,
    "symmixer_s32_224": 10_977_768,
    "symmixer_b16_224": 34_188_520,
    "symmixer_b32_224": 32_571_112,
    "symmixer_l16_224": 114_520_040,
    "symmixer_l32_224": 107_847_656,
}
for _name in list(PARAMS_1000):  # AsymMixer has paramixer's weights: W_1 = fc1, W_2 = fc2
    if _name.startswith("paramixer"):
        PARAMS_1000["a" + _name.replace("para", "sym")] = PARAMS_1000[_name]


def closed_form_count(name: str, num_classes: int, img_size: int = 224) -> int:
    """Count by arithmetic from the official model code: PatchEmbed conv (with bias); per block
    LayerNorm((S, D)) with elementwise scale and bias (2 S D each; two in the serial block, one in
    the parallel one); bias-free MLPs: vMlp / aMlp 2 N K weights, sMlp N K; final LayerNorm(D);
    Linear head."""
    kind, variant = name.split("_")[:2]
    num_blocks, dim = {"s": (8, 512), "b": (12, 768), "l": (24, 1024)}[variant[0]]
    patch = int(variant[1:])
    s, t, c = (img_size // patch) ** 2, dim // 2, 4 * dim
    norms = (2 if kind == "vanillamixer" else 1) * 2 * s * dim
    mlps = (1 if kind == "symmixer" else 2) * (s * t + dim * c)
    stem = patch * patch * 3 * dim + dim
    return stem + num_blocks * (norms + mlps) + 2 * dim + dim * num_classes + num_classes


def test_registry_names_are_the_official_ones():
    grid = [
        f"{kind}_{size}{patch}_224"
        for kind, size, patch in itertools.product(
            ("vanillamixer", "paramixer", "symmixer", "asymmixer"), "sbl", (16, 32)
        )
    ]
    repeats = [
        f"{k}_s16_224_ni{n}" for k in ("vanillamixer", "paramixer", "symmixer") for n in "234"
    ]
    lambdas = ["l00", "l01", "l02", "l03", "l035", "l04", "l05", "l06", "l10"]
    asym = [f"asymmixer_s16_224_{suffix}" for suffix in lambdas]
    assert sorted(registry.PARAMIXER_NAMES) == sorted(grid + repeats + asym)
    assert not set(registry.PARAMIXER_NAMES) & set(registry.VARIANT_NAMES)
    assert registry.model_config("asymmixer_s16_224_l035").asym_penalty == 5e-4
    assert registry.model_config("symmixer_s16_224_ni3").repeats == 3


@pytest.mark.parametrize("name", sorted(PARAMS_1000))
def test_param_count(name):
    assert closed_form_count(name, 1000) == PARAMS_1000[name]
    assert registry.param_count(name) == PARAMS_1000[name]


def test_param_count_cifar10_and_repeats_share_weights():
    assert registry.param_count("paramixer_s16_224", num_classes=10) == closed_form_count(
        "paramixer_s16_224", 10
    )
    for kind in ("vanillamixer", "paramixer", "symmixer"):
        assert registry.param_count(f"{kind}_s16_224_ni4") == PARAMS_1000[f"{kind}_s16_224"]


def test_model_config_and_class():
    for name in registry.PARAMIXER_NAMES:
        assert type(registry.model_config(name)) is ParaMixerConfig
        assert registry.model_class(name) is ParaMixer
    assert registry.model_class("imixer_s16").__name__ == "Mixer"
    with pytest.raises(ValueError, match="hidden_ratio is not a ParaMixerConfig field"):
        registry.model_config("paramixer_s16_224", hidden_ratio=2.0)
    with pytest.raises(ValueError, match="unknown model 'paramixer_x16_224'"):
        registry.create_model("paramixer_x16_224", rngs=nnx.Rngs(0))


# --- Blocks ------------------------------------------------------------------------------------


def test_token_matrix_norm_normalises_over_tokens_and_channels():
    block = _block()
    rng = np.random.default_rng(0)
    scale, bias = rng.normal(size=(S, D)), rng.normal(size=(S, D))
    block.norm.scale[...] = jnp.asarray(scale, jnp.float32)
    block.norm.bias[...] = jnp.asarray(bias, jnp.float32)
    x = np.asarray(_x())
    # float32 mean/variance over 24 elements: relative error ~1e-6; 1e-5 leaves margin.
    np.testing.assert_allclose(block.norm(x), scale * _ln(x) + bias, rtol=1e-5, atol=1e-5)


def _param_paths(module: nnx.Module) -> set[tuple]:
    return {path for path, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def _kernels(mlp: paramixer.VanillaMLP) -> tuple[jax.Array, jax.Array]:
    return mlp.fc1.kernel[...], mlp.fc2.kernel[...]


def test_parallel_and_serial_block_structure():
    """Parallel: both MLPs read the same LN(X); serial: the channel MLP reads the token-updated X
    through its own norm. Reference by explicit contractions of the kernels."""
    x = _x()
    par, ser = _block(), _block(SerialBlock)
    (t1, t2), (c1, c2) = _kernels(par.mlp_tokens), _kernels(par.mlp_channels)

    def token(g, t1, t2):  # contracts the token axis, shared by channels
        return jnp.einsum("bkd,ks->bsd", _gelu(jnp.einsum("bsd,sk->bkd", g, t1)), t2)

    def channel(g, c1, c2):
        return _gelu(g @ c1) @ c2

    g = jnp.asarray(_ln(np.asarray(x)))
    expected_par = x + token(g, t1, t2) + channel(g, c1, c2)
    # float32 sums of <= 32 terms of size O(1): differences ~1e-6; 1e-5 leaves margin.
    np.testing.assert_allclose(par(x), expected_par, rtol=1e-5, atol=1e-5)

    (t1, t2), (c1, c2) = _kernels(ser.mlp_tokens), _kernels(ser.mlp_channels)
    x1 = x + token(jnp.asarray(_ln(np.asarray(x))), t1, t2)
    expected_ser = x1 + channel(jnp.asarray(_ln(np.asarray(x1))), c1, c2)
    np.testing.assert_allclose(ser(x), expected_ser, rtol=1e-5, atol=1e-5)
    norms = {(f"norm{i}", p) for i in (1, 2) for p in ("scale", "bias")}
    assert _param_paths(ser) - _param_paths(par) == norms


@pytest.mark.parametrize("block_class", [ParallelBlock, SerialBlock])
def test_repeats_apply_the_block_again_with_the_same_weights(block_class):
    once, thrice = _block(block_class), _block(block_class, repeats=3)  # same Rngs: same weights
    x = _x()
    expected = once.update_once(once.update_once(once.update_once(x)))
    np.testing.assert_array_equal(thrice(x), expected)


def test_symmetric_and_asymmetric_mlps():
    sym, asym = _block(mlp="symmetric"), _block(mlp="asymmetric")
    x = _x()
    g = jnp.asarray(_ln(np.asarray(x)))
    _, channel = paramixer.drives(sym.network(), x)
    w = sym.mlp_channels.fc1.kernel[...]
    np.testing.assert_allclose(channel, _gelu(g @ w) @ w.T, rtol=1e-5, atol=1e-5)
    _, channel = paramixer.drives(asym.network(), x)
    w1, w2 = asym.mlp_channels.fc1.kernel[...], asym.mlp_channels.fc2.kernel[...]
    h = _gelu(g @ w1)
    np.testing.assert_allclose(channel, h @ w1.T + h @ w2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("mlp", "kinds"),
    [
        ("vanilla", {"tokens": (Dense, False), "channels": (Dense, False)}),
        ("symmetric", {"tokens": (Dense, True), "channels": (Dense, True)}),
        (
            "asymmetric",
            {
                "tokens": (Dense, True),
                "tokens_w2": (Directed, False),
                "channels": (Dense, True),
                "channels_w2": (Directed, False),
            },
        ),
    ],
)
def test_block_is_a_three_layer_hopfield_network(mlp, kinds):
    """Visible S x D layer (LayerNorm over the whole matrix), token hidden T x D (stored [D, T]),
    channel hidden
    S x C; fc1 is the synapse kernel, fc2 the untied feedback (vanilla) or the one-way W_2."""
    block = _block(mlp=mlp)
    net = block.network()
    assert {n: layer.shape for n, layer in net.layers.items()} == {
        "visible": (S, D),
        "tokens": (D, T),
        "channels": (S, C),
    }
    assert net.layers["visible"].lagrangian.axis == (-2, -1)
    assert {n: (type(syn), syn.tied) for n, syn in net.synapses.items()} == kinds
    assert net.synapses["tokens"].weight is block.mlp_tokens.fc1.kernel[...]
    assert net.synapses["channels"].spec == "sd,dc->sc"
    serial = _block(SerialBlock, mlp=mlp).networks()
    assert [tuple(n.layers) for n in serial] == [("visible", "tokens"), ("visible", "channels")]


def _asym_with_zero_w2_and_sym(**kwargs):
    tiny = {**TINY, "num_blocks": 1}
    sym = ParaMixer(ParaMixerConfig(**tiny, mlp="symmetric", **kwargs), rngs=nnx.Rngs(0))
    asym = ParaMixer(ParaMixerConfig(**tiny, mlp="asymmetric", **kwargs), rngs=nnx.Rngs(1))
    params = nnx.state(sym, nnx.Param)
    for block in asym.blocks:
        for mlp in (block.mlp_tokens, block.mlp_channels):
            mlp.fc2.kernel[...] = jnp.zeros_like(mlp.fc2.kernel[...])
    nnx.update(asym, params)  # every symmetric parameter; W_2 stays zero
    return sym, asym


def test_asymmetric_with_zero_w2_equals_symmetric_exactly():
    sym, asym = _asym_with_zero_w2_and_sym(scalar_scale=True)
    sym.eval(), asym.eval()
    images = random_draws.uniform(jax.random.key(2), (2, 32, 32, 3), minval=-1, maxval=1)
    np.testing.assert_array_equal(asym(images), sym(images))  # h W_1^T + h 0: exact in float
    x = sym.embed(images)
    np.testing.assert_array_equal(
        reduced_energy(asym.blocks[0], x), reduced_energy(sym.blocks[0], x)
    )
    assert float(asym.penalty()) == 0.0


# --- Energy ------------------------------------------------------------------------------------


def _energy_block(activation: str, **kwargs) -> ParallelBlock:
    block = _block(mlp="symmetric", activation=activation, scalar_scale=True, **kwargs)
    block.norm.bias[...] = random_draws.normal(jax.random.key(3), (S, D)) * 0.1
    return block


@pytest.mark.parametrize("mlp", ["symmetric", "asymmetric"])
def test_reduced_energy_is_the_closed_form(mlp):
    """E~(X) = -n gamma eps / sqrt(Var X + eps) - L_h(W_t^T LN X) - L_h(LN X W_c) (asymmetric:
    the symmetric part), with L_h the GELU Lagrangian."""
    block = _block(mlp=mlp, scalar_scale=True)
    block.norm.bias[...] = random_draws.normal(jax.random.key(3), (S, D)) * 0.1
    x = _x()
    g = block.norm(x)
    w_t, w_c = block.mlp_tokens.fc1.kernel[...], block.mlp_channels.fc1.kernel[...]
    hidden = paramixer.lagrangians.GELU()
    expected = [
        -S * D * 1e-6 / np.sqrt(np.var(np.asarray(x[b])) + 1e-6)
        - hidden(w_t.T @ g[b])
        - hidden(g[b] @ w_c)
        for b in range(x.shape[0])
    ]
    # The network sums <x_h, g_h> - L_h(x_h) - <g_h, x_h> (terms of size ~10) where the closed
    # form has -L_h alone: float32 round-off ~1e-5 relative to those terms; 1e-4 leaves margin.
    np.testing.assert_allclose(reduced_energy(block, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", ["relu", "softplus", "gelu"])
def test_energy_gradient_is_the_derivation(activation):
    """dE~/dX = M_v (X - f(X)): M_v = Hessian of the visible Lagrangian (jvp of LN), f the drive.
    Holds for any hidden Lagrangian; it is what makes both updates descend for a convex one."""
    block = _energy_block(activation)
    x, v = _x(), random_draws.normal(jax.random.key(4), (3, S, D))
    _, d_energy = jax.jvp(lambda x: reduced_energy(block, x), (x,), (v,))
    _, m_v = jax.jvp(block.norm, (x,), (v,))  # M_v v (M_v symmetric)
    expected = jnp.sum((x - block.drive(x)) * m_v, axis=(1, 2))
    # Both sides are float32 sums of 24 products of O(1-10) terms; E~ is O(10), so 1e-4
    # relative to the largest term bounds the rounding.
    scale = jnp.sum(jnp.abs((x - block.drive(x)) * m_v), axis=(1, 2))
    np.testing.assert_allclose(d_energy, expected, atol=float(1e-4 * scale.max()))


@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_energy_descends_under_the_euler_update(activation):
    """Tied weights, convex hidden Lagrangian, small step: E~ never increases."""
    block = _energy_block(activation, update_rule="euler", step_size=0.1)
    x = _x(batch=4)
    energies = [reduced_energy(block, x)]
    for _ in range(30):
        x = block(x)
        energies.append(reduced_energy(block, x))
    energies = np.stack(energies)  # [steps + 1, B]
    steps = np.diff(energies, axis=0)
    # float32 rounding of E~ (|E~| <= ~50, 24 + 24 terms): < 1e-4; the test's slack.
    assert steps.max() <= 1e-4, steps.max()
    assert (energies[-1] < energies[0] - 0.1).all()  # and it does move


def test_residual_drift_descends_up_to_eps():
    """Official residual update (no -X leak): dE~/dt = X^T M_v f - f^T M_v f with
    M_v X = gamma eps X_c / (Var + eps)^1.5, so dE~/dt <= gamma eps |X_c . f| / (Var + eps)^1.5."""
    block = _energy_block("relu")
    x = _x()
    f = block.drive(x)
    _, d_energy = jax.jvp(lambda x: reduced_energy(block, x), (x,), (f,))
    xc = x - x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2))
    bound = 1e-6 * jnp.abs(jnp.sum(xc * f, axis=(1, 2))) / (var + 1e-6) ** 1.5
    _, m_f = jax.jvp(block.norm, (x,), (f,))
    rounding = 1e-4 * jnp.sum(jnp.abs(f * m_f), axis=(1, 2))  # as in the test above
    assert (d_energy <= bound + rounding).all()
    assert (d_energy < 0).all()


def test_energy_errors_are_one_line():
    x = _x()
    with pytest.raises(ValueError, match="parallel block with mlp='symmetric'"):
        reduced_energy(_block(), x)
    with pytest.raises(ValueError, match="parallel block"):
        reduced_energy(_block(SerialBlock, mlp="symmetric", scalar_scale=True), x)
    with pytest.raises(ValueError, match="scalar_scale=True"):
        reduced_energy(_block(mlp="symmetric"), x)


# --- Model -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "mlp", "dtype"),
    [
        ("serial", "vanilla", None),
        ("parallel", "vanilla", None),
        ("parallel", "symmetric", None),
        ("parallel", "asymmetric", "bfloat16"),
    ],
)
def test_forward_shapes_and_training_mode(block, mlp, dtype):
    config = ParaMixerConfig(
        **TINY, block=block, mlp=mlp, repeats=2, drop_path_rate=0.5, dtype=dtype
    )
    model = ParaMixer(config, rngs=nnx.Rngs(0))
    images = random_draws.uniform(jax.random.key(2), (3, 32, 32, 3), minval=-1, maxval=1)
    train = model(images, rngs=nnx.Rngs(dropout=1))
    model.eval()
    logits = model(images)
    assert logits.shape == train.shape == (3, 10) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()


def test_penalty_is_lambda_times_squared_w2():
    model = ParaMixer(
        ParaMixerConfig(**TINY, mlp="asymmetric", asym_penalty=0.01), rngs=nnx.Rngs(0)
    )
    expected = 0.01 * sum(
        np.sum(np.square(mlp.fc2.kernel[...]))
        for block in model.blocks
        for mlp in (block.mlp_tokens, block.mlp_channels)
    )
    np.testing.assert_allclose(model.penalty(), expected, rtol=1e-6)
    grads = nnx.grad(lambda m: m.penalty())(model)
    nonzero = {
        path for path, g in nnx.to_flat_state(grads) if np.any(np.asarray(g.get_value()) != 0)
    }
    assert nonzero == {
        ("blocks", i, mlp, "fc2", "kernel")
        for i in (0, 1)
        for mlp in ("mlp_tokens", "mlp_channels")
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"block": "diagonal"}, "block must be one of serial, parallel"),
        ({"mlp": "tied"}, "mlp must be one of vanilla, symmetric, asymmetric"),
        ({"repeats": 0}, "repeats must be a positive integer"),
        ({"asym_penalty": 0.1}, "asym_penalty penalises the symmetry-breaking W_2"),
        ({"activation": "tanh"}, "activation must be one of"),
        ({"img_size": 30}, r"img_size \(30\) must be divisible by patch_size \(8\)"),
    ],
)
def test_invalid_arguments_fail_in_one_line(override, message):
    with pytest.raises(ValueError, match=message) as info:
        ParaMixerConfig(**{**TINY, **override})
    assert "\n" not in str(info.value)


def test_module_names_follow_the_official_code():
    paths = _param_paths(ParaMixer(ParaMixerConfig(**TINY, block="serial"), rngs=nnx.Rngs(0)))
    assert ("blocks", 0, "mlp_tokens", "fc1", "kernel") in paths
    assert ("blocks", 0, "mlp_channels", "fc2", "kernel") in paths
    assert not any(p[-1] == "bias" and "mlp_" in str(p) for p in paths)  # bias-free MLPs


# --- Config and sweeps -------------------------------------------------------------------------


def test_config_is_the_official_recipe():
    from configs import paramixer as paramixer_config

    c = paramixer_config.get_config("asymmixer_s16_224_l01")
    expected = registry.model_config("asymmixer_s16_224_l01", num_classes=10, img_size=224)
    assert {**c.model.to_dict(), "dtype": None} == expected.to_dict()
    assert c.model.dtype == "bfloat16" and c.model.asym_penalty == 0.1
    assert c.batch_size == 96 * 4
    assert c.optimizer.lr == pytest.approx(5e-4 * 384 / 512)  # timm --lr-base-scale linear
    schedule = c.schedule.to_dict()
    assert schedule == dict(
        unit="epochs", length=300.0, warmup=20.0, cooldown=0.0, init_lr=1e-6, min_lr=0.0
    )
    assert c.data.name == "cifar10" and c.model.drop_path_rate == 0.1
    base = paramixer_config.config_lib.base_config("imixer_s16")
    assert c.data.augment.to_dict() == base.data.augment.to_dict()  # the iMixer augmentation
    with pytest.raises(ValueError, match="configs/paramixer.py needs a variant"):
        paramixer_config.get_config("imixer_s16")


def test_sweeps_name_registered_variants():
    from experiments.catalog import PARAMIXER_SWEEPS

    counts = {name: len(runs) for name, runs in PARAMIXER_SWEEPS.items()}
    assert counts == {"paramixer": 4, "paramixer_repeats": 12, "symmetry_breaking": 9}
    for runs in PARAMIXER_SWEEPS.values():
        assert len({r.name for r in runs}) == len(runs)
        for run in runs:
            file, variant = run.config.split(":")
            assert file == "configs/paramixer.py" and variant in registry.PARAMIXER_NAMES
    penalties = [
        registry.model_config(r.config.split(":")[1]).asym_penalty
        for r in PARAMIXER_SWEEPS["symmetry_breaking"]
    ]
    assert penalties == sorted(penalties) and penalties[0] == 0.0 and penalties[-1] == 1.0


def test_parallel_block_computes_in_float64_end_to_end():
    """With float64 parameters and inputs nothing is cast to float32: the block equals a float64
    reference to float64 round-off, where float32 would miss by ~1e-7."""
    with jax.enable_x64(True):
        block = _block()
        state = nnx.state(block)
        nnx.update(block, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state))
        x = jnp.asarray(np.asarray(_x()), jnp.float64)
        y = block(x)
        assert y.dtype == jnp.float64
        (t1, t2), (c1, c2) = _kernels(block.mlp_tokens), _kernels(block.mlp_channels)
        g = _ln(np.asarray(x))
        hidden_t = _gelu(jnp.einsum("bsd,sk->bkd", g, t1))
        expected = x + jnp.einsum("bkd,ks->bsd", hidden_t, t2) + _gelu(g @ c1) @ c2
        # float64 sums of <= 32 terms of size O(1): ~1e-15; 1e-12 is far below float32's 1e-7.
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
