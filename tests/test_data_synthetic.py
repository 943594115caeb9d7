"""``data.name = 'synthetic'``: TFDS-free batches with the real pipeline's layout."""

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import imixer_jax.data as data
from imixer_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(num_batches=3, **overrides):
    kwargs = dict(
        name="synthetic/7",
        data_dir=None,
        split="train",
        image_size=8,
        global_batch_size=6,
        seed=3,
        start_step=0,
        process_index=0,
        process_count=1,
        augment={},
    )
    kwargs.update(overrides)
    return list(itertools.islice(data.train_batches(**kwargs), num_batches))


def _eval(**overrides):
    kwargs = dict(
        name="synthetic",
        data_dir=None,
        split="validation",
        image_size=4,
        global_batch_size=4096,
        process_index=0,
        process_count=1,
        crop_ratio=0.875,
    )
    kwargs.update(overrides)
    return list(data.eval_batches(**kwargs))


def test_dataset_info_is_imagenet_shaped_with_the_named_classes():
    info = data.dataset_info("synthetic", data_dir=None, train_split="train", eval_split=None)
    assert info == data.DatasetInfo(
        name="synthetic",
        num_classes=1000,
        num_train=1_281_167,
        num_eval=50_000,
        train_split="train",
        eval_split="validation",
        image_shape=(None, None, 3),
    )
    assert data.dataset_info("synthetic/10", data_dir=None).num_classes == 10


def test_train_batches_have_the_pipeline_layout():
    for batch in _train():
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (6, 8, 8, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (6,) and batch["label"].dtype == np.int32
        assert np.all((batch["image"] >= -1) & (batch["image"] <= 1))
        assert np.all((batch["label"] >= 0) & (batch["label"] < 7))


def test_train_batches_are_a_function_of_seed_and_step():
    first, again = _train(num_batches=4), _train(num_batches=4)
    resumed = _train(num_batches=2, start_step=2)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    for a, b in zip(first[2:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    # Consecutive batches differ, and so do other seeds and other processes' shares (6 labels in
    # 7 classes or a 384-pixel image coinciding has probability < 1e-4).
    assert not np.array_equal(first[0]["image"], first[1]["image"])
    assert not np.array_equal(first[0]["label"], first[2]["label"])
    other_seed = _train(num_batches=1, seed=4)[0]
    other_process = _train(num_batches=1, global_batch_size=12, process_count=2, process_index=1)
    assert not np.array_equal(first[0]["image"], other_seed["image"])
    assert not np.array_equal(first[0]["image"], other_process[0]["image"])


def test_batches_are_read_only_so_the_shared_images_cannot_be_corrupted():
    batch = _train(num_batches=1)[0]
    with pytest.raises(ValueError, match="read-only"):
        batch["image"][0, 0, 0, 0] = 0.0


def test_eval_covers_every_example_once_across_processes():
    # 50,000 examples over 3 processes (16,667 / 16,667 / 16,666) in local batches of 4096:
    # every process yields ceil(16,667 / 4096) = 5 batches, the missing ones masked out.
    parts = [_eval(global_batch_size=3 * 4096, process_index=i, process_count=3) for i in range(3)]
    assert [len(p) for p in parts] == [5, 5, 5]
    assert sum(int(b["mask"].sum()) for p in parts for b in p) == synthetic.NUM_EVAL
    last = parts[2][-1]
    assert set(last) == {"image", "label", "mask"} and last["mask"].dtype == bool
    assert np.all(last["image"][~last["mask"]] == 0) and np.all(last["label"][~last["mask"]] == 0)
    assert last["image"].shape == (4096, 4, 4, 3)
    again = _eval(global_batch_size=3 * 4096, process_index=2, process_count=3)
    np.testing.assert_array_equal(again[-1]["label"], last["label"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: data.dataset_info("synthetic/ten", data_dir=None), "synthetic/K"),
        (lambda: data.dataset_info("synthetic", data_dir=None, eval_split="test"), "splits"),
        (lambda: _train(split="train[:50%]"), "splits"),
        (lambda: _train(global_batch_size=5, process_count=2), "multiple of"),
        (lambda: _train(start_step=-1), "start_step"),
        (lambda: _train(augment={"colour": 1}), "unknown augment keys"),
        (lambda: _eval(crop_ratio=0.0), "crop_ratio"),
    ],
)
def test_bad_arguments_fail_when_called_with_one_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_works_where_tensorflow_cannot_be_imported():
    script = textwrap.dedent(
        """
        import itertools, sys
        sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError
        sys.modules["tensorflow_datasets"] = None
        import configs.default
        from imixer_jax import data
        info = data.dataset_info("synthetic/5", data_dir=None)
        train = data.train_batches(
            name="synthetic/5", data_dir=None, split="train", image_size=4, global_batch_size=2,
            seed=0, start_step=0, process_index=0, process_count=1,
            augment=configs.default.get_config().data.augment.to_dict(),
        )
        batch = next(train)
        evals = data.eval_batches(
            name="synthetic/5", data_dir=None, split=info.eval_split, image_size=4,
            global_batch_size=25_000, process_index=0, process_count=1, crop_ratio=1.0,
        )
        print(info.num_classes, batch["image"].shape, sum(int(b["mask"].sum()) for b in evals))
        """
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "5 (2, 4, 4, 3) 50000"
