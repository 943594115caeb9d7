"""Hierarchical Hopfield networks: Lagrangians, energy, dynamics and the adiabatic reduction."""

from imixer_jax.hopfield import lagrangians
from imixer_jax.hopfield.network import HierarchicalNetwork, Layer, Synapse
from imixer_jax.hopfield.solver import Solution, fixed_point

__all__ = ["HierarchicalNetwork", "Layer", "Solution", "Synapse", "fixed_point", "lagrangians"]
