"""TFDS builder ``digits``: scikit-learn's 8x8 handwritten digits (embedded, no download).

scikit-learn ships the 1,797 images of the UCI "Optical Recognition of Handwritten Digits" test
set inside its package (``sklearn.datasets.load_digits``): 8x8 grey images with integer pixel
values 0..16 and labels 0..9. This builder turns them into a TFDS dataset so that the input
pipeline can treat them exactly like cifar10 or imagenet2012: a CPU-sized stand-in for tests,
notebooks and smoke runs.

* ``image``: uint8 ``[8, 8, 1]``, ``round(v * 255 / 16)`` of the original value v in 0..16, so
  0 -> 0 and 16 -> 255 (the full uint8 range, as every other image dataset).
* ``label``: ``ClassLabel(10)``, the digit.
* ``index``: int32, the row of the example in ``load_digits()`` (traceability; not a feature the
  pipeline uses).

Splits (fixed): stratified 80/20, ``sklearn.model_selection.train_test_split(test_size=0.2,
stratify=labels, random_state=0)``: **train 1,437** and **test 360** examples (36 +- 1 test
examples per class).

Preparation needs no network and takes about a second; the input pipeline prepares it into its
``data_dir`` on first use (``imixer_jax.data.dataset_info`` / ``train_batches`` / ``eval_batches``),
and ``tfds.load('digits')`` does the same.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1437
NUM_TEST = 360
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified split: (train rows, test rows) of ``load_digits()``."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    train, test = train_test_split(
        rows, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return np.sort(train), np.sort(test)


def _load() -> tuple[np.ndarray, np.ndarray]:
    """Every image ``[1797, 8, 8, 1]`` uint8 (0..255) and label ``[1797]``, in the order of
    ``load_digits()``."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    return np.round(images.reshape(-1, 8, 8, 1) * (255.0 / 16.0)).astype(np.uint8), labels


def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images ``[N, 8, 8, 1]`` uint8 and labels ``[N]`` int of ``split`` (``'train'`` or
    ``'test'``), equal to the dataset's, from scikit-learn directly (no TensorFlow, nothing
    prepared): for code that wants the digits as arrays."""
    if split not in ("train", "test"):
        raise ValueError(f"digits has the splits 'train' and 'test', got {split!r}")
    images, labels = _load()
    rows = _split_indices(labels)[split == "test"]
    return images[rows], labels[rows]


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits as a TFDS dataset (name ``digits``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split with seed 0; pixels rescaled to 0..255."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "index": np.int32,
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation=(
                "@misc{alpaydin1998digits, author={Alpaydin, E. and Kaynak, C.}, "
                "title={Optical Recognition of Handwritten Digits}, year={1998}, "
                "howpublished={UCI Machine Learning Repository}}"
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # the data ship with scikit-learn
        images, labels = _load()
        train, test = _split_indices(labels)
        return {
            "train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray):
        for row in rows:
            yield int(row), {"image": images[row], "label": int(labels[row]), "index": int(row)}
