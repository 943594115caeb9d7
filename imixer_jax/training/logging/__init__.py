"""A run's metrics: the writer (``DIR/metrics.jsonl``, TensorBoard, console) and the reader of
``metrics.jsonl`` that sweeps, reports and analysis use."""
