"""Weights in and out, knowing models and not training configs.

* ``vit_jax``: Google's vit_jax / big_vision Mixer ``.npz`` files -> ``mixer_*``;
* ``torch_imixer``, ``torch_paramixer``: the official iMixer and paramixer PyTorch checkpoints,
  both ways (``python -m imixer_jax.weights.torch_imixer``);
* ``ours``: our ``.npz`` with the model's name and settings;
* ``formats``: which of these a file is (by content), ``check`` from headers only, and the
  trainer's ``init_from``;
* ``mapping``: placing flat arrays into a model's state, every name and shape checked.
"""
