"""Hopfield networks as graphs: Lagrangians, synapses, energy, dynamics, the adiabatic reduction
onto any visible layers, and the fixed-point solver behind it."""

from imixer_jax.hopfield import lagrangians, reduction, solver, synapses
from imixer_jax.hopfield.conv import Conv
from imixer_jax.hopfield.graph import Layer, Network
from imixer_jax.hopfield.lagrangians import Lagrangian, from_fn
from imixer_jax.hopfield.network import HierarchicalNetwork
from imixer_jax.hopfield.pytree import dataclass
from imixer_jax.hopfield.solver import (
    Anderson,
    Implicit,
    Picard,
    Solution,
    Unrolled,
    fixed_point,
)
from imixer_jax.hopfield.synapses import Dense, Directed, EnergySynapse

__all__ = [
    "Anderson",
    "Conv",
    "Dense",
    "Directed",
    "EnergySynapse",
    "HierarchicalNetwork",
    "Implicit",
    "Lagrangian",
    "Layer",
    "Network",
    "Picard",
    "Solution",
    "Unrolled",
    "dataclass",
    "fixed_point",
    "from_fn",
    "lagrangians",
    "reduction",
    "solver",
    "synapses",
]
