"""Datasets, the built-in shapes generator, transforms and batching."""
