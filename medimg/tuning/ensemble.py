"""Ensembles and test-time augmentation as one network, exported as one ONNX graph (``model.ensemble``).

The members' softmax probabilities are averaged over the members and the views (the input itself, then one view
per flip of ``model.ensemble.tta_flips``), and the network outputs ``log(mean probability)`` ``[N, K]`` under the
usual output name. ``softmax`` of that output is the mean probability itself (the mean sums to one), so every
consumer that applies :func:`medimg.probabilities.softmax` to a model's logits (evaluate, gate, drift, predict,
serve) gets the ensemble's probability without knowing it is one. The log-mean is computed as
``logsumexp(log_softmax(member logits)) - log(members x views)``, which never underflows to ``-inf``.

Why members trained by the retrain flow (``model.ensemble.members``) and not the top trials of a study: the
ensemble is then a value of the params, so the run key, ``medimg reproduce``, resuming a crashed run, the gates,
the registry and the model card treat it as any other model, and the members' lineage is one MLflow run. A study's
best trial is what ``medimg tune`` hands to that flow (:mod:`medimg.tuning.best_params`); set
``model.ensemble.members`` in the best params file to train an ensemble of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medimg.config import FLIP_AXES, EnsembleConfig, Params
from medimg.contracts import TrainSummary
from medimg.training.models import load_model

#: The sentence added to ``medimg.output`` of an ensemble.
OUTPUT_NOTE = (
    "; this graph is an ensemble (medimg.ensemble): its logits are log(mean probability) over the members and "
    "test-time views, so softmax of them is the mean probability"
)


class EnsembleModel(nn.Module):
    """``log(mean softmax probability)`` ``[N, K]`` of ``members`` over the views of the input.

    ``members``: networks mapping ``[N, C, ...]`` to logits ``[N, K]``; ``flips``: names of
    :data:`medimg.config.FLIP_AXES` (each adds the input reversed along that axis as a view). ``ValueError`` with
    no member or an unknown flip.
    """

    def __init__(self, members: Sequence[nn.Module], flips: Sequence[str] = ()) -> None:
        super().__init__()
        if not members:
            raise ValueError("EnsembleModel: no member")
        unknown = [f for f in flips if f not in FLIP_AXES]
        if unknown:
            raise ValueError(f"EnsembleModel: unknown flips {unknown}; known: {sorted(FLIP_AXES)}")
        self.members = nn.ModuleList(members)
        self.flip_dims = tuple(FLIP_AXES[f] for f in flips)
        self.log_views = math.log(len(members) * (1 + len(flips)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``log(mean probability)`` ``[N, K]`` for inputs ``[N, C, H, W]`` (or ``[N, C, D, H, W]``)."""
        views = [x, *(torch.flip(x, dims=(axis,)) for axis in self.flip_dims)]
        log_probs = torch.stack([torch.log_softmax(member(view), dim=1) for member in self.members for view in views])
        return torch.logsumexp(log_probs, dim=0) - self.log_views


def member_params(params: Params, seed: int) -> Params:
    """``params`` with ``train.seed`` set to ``seed``: one member of :func:`medimg.config.member_seeds`."""
    return params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})


def load_trained(params: Params, trained: TrainSummary) -> nn.Module:
    """The network the train step produced, in eval mode on the CPU: a plain model, or an :class:`EnsembleModel`
    of the members' checkpoints (``trained.members``; one member with flips: ``trained.checkpoint``) when
    ``model.ensemble`` is set. ``ValueError`` when the summary holds another number of members than the params."""
    channels, classes = params.preprocess.channels, len(params.task.class_names)
    config: EnsembleConfig = params.model.ensemble
    if not config.enabled:
        return load_model(params.model, channels, classes, trained.checkpoint)
    checkpoints = [m.checkpoint for m in trained.members] or [trained.checkpoint]
    if len(checkpoints) != config.members:
        raise ValueError(
            f"model.ensemble.members is {config.members} but the training produced {len(checkpoints)} member(s)"
        )
    members = [load_model(params.model, channels, classes, path) for path in checkpoints]
    return EnsembleModel(members, config.tta_flips).eval()


def explained(model: nn.Module) -> nn.Module:
    """The network Grad-CAM explains: an ensemble's first member on the plain view (hooks on a layer that runs once
    per view would keep the last, flipped, call), else the model itself."""
    return model.members[0] if isinstance(model, EnsembleModel) else model


def description(params: Params, trained: TrainSummary, run_id: str) -> dict[str, object]:
    """The ``medimg.ensemble`` metadata: each member's index, seed, best epoch, validation AUC and MLflow run, the
    flips, the number of views and how they are combined."""
    config = params.model.ensemble
    members = trained.members
    rows = (
        [
            {
                "index": m.index,
                "seed": m.seed,
                "best_epoch": m.best_epoch,
                "best_val_auc": m.best_val_auc,
                "checkpoint_sha256": m.checkpoint_sha256,
                "mlflow_run_id": run_id,
            }
            for m in members
        ]
        if members
        else [
            {
                "index": 0,
                "seed": params.train.seed,
                "best_epoch": trained.best_epoch,
                "best_val_auc": trained.best_val_auc,
                "mlflow_run_id": run_id,
            }
        ]
    )
    return {
        "members": rows,
        "tta_flips": list(config.tta_flips),
        "views": 1 + len(config.tta_flips),
        "combine": "mean of the softmax probabilities over members x views",
        "output": "log(mean probability); softmax(output) = mean probability",
    }
