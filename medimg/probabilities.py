"""From logits to decisions: the one definition the evaluation, the ONNX scoring and predict share.

A model gives logits ``[N, K]``; :func:`softmax` gives each class's probability; the abnormality
probability ``p_abnormal`` is the summed probability of the abnormal classes; :func:`decide` turns
probabilities into class indices: binary tasks by the threshold on ``p_abnormal`` (the abnormal
class at or above it, else the other), multiclass tasks by arg-max (the first class on a tie, as
``numpy.argmax``). Pure numpy, so predict imports it without the training or metric libraries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray


def softmax(logits: ArrayLike) -> NDArray[np.float64]:
    """Class probabilities from logits ``[N, K]``: softmax over K in float64 (max-shifted), ``[N, K]``."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def abnormal_probability(probs: ArrayLike, abnormal_indices: Sequence[int]) -> NDArray[np.float64]:
    """``p_abnormal`` ``[N]``: class probabilities ``[N, K]`` summed over the abnormal classes' indices.

    A binary task has one abnormal class, so this is its column (for the default pneumonia task,
    ``softmax[:, 1]``). A sum a rounding error outside [0, 1] is clipped. ``ValueError`` when no
    index is given.
    """
    if len(abnormal_indices) == 0:
        raise ValueError("abnormal_probability: no abnormal class index given")
    summed = np.asarray(probs, dtype=np.float64)[:, list(abnormal_indices)].sum(axis=1)
    return np.clip(summed, 0.0, 1.0)


def decide(probs: ArrayLike, task_kind: str, abnormal_indices: Sequence[int], threshold: float) -> NDArray[np.int64]:
    """The decided class index per row of class probabilities ``[N, K]``, ``[N]`` int64.

    ``binary``: the abnormal class where ``p_abnormal >= threshold``, else the other class;
    ``multiclass``: arg-max. ``ValueError`` for another kind, or a binary task that is not two
    classes with one abnormal class.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if task_kind == "multiclass":
        return probs.argmax(axis=1).astype(np.int64)
    if task_kind != "binary":
        raise ValueError(f"decide: unknown task kind {task_kind!r}; expected binary or multiclass")
    if probs.shape[1] != 2 or len(abnormal_indices) != 1:
        raise ValueError("decide: a binary task has two classes and one abnormal class")
    positive = int(abnormal_indices[0])
    flagged = abnormal_probability(probs, abnormal_indices) >= threshold
    return np.where(flagged, positive, 1 - positive).astype(np.int64)
