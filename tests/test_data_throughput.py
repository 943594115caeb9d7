"""`python -m benchmarks.throughput`: runs on mock data, times the pipeline transform."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import throughput
from tests.commands import call

pytestmark = pytest.mark.slow  # builds the 224 px RandAugment graph


@pytest.fixture(scope="module")
def mock_records():
    return throughput.mock_cifar10(num_examples=4)


def test_batches_are_the_training_layout_with_the_full_recipe(mock_records):
    feature, records = mock_records
    assert feature.shape == (32, 32, 3)  # cifar10-shaped
    batches = throughput.augmented_batches(
        feature, records, image_size=16, batch_size=6, threads=2, augment={}
    )
    for batch in itertools.islice(batches.as_numpy_iterator(), 2):  # wraps around the 4 records
        assert batch["image"].shape == (6, 16, 16, 3) and batch["image"].dtype == np.float32
        assert np.isfinite(batch["image"]).all() and batch["label"].shape == (6,)


def test_main_reports_rates_and_cores_per_accelerator(capsys):
    call(
        throughput,
        *("--threads=1", "--image_size=16", "--batch_size=4", "--num_batches=1"),
        *("--num_examples=4", "--step_rate=1000", "--repeats=1"),
        '--augment={"randaugment": null}',
    )
    out = capsys.readouterr().out
    assert "'randaugment': None" in out and "16 px" in out
    (line,) = [row for row in out.splitlines() if row.startswith("threads 1:")]
    assert "img/s per CPU-second" in line and "at 1,000 img/s" in line


@pytest.mark.parametrize("mock", ["cifar10", "jpeg"])
def test_on_device_times_the_host_share_and_the_device_augmentation(capsys, mock):
    call(
        throughput,
        *("--threads=1", "--image_size=24", "--batch_size=4", "--num_batches=1"),
        *("--num_examples=4", "--step_rate=1000", "--repeats=1", "--on_device", f"--mock={mock}"),
        *(['--augment={"randaugment": null}'] if mock == "jpeg" else []),  # compiles faster
    )
    out = capsys.readouterr().out
    assert "'on_device': True" in out and "host decode + crop draws only" in out
    assert ("mock JPEGs" in out) == (mock == "jpeg")
    (line,) = [row for row in out.splitlines() if row.startswith("device augmentation")]
    canvas = "(48, 48)" if mock == "jpeg" else "(32, 32)"  # 2 S, or cifar10's stored size
    assert f"from {canvas} canvases" in line
    assert "ms per image wall" in line and "jitted batch of 4" in line


def test_mock_jpegs_are_imagenet_sized():
    feature, records = throughput.mock_jpeg(num_examples=3)
    assert feature.shape == (None, None, 3) and feature.encoding_format == "jpeg"
    for record in records.as_numpy_iterator():
        height, width, _ = tf.image.extract_jpeg_shape(record["image"]).numpy()
        assert 250 <= height <= 450 and 300 <= width <= 500
        assert 40_000 < len(record["image"]) < 200_000  # photo-like bytes per image
