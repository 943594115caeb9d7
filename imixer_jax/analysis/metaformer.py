"""The Energy MetaFormer (Karakida, Ota & Taki 2024, Section 4.2, Figures 2b and 2c), on the
embedded 8x8 digits.

The official demo (paramixer's ``demo/demo_energymetaformer.ipynb``, built on barebones hamux):
a visible layer of 784 neurons with a LayerNorm Lagrangian between two hidden layers of 900 ReLU
neurons, each coupled to it by a dense synapse (initial weights 0.02 N(0, 1)), trained as a
denoising associative memory on MNIST: an image (pixels / 255, then scaled to unit L2 norm) plus
0.3 N(0, 1) noise is the visible layer's initial state, the hidden layers start at zero, every
layer descends the energy for 10 explicit Euler steps of 0.1 (x <- x - 0.1 dE/dg = x + 0.1 (I -
x)), and the loss is the mean squared difference between the visible activation LN(x) at the end
and the clean image, back-propagated through the 10 steps; Adam lr 1e-4, batch 512, 100 epochs,
LayerNorm gain 1 and bias 0 fixed, eps 1e-5. Figures: the receptive fields (the columns of both
synapses as images) and the energy descending from random states (every layer 10 N(0, 1), 28 steps
of 0.5).

Here: the same recipe on the 1,437 training digits of the embedded dataset, 8x8 = 64 visible
neurons and 81 = 9 x 9 hidden neurons per hidden layer (900/784 ~ 1.15 hidden per visible neuron
there, 81/64 ~ 1.27 here: the nearest square grid above), the network built on the Hopfield core
(``hopfield.Network``) and the descent the core's (``Network.integrate`` in training,
``Network.descend`` for the energies).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from imixer_jax.data import digits as digits_lib
from imixer_jax.hopfield import Dense, Layer, Network, lagrangians

Array = jax.Array

VISIBLE, HIDDEN_S, HIDDEN_C = "visible", "hidden_s", "hidden_c"  # official: input, xs, xc
SIDE = 8  # the digits are 8 x 8


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The official recipe, sizes scaled to the 8x8 digits; ``epochs`` over the 1,437 training
    digits (3 batches each, the last one of 413) instead of MNIST's 60,000."""

    hidden: int = 81
    init_scale: float = 0.02
    eps: float = 1e-5
    noise: float = 0.3
    num_steps: int = 10
    step_size: float = 0.1
    lr: float = 1e-4
    batch_size: int = 512
    epochs: int = 100
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Result:
    """``losses [epochs, batches per epoch]``, the trained ``params`` and their ``network``."""

    losses: np.ndarray
    params: dict[str, Array]
    network: Network
    recipe: Recipe


def network(params: dict[str, Array], *, eps: float = 1e-5) -> Network:
    """Visible layer ``[V]`` (LayerNorm, gain 1, bias 0) between two ReLU hidden layers ``[H]``:
    ``xi_sv [H, V]`` couples ``hidden_s`` to it, ``xi_vc [V, H]`` couples it to ``hidden_c``."""
    num_hidden, num_visible = params["xi_sv"].shape
    return Network(
        layers={
            HIDDEN_S: Layer(lagrangians.ReLU(), (num_hidden,)),
            VISIBLE: Layer(lagrangians.LayerNorm(eps=eps), (num_visible,)),
            HIDDEN_C: Layer(lagrangians.ReLU(), (num_hidden,)),
        },
        synapses={
            "xi_sv": Dense(params["xi_sv"], pre=HIDDEN_S, post=VISIBLE),
            "xi_vc": Dense(params["xi_vc"], pre=VISIBLE, post=HIDDEN_C),
        },
    )


def init_params(key: Array, num_visible: int, num_hidden: int, scale: float) -> dict[str, Array]:
    """Both kernels ``scale * N(0, 1)``, as the official ``DenseSynapse``."""
    k_sv, k_vc = jax.random.split(key)
    return {
        "xi_sv": scale * jax.random.normal(k_sv, (num_hidden, num_visible)),
        "xi_vc": scale * jax.random.normal(k_vc, (num_visible, num_hidden)),
    }


def digits(split: str = "train") -> np.ndarray:
    """The embedded digits of ``split`` as unit vectors ``[N, 64]`` float32: pixels / 255, then
    divided by the image's L2 norm (the official transform)."""
    images, _ = digits_lib.arrays(split)
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True))


def denoise(net: Network, noisy: Array, *, num_steps: int, step_size: float) -> Array:
    """The visible activation LN(x) ``[B, V]`` after ``num_steps`` Euler steps of every layer from
    the visible state ``noisy [B, V]`` and hidden states at zero."""
    batch = noisy.shape[:1]
    xs = {n: jnp.zeros(batch + layer.shape) for n, layer in net.layers.items()}
    final = net.integrate({**xs, VISIBLE: noisy}, dt=step_size, num_steps=num_steps)
    return net.layers[VISIBLE].activation(final[VISIBLE])


def loss_fn(params, clean: Array, key: Array, recipe: Recipe) -> Array:
    """Mean squared difference between LN(x) after the descent from ``clean [B, V]`` plus noise
    and ``clean`` (the official loss)."""
    noisy = clean + recipe.noise * jax.random.normal(key, clean.shape)
    out = denoise(
        network(params, eps=recipe.eps),
        noisy,
        num_steps=recipe.num_steps,
        step_size=recipe.step_size,
    )
    return jnp.mean((out - clean) ** 2)


def train(recipe: Recipe = Recipe(), images: np.ndarray | None = None) -> Result:
    """Trains the Energy MetaFormer on ``images [N, V]`` (default: the training digits) by
    back-propagation through the descent; one compiled program runs every epoch."""
    images = jnp.asarray(digits("train") if images is None else images)
    key = jax.random.key(recipe.seed)
    params = init_params(
        jax.random.fold_in(key, 0), images.shape[1], recipe.hidden, recipe.init_scale
    )
    optimizer = optax.adam(recipe.lr)
    grad_fn = jax.value_and_grad(partial(loss_fn, recipe=recipe))

    num_full, rest = divmod(len(images), recipe.batch_size)

    def update(carry, batch_and_key):
        params, opt_state = carry
        loss, grads = grad_fn(params, *batch_and_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def epoch(carry, epoch_key):
        """Full batches under one scan, then the remainder (official: the last, smaller batch)."""
        order = jax.random.permutation(epoch_key, len(images))
        keys = jax.random.split(jax.random.fold_in(epoch_key, 1), num_full + 1)
        full = images[order[: num_full * recipe.batch_size]].reshape(
            num_full, recipe.batch_size, -1
        )
        carry, losses = jax.lax.scan(update, carry, (full, keys[:num_full]))
        if rest:
            carry, loss = update(carry, (images[order[num_full * recipe.batch_size :]], keys[-1]))
            losses = jnp.append(losses, loss)
        return carry, losses

    @jax.jit
    def run(params):
        keys = jax.random.split(jax.random.fold_in(key, 1), recipe.epochs)
        return jax.lax.scan(epoch, (params, optimizer.init(params)), keys)

    (params, _), losses = run(params)
    return Result(np.asarray(losses), params, network(params, eps=recipe.eps), recipe)


def energy_descent(
    net: Network,
    key: Array,
    *,
    num_states: int = 8,
    scale: float = 10.0,
    num_steps: int = 28,
    step_size: float = 0.5,
) -> Array:
    """Energies ``[num_steps + 1, num_states]`` of ``net`` along the descent of every layer
    from random states (each ``scale * N(0, 1)``; the official figure: 10, 28 steps of 0.5)."""
    keys = jax.random.split(key, len(net.layers))
    xs = {
        n: scale * jax.random.normal(k, (num_states, *layer.shape))
        for k, (n, layer) in zip(keys, net.layers.items())
    }
    energies, _, _ = net.descend(xs, dt=step_size, num_steps=num_steps)
    return energies


def receptive_fields(params: dict[str, Array]) -> dict[str, np.ndarray]:
    """The synapses' weights per hidden neuron as images: ``{'xi_sv': [H, 8, 8], 'xi_vc': [H, 8,
    8]}`` (rows of xi_sv, columns of xi_vc)."""
    return {
        "xi_sv": np.asarray(params["xi_sv"]).reshape(-1, SIDE, SIDE),
        "xi_vc": np.asarray(params["xi_vc"]).T.reshape(-1, SIDE, SIDE),
    }
