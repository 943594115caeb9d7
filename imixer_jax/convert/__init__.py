"""Checkpoint converters between this code base and others (see ``torch_imixer``)."""
