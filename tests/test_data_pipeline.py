"""Input pipeline: shapes, reproducibility from (seed, step), process sharding, eval padding,
errors, and cifar10 through the full train pipeline with tfds.testing.mock_data."""

import gc
import itertools
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

import imixer_jax.data as data
from imixer_jax.data import tf_import

NO_AUGMENT = {
    "random_resized_crop": False,
    "hflip": False,
    "randaugment": None,
    "random_erasing": 0.0,
}


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data.dataset_info("digits", data_dir=data_dir)  # prepares it
    return data_dir


def _train(digits_dir, num_batches, **overrides):
    kwargs = {
        "name": "digits",
        "data_dir": digits_dir,
        "split": "train",
        "image_size": 16,
        "global_batch_size": 64,
        "seed": 0,
        "start_step": 0,
        "process_index": 0,
        "process_count": 1,
        "augment": {},
    }
    kwargs.update(overrides)
    return list(itertools.islice(data.train_batches(**kwargs), num_batches))


def _eval(digits_dir, **overrides):
    kwargs = {
        "name": "digits",
        "data_dir": digits_dir,
        "split": "test",
        "image_size": 16,
        "global_batch_size": 64,
        "process_index": 0,
        "process_count": 1,
        "crop_ratio": 0.875,
    }
    kwargs.update(overrides)
    return list(data.eval_batches(**kwargs))


def _rows(batches, with_mask=False):
    """Every example as a hashable row (image bytes, label), padding dropped."""
    rows = []
    for batch in batches:
        keep = batch["mask"] if with_mask else np.ones(len(batch["label"]), bool)
        for image, label in zip(batch["image"][keep], batch["label"][keep]):
            rows.append((image.tobytes(), int(label)))
    return sorted(rows)


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_train_batch_shapes_dtypes_and_range(digits_dir):
    for batch in _train(digits_dir, 3, augment={"random_erasing": 0.0}):
        assert batch["image"].shape == (64, 16, 16, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
        assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
        assert batch["label"].min() >= 0 and batch["label"].max() <= 9
        # digits are grey: the three channels are copies
        np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])
    # random erasing writes N(0, 1) noise, which leaves [-1, 1] somewhere in 3 x 64 examples.
    erased = np.stack([b["image"] for b in _train(digits_dir, 3, augment={"random_erasing": 1.0})])
    assert np.abs(erased).max() > 1.0


def test_train_without_augmentation_is_the_eval_transform(digits_dir):
    # 1437 = 3 * 479: three batches are exactly one epoch, i.e. a permutation of the split.
    epoch0 = _train(digits_dir, 3, global_batch_size=479, augment=NO_AUGMENT)
    epoch1 = _train(digits_dir, 3, global_batch_size=479, augment=NO_AUGMENT, start_step=3)
    full = _eval(digits_dir, split="train", crop_ratio=1.0)
    assert _rows(epoch0) == _rows(full, with_mask=True) == _rows(epoch1)
    # ... and every epoch is shuffled differently
    assert not np.array_equal(epoch0[0]["label"], epoch1[0]["label"])


def test_flips_are_drawn_per_example(digits_dir):
    flip_only = {**NO_AUGMENT, "hflip": True}
    epoch = _train(digits_dir, 3, global_batch_size=479, augment=flip_only)
    unflipped = set(_rows(_eval(digits_dir, split="train", crop_ratio=1.0), with_mask=True))
    kept = np.mean([row in unflipped for row in _rows(epoch)])
    # p = 1/2 per example over 1437 examples (std 0.013), plus the few mirror-symmetric digits.
    assert 0.4 < kept < 0.65, kept


def test_augmentation_is_drawn_per_epoch(digits_dir):
    # A one-example split: each batch of 8 holds 8 consecutive epochs of the same image, which
    # must be cropped and flipped differently every time.
    (batch,) = _train(digits_dir, 1, split="train[:1]", global_batch_size=8, augment=NO_AUGMENT)
    assert all(np.array_equal(image, batch["image"][0]) for image in batch["image"])
    (batch,) = _train(digits_dir, 1, split="train[:1]", global_batch_size=8)
    assert len({image.tobytes() for image in batch["image"]}) == 8


def test_same_seed_same_batches_other_seed_other_batches(digits_dir):
    a = _train(digits_dir, 3, seed=5)
    _assert_same_batches(a, _train(digits_dir, 3, seed=5))
    b = _train(digits_dir, 3, seed=6)
    assert not np.array_equal(a[0]["image"], b[0]["image"])


@pytest.mark.parametrize(
    "process_count",
    [1, pytest.param(2, marks=pytest.mark.slow)],  # 2: the slow set
)
def test_start_step_resumes_exactly(digits_dir, process_count):
    # Per process 1437 / process_count examples and 64 per batch: step 23 (1 process) and
    # step 12 (2 processes) lie in the second epoch, and the 3 batches checked cross no or one
    # more epoch boundary.
    start = 23 if process_count == 1 else 12
    kwargs = {"global_batch_size": 64 * process_count, "process_count": process_count, "seed": 9}
    kwargs["process_index"] = process_count - 1
    uninterrupted = _train(digits_dir, start + 3, **kwargs)
    resumed = _train(digits_dir, 3, start_step=start, **kwargs)
    _assert_same_batches(uninterrupted[start:], resumed)


def test_train_processes_read_disjoint_parts(digits_dir):
    # Global batch 2 (one example per process), no augmentation: one epoch of each process.
    parts = [
        _train(
            digits_dir,
            n,
            global_batch_size=2,
            process_index=i,
            process_count=2,
            augment=NO_AUGMENT,
        )
        for i, n in enumerate((719, 718))  # tfds.even_splits of 1437
    ]
    full = _eval(digits_dir, split="train", crop_ratio=1.0)
    assert sorted(_rows(parts[0]) + _rows(parts[1])) == _rows(full, with_mask=True)


@pytest.mark.parametrize("split", ["test", "test[:359]"])
def test_eval_counts_every_example_once_across_processes(digits_dir, split):
    total = 360 if split == "test" else 359
    single = _eval(digits_dir, split=split)
    assert sum(int(b["mask"].sum()) for b in single) == total
    assert len(single) == 6 and not single[-1]["mask"][-(6 * 64 - total) :].any()
    per_process = [
        _eval(digits_dir, split=split, global_batch_size=128, process_index=i, process_count=2)
        for i in range(2)
    ]
    # Equal batch counts (180 and 180 or 179 examples in 3 batches of 64), padding masked out.
    assert [len(p) for p in per_process] == [3, 3]
    for batches in per_process:
        for b in batches:
            assert b["image"].shape == (64, 16, 16, 3) and b["mask"].dtype == np.bool_
            assert not b["image"][~b["mask"]].any() and not b["label"][~b["mask"]].any()
    rows = [_rows(p, with_mask=True) for p in per_process]
    assert len(rows[0]) + len(rows[1]) == total
    assert sorted(rows[0] + rows[1]) == _rows(single, with_mask=True)


def test_eval_is_deterministic_and_in_range(digits_dir):
    a, b = _eval(digits_dir), _eval(digits_dir)
    _assert_same_batches(a, b)
    images = np.concatenate([x["image"] for x in a])
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.min() < 0.5 < images.max()


def test_bad_arguments(digits_dir):
    with pytest.raises(ValueError, match="unknown augment keys"):
        _train(digits_dir, 1, augment={"mixup": 0.8})
    with pytest.raises(ValueError, match="multiple of process_count"):
        _train(digits_dir, 1, global_batch_size=63, process_count=2)
    with pytest.raises(ValueError, match="interpolation"):
        _train(digits_dir, 1, augment={"interpolation": "nearest"})


def test_dataset_that_is_not_prepared_fails_fast_with_instructions(tmp_path):
    empty = str(tmp_path / "empty")
    # Timed: the failure, not TensorFlow's one-time import (5-10 s), which this test would pay
    # when it runs first in its process.
    tf_import.import_tensorflow()
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        data.train_batches(
            name="cifar10",
            data_dir=empty,
            split="train",
            image_size=224,
            global_batch_size=64,
            seed=0,
            start_step=0,
            process_index=0,
            process_count=1,
            augment={},
        )  # raises at the call, before an iterator exists
    message = str(err.value)
    assert time.perf_counter() - start < 5
    assert "\n" not in message
    assert "'cifar10'" in message and empty in message
    assert f"tfds build cifar10 --data_dir={empty}" in message
    with pytest.raises(FileNotFoundError, match="manual"):
        data.dataset_info("imagenet2012", data_dir=empty)


def _write_mock_metadata(data_dir: str, name: str, num_examples: int) -> None:
    """The metadata tfds.testing.mock_data reads (MockPolicy.USE_FILES): real features,
    `num_examples` per split."""
    builder = tfds.builder(name, data_dir=data_dir)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path, dataset_name=name, filetype_suffix="tfrecord"
    )
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(
                    name=split,
                    shard_lengths=[num_examples],
                    num_bytes=0,
                    filename_template=template.replace(split=split),
                )
                for split in ("train", "test")
            ]
        )
    )
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)


def test_cifar10_through_the_full_pipeline_with_mock_data(tmp_path):
    _write_mock_metadata(str(tmp_path), "cifar10", num_examples=96)
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(num_examples=96, data_dir=str(tmp_path), policy=policy):
        info = data.dataset_info("cifar10", data_dir=None)
        assert (info.num_classes, info.num_train, info.eval_split) == (10, 96, "test")
        train = data.train_batches(
            name="cifar10",
            data_dir=None,
            split="train",
            image_size=32,
            global_batch_size=64,
            seed=0,
            start_step=1,
            process_index=0,
            process_count=1,
            augment={"interpolation": "random"},
        )
        batches = list(itertools.islice(train, 2))  # crosses the epoch boundary at 96
        # mock datasets are Python generators; close the iterator while the interpreter is
        # fully alive (an open one can deadlock TF at interpreter exit).
        del train
        gc.collect()
        for batch in batches:
            assert batch["image"].shape == (64, 32, 32, 3) and batch["image"].dtype == np.float32
            assert batch["label"].dtype == np.int32 and batch["label"].min() >= 0
            assert batch["label"].max() <= 9 and np.isfinite(batch["image"]).all()
        evals = list(
            data.eval_batches(
                name="cifar10",
                data_dir=None,
                split="test",
                image_size=32,
                global_batch_size=64,
                process_index=0,
                process_count=1,
                crop_ratio=0.875,
            )
        )
        assert [int(b["mask"].sum()) for b in evals] == [64, 32]
