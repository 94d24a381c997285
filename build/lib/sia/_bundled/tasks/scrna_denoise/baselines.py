"""Reference methods, run in the trusted process on ALL cells' train counts.

The "perfect" control (the held-out counts themselves) is not here: it needs the test half
and the totals of the cells being scored, so the task builds it per split.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import denoise

Method = Callable[[np.ndarray], np.ndarray]

METHODS: dict[str, Method] = {
    "no_denoising": lambda train: train,
    "knn_smoothing": lambda train: denoise.knn_smooth(train, k=10),
    "magic": lambda train: denoise.magic(train, t=3, k=10),
    "alra": lambda train: denoise.alra(train, rank=20),
}
