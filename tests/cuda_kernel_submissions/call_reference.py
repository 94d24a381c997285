"""HOSTILE: return the evaluator's reference output instead of computing.

Tries every route to the reference: importing it (as the evaluator's package, through the
sia task registry, or by file path next to the sia package), and scanning this process's
memory for tensors of the output's shape that it did not create. Falls back to zeros.
"""
import gc
import importlib
import os
import sys

import torch


def _reference_function():
    for name in ("cuda_kernel.reference", "sia_tasks.cuda_kernel.reference"):
        try:
            return importlib.import_module(name).trimul_reference
        except Exception:  # noqa: BLE001
            pass
    try:
        import sia
        from sia.tasks import TASKS_DIR, _tasks_package
        _tasks_package(TASKS_DIR)
        return importlib.import_module("sia_tasks.cuda_kernel.reference").trimul_reference
    except Exception:  # noqa: BLE001
        pass
    try:
        import sia
        path = os.path.join(os.path.dirname(os.path.dirname(sia.__file__)), "tasks", "cuda_kernel", "reference.py")
        scope = {}
        exec(compile(open(path).read(), path, "exec"), scope)
        return scope["trimul_reference"]
    except Exception:  # noqa: BLE001
        return None


def _output_in_memory(shape, mine):
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and tuple(obj.shape) == shape and all(obj is not m for m in mine):
            return obj
    return None


def custom_kernel(data):
    x, mask, weights = data
    found = _output_in_memory(tuple(x.shape), [x])
    if found is not None:
        return found.clone()
    reference = _reference_function()
    if reference is not None:
        return reference(x, mask, weights)
    return torch.zeros_like(x)
