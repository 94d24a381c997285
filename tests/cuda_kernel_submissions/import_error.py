"""Fails while being imported, like a kernel whose build step raises."""
import torch

_KERNEL = build_the_kernel()   # noqa: F821 - undefined on purpose


def custom_kernel(data):
    return _KERNEL(data)
