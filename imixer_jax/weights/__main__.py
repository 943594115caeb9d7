"""Convert official PyTorch checkpoints (iMixer, MLP-Mixer, the parallelized Mixer family) to our
``.npz`` and back (``imixer_jax.weights.torch_imixer``, which documents the mapping):

    python -m imixer_jax.weights --in checkpoint.pth.tar --out weights.npz [--ema] [--model NAME]
    python -m imixer_jax.weights --in weights.npz --out checkpoint.pth

``imixer_jax.weights.ours.load_into(model, "weights.npz")`` loads the result. PyTorch (the extra
``torch``) is needed only to read or write ``.pth`` files. A bad input ends it with one line
``error: <cause>; <fix>``.
"""

from __future__ import annotations

import sys

from absl import flags

from imixer_jax import cli

FLAGS = cli.flag_values()
_IN = flags.DEFINE_string("in", None, ".pth/.pt/.tar/.bin, or our .npz", flag_values=FLAGS)
_OUT = flags.DEFINE_string(
    "out", None, ".npz (from PyTorch) or .pth (from .npz)", flag_values=FLAGS
)
_EMA = flags.DEFINE_bool("ema", False, "Take timm's 'state_dict_ema'.", flag_values=FLAGS)
_MODEL = flags.DEFINE_string(
    "model",
    None,
    "Registered variant the checkpoint was trained as (n_iter, MLP kind); default: its 'arch'.",
    flag_values=FLAGS,
)
flags.mark_flags_as_required(["in", "out"], flag_values=FLAGS)


def main() -> None:
    from imixer_jax.weights import torch_imixer  # after cli.setup_process

    torch_imixer.convert(_IN.value, _OUT.value, ema=_EMA.value, model=_MODEL.value)
    print(f"wrote {_OUT.value}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, FLAGS)
