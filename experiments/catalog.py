"""Named sweeps, as data: ``SWEEPS[name]`` is the list of runs of sweep ``name``.

A run is one ``python -m imixer_jax.train`` command: a config file with its argument and
``--config.KEY=VALUE`` overrides; its workdir is ``<root>/<sweep>/<run name>``. ``group`` names what
the report aggregates over (seeds of one variant). ``NOTES[name]`` is what the report says about
the sweep's numbers.

| sweep | runs | what varies (everything else: ``configs/cifar10.py:imixer_s16``, paper recipe) |
|---|---|---|
| paper | 6 | model: mixer / imixer x S, B, L, patch 16, 224 px |
| n_iter | 5 | fixed-point iterations 0, 1, 2, 4, 8 |
| hidden_ratio | 3 | H / T = 1, 2, 4 |
| n_power | 4 | power-iteration steps per call 1, 2, 4, 8 |
| sn_coeff | 4 | spectral-norm coefficient c = 0.5, 0.7, 0.9, 1.0 |
| spectral_norm | 2 | soft spectral normalisation on / off |
| tied | 2 | untied (paper) / tied (pure Hopfield, the energy exists) |
| adjoint | 3 | 8 unrolled steps / 8 steps with implicit gradients / converged (tol 1e-4) implicit |
| cpu_study | 15 | digits (``configs/default.py``): mixer, imixer n_iter 0, 1, 2, 4; seeds 0, 1, 2 |

``PARAMIXER_SWEEPS`` (also in ``SWEEPS``; base ``configs/paramixer.py``, the official paramixer
CIFAR-10 recipe):

| sweep | runs | what varies |
|---|---|---|
| paramixer | 4 | S/16: vanilla (serial), parallelized, symmetric, asymmetric (lambda 0) Mixer |
| paramixer_repeats | 12 | vanilla, parallelized, symmetric S/16; 1-4 weight-tied block repeats |
| symmetry_breaking | 9 | AsymMixer-S/16, L2 penalty on W_2: lambda 0, 1e-6 ... 1e-1, 1 |
"""

from __future__ import annotations

import dataclasses
from typing import Any

from configs import paper


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run.

    Attributes:
      name: workdir name inside the sweep's directory.
      config: ``FILE[:ARG]`` as given to ``--config``.
      overrides: ``{'model.n_iter': 0, ...}``: each becomes ``--config.model.n_iter=0``.
      group: the variant this run belongs to (runs of one group differ only in the seed).
    """

    name: str
    config: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    group: str = ""

    def __post_init__(self):
        if not self.group:
            object.__setattr__(self, "group", self.name)


ABLATION_BASE = "configs/cifar10.py:imixer_s16"


def _ablation(key: str, values) -> list[Run]:
    """One run of ``ABLATION_BASE`` per value of ``key``, named ``<last key part>_<value>``."""
    label = key.rsplit(".", 1)[-1]
    return [Run(f"{label}_{v}", ABLATION_BASE, {key: v}) for v in values]


# Equal budget for every CPU-study run: the default config's schedule (30 epochs of 22 steps of
# batch 64 on the 1,437 training digits) with a single evaluation at the end; ``:mixer`` is the
# same model with the MLP token mixer.
CPU_STUDY_BUDGET = {"eval_every_steps": 0}
CPU_STUDY_VARIANTS = {
    "mixer": ("configs/default.py:mixer", {}),
    **{f"imixer_n{k}": ("configs/default.py:imixer", {"model.n_iter": k}) for k in (0, 1, 2, 4)},
}
CPU_STUDY_SEEDS = (0, 1, 2)

SWEEPS: dict[str, list[Run]] = {
    "paper": [Run(m, f"configs/cifar10.py:{m}") for m in paper.PAPER_MODELS],
    "n_iter": _ablation("model.n_iter", (0, 1, 2, 4, 8)),
    "hidden_ratio": _ablation("model.hidden_ratio", (1.0, 2.0, 4.0)),
    "n_power": _ablation("model.n_power", (1, 2, 4, 8)),
    "sn_coeff": _ablation("model.sn_coeff", (0.5, 0.7, 0.9, 1.0)),
    "spectral_norm": _ablation("model.spectral_norm", (True, False)),
    "tied": _ablation("model.tied", (False, True)),
    "adjoint": [
        Run("unrolled_8", ABLATION_BASE, {"model.n_iter": 8, "model.adjoint": "unrolled"}),
        Run("implicit_8", ABLATION_BASE, {"model.n_iter": 8, "model.adjoint": "implicit"}),
        Run(
            "implicit_tol1e-4",
            ABLATION_BASE,
            {"model.n_iter": 50, "model.tol": 1e-4, "model.adjoint": "implicit"},
        ),
    ],
    "cpu_study": [
        Run(
            f"{variant}_seed{seed}",
            config,
            {**overrides, **CPU_STUDY_BUDGET, "seed": seed},
            variant,
        )
        for variant, (config, overrides) in CPU_STUDY_VARIANTS.items()
        for seed in CPU_STUDY_SEEDS
    ],
}

PARAMIXER_KINDS = ("vanillamixer", "paramixer", "symmixer", "asymmixer")
PARAMIXER_SWEEPS: dict[str, list[Run]] = {
    "paramixer": [Run(k, f"configs/paramixer.py:{k}_s16_224") for k in PARAMIXER_KINDS],
    "paramixer_repeats": [
        Run(f"{kind}_ni{n}", f"configs/paramixer.py:{kind}_s16_224" + (f"_ni{n}" if n > 1 else ""))
        for kind in PARAMIXER_KINDS[:3]
        for n in (1, 2, 3, 4)
    ],
    "symmetry_breaking": [
        Run(suffix, f"configs/paramixer.py:asymmixer_s16_224_{suffix}")
        for suffix in ("l00", "l06", "l05", "l04", "l035", "l03", "l02", "l01", "l10")
    ],
}

_PAPER_SCALE = (
    "Paper-scale runs (CIFAR-10, 224 px, 300 epochs on 4x A100) with one seed per variant: a "
    "difference within the seed-to-seed spread is not evidence either way; measure that spread "
    "by repeating a run with another --config.seed before reading small differences."
)
SWEEPS.update(PARAMIXER_SWEEPS)
NOTES: dict[str, str] = {name: _PAPER_SCALE for name in SWEEPS}
NOTES["paper"] = (
    "Official CIFAR-10 top-1 for comparison (README, n_iter 2): iMixer-S 88.56, B 89.07, L 87.48. "
    + _PAPER_SCALE
)
NOTES["symmetry_breaking"] = (
    "lambda is the coefficient of the L2 penalty on the symmetry-breaking weights W_2 (added to "
    "the loss by the trainer): large lambda pushes AsymMixer towards SymMixer, lambda 0 leaves "
    "W_2 free (the paper: accuracy moves from SymMixer's to the vanilla Mixer's as the symmetry "
    "breaks). " + _PAPER_SCALE
)
NOTES["cpu_study"] = (
    "What this shows: on the embedded 8x8 digits (1,437 train / 360 test images), under one "
    "equal training budget, whether the iMLP token mixer with 0-4 fixed-point iterations trains "
    "as well as the MLP token mixer at this tiny scale, and how large the seed-to-seed spread is. "
    "imixer_n0 computes the same function family as mixer (n_iter 0 is the token MLP; its unused "
    "fc_sn layers only shift the random initialisation), so the mixer / imixer_n0 gap is a "
    "measure of noise. What it does not show: anything about the paper's claims at CIFAR / "
    "ImageNet scale (224 px, 300 epochs, heavy augmentation). The test set has 360 images, so "
    "one image is 0.28 points; with 3 seeds per variant (a standard error from 3 samples is "
    "itself rough) and four variants compared with one baseline, a difference of two or three "
    "standard errors is weak evidence at best, and a smaller one is compatible with noise. Wall "
    "times are of whole train commands (start-up and compilation included) on a 2-core CPU "
    "shared with other jobs: they show the cost of the iterations only roughly."
)
