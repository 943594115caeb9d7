"""Config schema and validation: every invalid config fails before compilation with one line that
names the key, from Python and from the command line."""

import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import default
from imixer_jax.training import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_and_base_configs_are_valid_and_locked():
    for config in (default.get_config(), config_lib.base_config("mixer_b16")):
        config_lib.validate(config)
        with pytest.raises(AttributeError):
            config.no_such_key = 1


def test_model_section_equals_registry_config():
    config = config_lib.base_config("imixer_b32", num_classes=100)
    from imixer_jax.models import registry

    expected = registry.model_config("imixer_b32", num_classes=100)
    assert config.model.to_dict() == expected.to_dict()
    assert config_lib.typed_model_config(config) == expected


@pytest.mark.parametrize(
    "section, key, value, named",
    [
        ("model", "n_iter", -1, "config.model.n_iter"),
        ("model", "patch_size", 5, "config.model.img_size"),
        ("model", "token_mixer", "attention", "config.model.token_mixer"),
        ("model", "dtype", "int8", "config.model"),
        ("optimizer", "lr", 0.0, "config.optimizer.lr"),
        ("optimizer", "lr", 1e39, "config.optimizer.lr"),  # overflows float32
        ("optimizer", "accum_steps", 0, "config.optimizer.accum_steps"),
        ("optimizer", "ema_decay", 1.0, "config.optimizer.ema_decay"),
        ("schedule", "unit", "hours", "config.schedule.unit"),
        ("schedule", "warmup", 100.0, "config.schedule.warmup"),
        ("mesh", "axes", ("batch", "model"), "config.mesh.axes"),
        ("mesh", "shape", (-1, -1), "config.mesh.shape"),
        ("data", "crop_ratio", 1.5, "config.data.crop_ratio"),
        ("distributed", "initialize", "maybe", "config.distributed.initialize"),
    ],
)
def test_invalid_values_fail_with_one_line_naming_the_key(section, key, value, named):
    config = default.get_config()
    config[section][key] = value
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(config)
    message = str(info.value)
    assert "\n" not in message and message.startswith(named), message


def test_unknown_and_missing_model_keys():
    config = default.get_config()
    with config.unlocked():
        config.model.depth = 3
    with pytest.raises(config_lib.ConfigError, match=r"^config.model.depth: depth is not a Mixer"):
        config_lib.validate(config)
    config = default.get_config()
    with config.unlocked():
        config.model.n_iters = 3
    with pytest.raises(config_lib.ConfigError, match=r"^config.model.n_iters: .* mean n_iter"):
        config_lib.validate(config)
    config = default.get_config()
    with config.unlocked():
        del config.model["num_blocks"]
    with pytest.raises(config_lib.ConfigError, match=r"^config.model.num_blocks: .* missing"):
        config_lib.validate(config)
    config = default.get_config()
    with config.unlocked():
        config.arch = "resnet"
    with pytest.raises(config_lib.ConfigError, match=r"^config.arch: arch must be one of"):
        config_lib.validate(config)


def test_base_config_names_an_invalid_model_override():
    with pytest.raises(config_lib.ConfigError, match=r"^config.model.remat: remat must be one of"):
        config_lib.base_config("mixer_s16", remat="all")
    with pytest.raises(config_lib.ConfigError, match=r"^config.model.n_iters: .* mean n_iter\?$"):
        config_lib.base_config("imixer_s16", n_iters=4)


def test_wrong_type_is_rejected_on_assignment():
    config = default.get_config()
    with pytest.raises(TypeError, match="batch_size"):
        config.batch_size = "many"


def _parse(*overrides: str):
    """``configs/default.py`` with ``--config.KEY=VALUE`` overrides, parsed as the entry points
    parse them (``config_flags``, locked)."""
    argv = ["prog", "--config", os.path.join(REPO, "configs", "default.py"), *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def test_every_model_field_can_be_set_on_the_command_line():
    """A model field named like a ConfigDict method (``update``) could not be overridden."""
    config = _parse("--config.model.update_rule=euler", "--config.model.step_size=0.5")
    assert config.model.update_rule == "euler"
    config_lib.validate(config)
    fields = config.model.to_dict()
    methods = [name for name in fields if callable(getattr(config.model, name))]
    assert methods == [], methods


def _cli(workdir, *overrides, env=None):
    """Start the training CLI on the default config; JAX logs every compilation it starts."""
    env = {**os.environ, "JAX_LOG_COMPILES": "1", **(env or {})}
    command = [sys.executable, "-m", "imixer_jax.train", "--config", "configs/default.py"]
    command += ["--workdir", str(workdir), *overrides]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_cli_rejects_bad_input_before_compiling_with_one_line(tmp_path):
    eight_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    (tmp_path / "tfds").mkdir()
    empty_tfds = f"--config.data.data_dir={tmp_path / 'tfds'}"
    cases = {  # name: (overrides, environment, what the error line must contain)
        "unknown key": (["--config.model.depth=3"], None, "config.model.depth"),
        "wrong type": (["--config.optimizer.lr=fast"], None, "config.optimizer.lr"),
        "n_iter < 0": (["--config.model.n_iter=-1"], None, "config.model.n_iter"),
        "patch": (["--config.model.img_size=18"], None, "config.model.img_size"),
        "devices": (["--config.batch_size=60"], eight_devices, "config.batch_size: 60"),
        "not prepared": (
            ["--config.data.name=mnist", empty_tfds],
            None,
            "config.data: TFDS dataset 'mnist' is not prepared",
        ),
    }
    # Side by side: each process only imports, parses and validates (a few CPU seconds).
    runs = {
        name: _cli(tmp_path / name.replace(" ", "_"), *overrides, env=env)
        for name, (overrides, env, _) in cases.items()
    }
    for name, process in runs.items():
        _, stderr = process.communicate(timeout=300)
        named = cases[name][2]
        assert process.returncode != 0, name
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and named in last, (name, stderr[-2000:])
        assert "Compiling" not in stderr, name  # JAX_LOG_COMPILES would have logged one
        assert not (tmp_path / name.replace(" ", "_") / "checkpoints").exists(), name
    assert "tfds build mnist" in last  # the not-prepared message says how to prepare it


def _tiny_mixer():
    """mixer_s16 shrunk, on synthetic data: ``prepare`` builds and compiles nothing heavy."""
    sizes = dict(img_size=16, patch_size=4, num_blocks=1, hidden_dim=16, tokens_mlp_dim=8)
    c = config_lib.base_config("mixer_s16", num_classes=10, channels_mlp_dim=32, **sizes)
    c.data.name = "synthetic/10"
    c.batch_size = c.eval_batch_size = 8
    return c


def _init_files(tmp_path, config) -> dict[str, str]:
    """Files that are not vit_jax checkpoints of ``config``'s model, by what is wrong."""
    from imixer_jax import training
    from imixer_jax.weights import vit_jax

    params = training.prepare(config).abstract_state.params
    shapes = {vit_jax.vit_jax_names(1)[path]: leaf.shape for path, leaf in nnx_flat(params).items()}
    rng = np.random.default_rng(0)
    full = {key: rng.normal(size=shape).astype(np.float32) for key, shape in shapes.items()}
    full["stem/kernel"] = full["stem/kernel"][..., :8]  # one entry of the wrong width
    files = {
        "random bytes": rng.bytes(4096),
        "foreign .npz": {"arr_0": np.zeros(3)},
        "object arrays": {"stem/kernel": np.array([{}], dtype=object)},
        "wrong shape": full,
    }
    paths = {}
    for name, content in files.items():
        path = tmp_path / (name.replace(" ", "_") + ".npz")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            np.savez(path, **content)
        paths[name] = str(path)
    return paths


def nnx_flat(params) -> dict[tuple, object]:
    from flax import nnx, traverse_util

    return traverse_util.flatten_dict(nnx.to_pure_dict(params))


def test_every_input_is_checked_before_the_workdir_is_created(tmp_path):
    """Augmentation settings, the data_dir, the mesh's axis names and the content of the
    init_from file: one line naming the key, and nothing created (the trainer creates its
    workdir, lock and checkpoints/ only after ``prepare``, which compiles nothing)."""
    from imixer_jax import training

    settings = {  # name: (key, value, what the line names)
        "interpolation": ("data.augment.interpolation", "nearest", "data.augment.interpolation"),
        "scale reversed": ("data.augment.scale", (1.5, 0.2), "data.augment.scale"),
        "scale of one": ("data.augment.scale", (0.5,), "data.augment.scale"),
        "weighted ops": ("data.augment.randaugment", "rand-m9-w0", "data.augment.randaugment"),
        "no number": ("data.augment.randaugment", "rand-zz", "data.augment.randaugment"),
        "missing data_dir": ("data.data_dir", str(tmp_path / "no" / "tfds"), "data.data_dir"),
        "axes as a string": ("mesh.axes", ("(data,model)",), "mesh.axes"),
    }
    init_files = _init_files(tmp_path, _tiny_mixer())
    for name, path in init_files.items():
        settings[name] = ("init_from.path", path, "init_from.path")
    expected = {
        "random bytes": "is neither an .npz nor a PyTorch file",
        "object arrays": "holds pickled objects, which are never loaded",
        "foreign .npz": "is an .npz of no known weights format (entries 'arr_0')",
        "wrong shape": "'stem/kernel' has shape (4, 4, 3, 8)",
    }
    workdir = tmp_path / "run"
    for name, (key, value, named) in settings.items():
        config = _tiny_mixer()
        section, field = ("", key) if "." not in key else key.rsplit(".", 1)
        target = config
        for part in filter(None, section.split(".")):
            target = target[part]
        target[field] = value
        with pytest.raises(config_lib.ConfigError) as info:
            training.train_and_evaluate(config, str(workdir))
        line = str(info.value)
        assert f"config.{named}: " in line and "\n" not in line and len(line) < 300, (name, line)
        assert expected.get(name, "") in line, (name, line)
        assert not workdir.exists(), name
