"""Weights in and out: Google's vit_jax / big_vision Mixer ``.npz`` files (``vit_jax``) and the
official PyTorch iMixer checkpoints (``torch_imixer``). Knows models, not training configs."""
