"""Augmentation of the paper's recipe, in two routes over one policy (``policy``: the RandAugment
op set, magnitudes and fill): ``host`` (TensorFlow, per example, inside the tf.data pipeline) and
``device`` (JAX, vmapped over the batch inside the jitted train step; opt-in with
``augment.on_device``). The routes are equal in distribution, not draw by draw."""
