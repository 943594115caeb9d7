"""Reading TensorBoard event files back as TensorBoard shows them (a helper of the tests, not a
test module)."""

import glob
import os

import tensorflow as tf


def tensorboard_points(workdir: str) -> dict[str, list[tuple[int, object]]]:
    """What TensorBoard shows, ``{tag: [(step, value), ...]}``: the event files in name order
    (creation time first) read with TensorBoard's purge of orphaned data (on by default in its
    event accumulator): the first ``SessionLog.START`` is a plain start, each later one drops
    every point read so far at its step or later."""
    points, started = {}, False
    for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            if event.session_log.status == tf.compat.v1.SessionLog.START:
                if started:
                    points = {t: [p for p in ps if p[0] < event.step] for t, ps in points.items()}
                started = True
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                shown = array.item() if array.dtype != object else array.item().decode()
                points.setdefault(value.tag, []).append((event.step, shown))
    return points
