"""Benchmarks of the trainer's step (``step``), the input pipeline (``throughput``) and the eager
PyTorch reference model they compare against (``torch_reference``); outside the library."""
