"""The embedded TFDS dataset 'digits' (scikit-learn's 8x8 digits)."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

import imixer_jax.data as data
from imixer_jax.data import digits, tf_import


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _load(data_dir, split):
    builder = tfds.builder("digits", data_dir=data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return [{k: np.asarray(v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def test_prepares_on_first_use_in_seconds(digits_dir):
    assert not tfds.builder("digits", data_dir=digits_dir).is_prepared()
    tf_import.import_tensorflow()  # timed: the preparation, not TensorFlow's one-time import
    start = time.perf_counter()
    info = data.dataset_info("digits", data_dir=digits_dir)
    elapsed = time.perf_counter() - start
    assert tfds.builder("digits", data_dir=digits_dir).is_prepared()
    assert elapsed < 30, elapsed  # ~1-4 s on 2 cores; no network involved
    assert info == data.DatasetInfo(
        name="digits",
        num_classes=10,
        num_train=digits.NUM_TRAIN,
        num_eval=digits.NUM_TEST,
        train_split="train",
        eval_split="test",
        image_shape=(8, 8, 1),
    )
    assert (digits.NUM_TRAIN, digits.NUM_TEST) == (1437, 360)


def test_registered_under_name_digits():
    assert "digits" in tfds.list_builders()
    assert isinstance(tfds.builder("digits"), digits.Digits)


def test_splits_are_the_documented_stratified_partition(digits_dir):
    data.dataset_info("digits", data_dir=digits_dir)
    train, test = _load(digits_dir, "train"), _load(digits_dir, "test")
    assert (len(train), len(test)) == (1437, 360)
    train_rows = {int(ex["index"]) for ex in train}
    test_rows = {int(ex["index"]) for ex in test}
    assert not train_rows & test_rows
    assert train_rows | test_rows == set(range(1797))
    test_labels = np.array([ex["label"] for ex in test])
    # Stratified 20%: every class has 35..37 test examples (its count * 0.2, rounded either way).
    assert np.all(np.abs(np.bincount(test_labels, minlength=10) - 36) <= 1)


def test_images_and_labels_match_scikit_learn(digits_dir):
    data.dataset_info("digits", data_dir=digits_dir)
    images, labels = load_digits(return_X_y=True)
    for ex in _load(digits_dir, "test") + _load(digits_dir, "train")[:200]:
        row = int(ex["index"])
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (8, 8, 1)
        expected = np.round(images[row].reshape(8, 8, 1) * 255 / 16)
        np.testing.assert_array_equal(ex["image"], expected)
        assert ex["label"] == labels[row] and 0 <= ex["label"] <= 9
    all_pixels = np.concatenate([ex["image"].ravel() for ex in _load(digits_dir, "test")])
    assert all_pixels.min() == 0 and all_pixels.max() == 255


def test_arrays_equal_the_prepared_splits(digits_dir):
    data.dataset_info("digits", data_dir=digits_dir)
    for split in ("train", "test"):
        examples = sorted(_load(digits_dir, split), key=lambda ex: int(ex["index"]))
        images, labels = digits.arrays(split)
        np.testing.assert_array_equal(images, np.stack([ex["image"] for ex in examples]))
        np.testing.assert_array_equal(labels, [ex["label"] for ex in examples])
    with pytest.raises(ValueError, match="'train' and 'test'"):
        digits.arrays("validation")
