"""What inference hands to evaluation and submission: one predicted instance as a vertex mask.

Free of torch, so that evaluating benchmark-format files needs neither torch nor MinkowskiEngine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InstancePrediction:
    """One predicted instance of a scene: a per-vertex mask (nonzero = member), an NYU40 label, a confidence."""

    mask: np.ndarray  # (N,) bool or integers
    label_id: int
    confidence: float
