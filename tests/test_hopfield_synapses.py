"""Linear synapses of the Hopfield graph: the dot_general contraction behind ``Dense`` specs, the
one-way ``Directed`` synapse, mixed precision (``Layer.dtype``, ``Dense.dtype``), and convolution
synapses (``Conv``): closed-form currents, energy descent, composition with ``Dense``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imixer_jax.hopfield import Conv, Dense, Directed, Layer, Network, lagrangians, reduction
from imixer_jax.hopfield.synapses import contract
from tests import random_draws

F32_EPS = float(jnp.finfo(jnp.float32).eps)


def _normal(seed, shape, scale=1.0):
    return scale * random_draws.normal(jax.random.key(seed), shape)


# --- Dense: contraction, Directed, mixed precision ----------------------------------------------


@pytest.mark.parametrize(
    ("x_axes", "w_axes", "out_axes"),
    [
        ("i", "io", "o"),  # the chain's default
        ("sd", "st", "td"),  # token synapse: contracts S, transposed result
        ("sd", "dc", "sc"),  # channel synapse
        ("td", "st", "sd"),  # tied token feedback: the kernel's second axis contracted
        ("hwc", "hwck", "k"),  # several contracted axes
        ("sd", "sd", "sd"),  # not a contraction (elementwise): jnp.einsum
    ],
)
def test_contract_is_the_einsum(x_axes, w_axes, out_axes):
    sizes = dict(zip("iosdtchwk", (3, 4, 5, 6, 7, 8, 2, 3, 4)))
    x = _normal(0, (2, *(sizes[a] for a in x_axes)))
    w = _normal(1, tuple(sizes[a] for a in w_axes))
    got = contract(x, x_axes, w, w_axes, out_axes)
    want = jnp.einsum(f"...{x_axes},{w_axes}->...{out_axes}", x, w)
    # float32 sums of <= 24 products of O(1) terms in another order: ~1e-6.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _star(*, w2: bool):
    """Visible [S, D] with a tied token synapse and optionally a one-way W_2 back from it."""
    layers = {
        "v": Layer(lagrangians.LayerNorm(axis=None), (6, 4)),
        "h": Layer(lagrangians.get("relu"), (3, 4)),
    }
    synapses = {"w1": Dense(_normal(2, (6, 3), 0.5), pre="v", post="h", spec="sd,st->td")}
    if w2:
        synapses["w2"] = Directed(_normal(3, (3, 6), 0.5), pre="h", post="v", spec="td,ts->sd")
    return Network(layers, synapses)


def test_directed_synapse_drives_only_its_post_layer():
    tied, both = _star(w2=False), _star(w2=True)
    xs = {"v": _normal(4, (2, 6, 4)), "h": _normal(5, (2, 3, 4))}
    c_tied, c_both = tied.currents(xs), both.currents(xs)
    g_h = jax.nn.relu(xs["h"])
    np.testing.assert_array_equal(c_both["h"], c_tied["h"])  # nothing flows back into h
    w2 = both.synapses["w2"].weight
    expected = c_tied["v"] + jnp.einsum("btd,ts->bsd", g_h, w2)
    np.testing.assert_allclose(c_both["v"], expected, rtol=1e-5, atol=1e-5)
    assert tied.tied and not both.tied
    with pytest.raises(ValueError, match=r"only for tied .*\['w2'\] are not") as info:
        both.energy(xs)
    assert "\n" not in str(info.value)
    fast, solution = reduction.solve_fast(both, {"v": xs["v"]})  # one-way: still closed form
    assert solution is None
    np.testing.assert_array_equal(fast["h"], reduction.solve_fast(tied, {"v": xs["v"]})[0]["h"])


def test_directed_synapse_rejects_a_feedback():
    with pytest.raises(ValueError, match="a Directed synapse has no feedback") as info:
        Network(
            {"a": Layer(lagrangians.get("relu"), (3,)), "b": Layer(lagrangians.get("relu"), (2,))},
            {"s": Directed(jnp.ones((3, 2)), feedback=jnp.ones((2, 3)), pre="a", post="b")},
        )
    assert "\n" not in str(info.value)


def test_mixed_precision_layer_and_synapse():
    """A float32 LayerNorm handing bfloat16 activations to a bfloat16 synapse whose float32
    kernel is cast at use: the currents are bfloat16, the gradient of the kernel float32."""
    net = _star(w2=False)
    net = net.replace(
        layers={**net.layers, "v": net.layers["v"].replace(dtype=jnp.bfloat16)},
        synapses={"w1": net.synapses["w1"].replace(dtype=jnp.bfloat16)},
    )
    x = _normal(6, (2, 6, 4))
    assert net.activations({"v": x})["v"].dtype == jnp.bfloat16
    fast, _ = reduction.solve_fast(net, {"v": x})
    assert fast["h"].dtype == jnp.bfloat16
    reference, _ = reduction.solve_fast(_star(w2=False), {"v": x})
    # bfloat16 has an 8-bit mantissa: relative error ~2^-8 per rounding, a few roundings.
    np.testing.assert_allclose(fast["h"].astype(jnp.float32), reference["h"], rtol=0.05, atol=0.05)

    def loss(w):
        syn = net.synapses["w1"].replace(weight=w)
        return jnp.sum(syn.forward(net.activations({"v": x})["v"]).astype(jnp.float32))

    assert jax.grad(loss)(net.synapses["w1"].weight).dtype == jnp.float32


def test_layernorm_over_a_run_of_axes_is_the_flattened_layernorm_bit_for_bit():
    """LayerNorm over (S, D) reduces the merged axis: the same float32 rounding as a LayerNorm
    over the flattened matrix (the official 'symmetric layernorm'), values and gradients."""
    gamma, delta = _normal(7, (6, 4)), _normal(8, (6, 4))
    matrix = lagrangians.LayerNorm(gamma=gamma, delta=delta, axis=(-2, -1))
    flat = lagrangians.LayerNorm(gamma=gamma.reshape(-1), delta=delta.reshape(-1))
    x = _normal(9, (3, 6, 4), 2.0) + 0.5

    def both(x):
        return matrix.activation(x), flat.activation(x.reshape(3, -1)).reshape(x.shape)

    a, b = jax.jit(both)(x)
    np.testing.assert_array_equal(a, b)
    ga, gb = (jax.jit(jax.grad(lambda x, i=i: jnp.sum(jnp.sin(both(x)[i]))))(x) for i in (0, 1))
    np.testing.assert_array_equal(ga, gb)


# --- Convolution synapses -----------------------------------------------------------------------

CASES = {
    "same": dict(padding="SAME"),
    "valid_strided": dict(padding="VALID", strides=(2, 2)),
    "dilated": dict(padding=((1, 2), (0, 1)), dilation=(2, 1)),
}


def _conv(case: str, *, c_in=2, c_out=3, bias=True) -> Conv:
    kwargs = CASES[case]
    fb = 0.1 * jnp.arange(c_out, dtype=jnp.float32) if bias else None
    bb = -0.05 * jnp.ones((c_in,)) if bias else None
    kernel = _normal(10, (3, 3, c_in, c_out), 0.3)
    return Conv(kernel, forward_bias=fb, feedback_bias=bb, pre="img", post="map", **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_conv_currents_are_minus_the_energy_gradient(case):
    syn = _conv(case)
    pre_shape = (7, 6, 2)
    post_shape = syn.out_shape(pre_shape)
    g_pre, g_post = _normal(11, pre_shape), _normal(12, post_shape)
    d_pre, d_post = jax.grad(syn.energy, argnums=(0, 1))(g_pre, g_post)
    into_pre, into_post = syn.currents(g_pre, g_post)
    # Both sides are float32 sums of <= 18 products of O(1) terms: ~1e-6 absolute.
    np.testing.assert_allclose(into_pre, -d_pre, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(into_post, -d_post, rtol=1e-5, atol=1e-5)
    # Batched states (two batch axes) give the per-sample currents.
    batch = jnp.stack([jnp.stack([g_post, 2 * g_post])] * 2)
    np.testing.assert_allclose(
        syn.backward(batch, pre_shape)[1, 1], syn.backward(2 * g_post, pre_shape), atol=1e-5
    )


def _conv_network(*, with_dense: bool) -> Network:
    """A visible 8 x 8 x 2 image layer (LayerNorm over the whole image), a ReLU feature map by
    a 3 x 3 convolution and, optionally, a softplus layer of 5 units by a Dense synapse reading
    the whole image."""
    layers = {
        "img": Layer(lagrangians.LayerNorm(axis=None), (8, 8, 2)),
        "map": Layer(lagrangians.get("relu"), (8, 8, 3)),
    }
    synapses = {"conv": _conv("same")}
    if with_dense:
        layers["units"] = Layer(lagrangians.get("softplus"), (5,))
        w = _normal(13, (8, 8, 2, 5), 0.1)
        synapses["dense"] = Dense(w, pre="img", post="units", spec="hwc,hwck->k")
    return Network(layers, synapses)


@pytest.mark.parametrize("with_dense", [False, True])
def test_energy_descends_with_a_conv_hidden_layer(with_dense):
    net = _conv_network(with_dense=with_dense)
    xs = {n: _normal(14 + i, (2, *layer.shape)) for i, (n, layer) in enumerate(net.layers.items())}
    energies, _, _ = net.descend(xs, dt=0.05, num_steps=40)
    steps = np.diff(np.asarray(energies), axis=0)
    # Convex Lagrangians and a small step: E never increases beyond float32 round-off of
    # |E| <= ~100 (sums of ~500 terms): 1e-4 is the slack.
    assert steps.max() <= 1e-4, steps.max()
    assert (energies[-1] < energies[0] - 0.1).all()


def test_conv_and_dense_compose_in_one_graph():
    """Network currents equal -dE/dg through both synapses, and the reduction onto the image is
    closed form (both hidden layers read only the image)."""
    net = _conv_network(with_dense=True)
    xs = {n: _normal(20 + i, layer.shape) for i, (n, layer) in enumerate(net.layers.items())}
    gs = net.activations(xs)

    def synaptic_energy(gs):
        return sum(s.energy(*(gs[n] for n in s.layers)) for s in net.synapses.values())

    grads = jax.grad(synaptic_energy)(gs)
    currents = net.currents(xs)
    for name in net.layers:
        # float32 sums of <= 128 products of O(1) terms: ~1e-5 absolute.
        np.testing.assert_allclose(currents[name], -grads[name], rtol=1e-4, atol=1e-4)
    fast, solution = reduction.solve_fast(net, {"img": xs["img"]})
    assert solution is None
    np.testing.assert_allclose(fast["map"], net.synapses["conv"].forward(gs["img"]), atol=1e-6)


@pytest.mark.parametrize(
    ("synapse", "pre", "post", "match"),
    [
        (dict(), (8, 8, 3), (8, 8, 3), r"pre layer \(8, 8, 3\) must be \[\*spatial"),
        (dict(), (8, 8, 2), (8, 7, 3), r"maps \(8, 8, 2\) to \(8, 8, 3\)"),
        (dict(strides=(2,)), (8, 8, 2), (4, 4, 3), "one value per spatial axis"),
        (dict(forward_bias=jnp.ones(4)), (8, 8, 2), (8, 8, 3), "forward_bias of shape"),
    ],
)
def test_conv_shape_errors_are_one_line(synapse, pre, post, match):
    conv = _conv("same", bias=False).replace(**synapse)
    layers = {
        "img": Layer(lagrangians.get("relu"), pre),
        "map": Layer(lagrangians.get("relu"), post),
    }
    with pytest.raises(ValueError, match=match) as info:
        Network(layers, {"conv": conv})
    assert "\n" not in str(info.value)
