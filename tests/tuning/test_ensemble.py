"""Ensembles and test-time flips as one ONNX graph (issue 17): the graph's softmax is the mean of the members'
probabilities over the views, on real PneumoniaMNIST images; PyTorch/ONNX Runtime parity; the metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medimg import preprocess
from medimg.config import member_seeds, parse_params
from medimg.contracts import MemberSummary, TrainSummary
from medimg.data.medmnist import locate
from medimg.export.onnx_export import check_parity, export, onnx_logits, read_metadata, session
from medimg.probabilities import softmax
from medimg.scoring import OnnxModel
from medimg.steps.export import metadata
from medimg.training.data import SplitArrays
from medimg.training.loop import train
from medimg.tuning import ensemble
from medimg.tuning.ensemble import EnsembleModel, explained, load_trained

FLIPS = ("horizontal", "vertical")


@pytest.fixture(scope="module")
def real(data_dir, tmp_path_factory):
    """Three members of a width-8 compact ResNet, each trained for 3 steps with its own seed on real images, and
    64 real test images."""
    params = parse_params(
        {
            "model": {"width": 8, "ensemble": {"members": 3, "tta_flips": list(FLIPS)}},
            "train": {"epochs": 1, "max_steps": 3, "batch_size": 32, "num_threads": 1},
        }
    )
    split = locate("pneumoniamnist", data_dir, tmp_path_factory.mktemp("npz"), download=False).load()
    (train_images, train_labels), (test_images, _) = split["train"], split["test"]
    train_split = SplitArrays([str(i) for i in range(256)], train_images[:256], train_labels[:256].astype(np.int64))
    val_split = SplitArrays(
        [str(i) for i in range(128)], test_images[64:192], split["test"][1][64:192].astype(np.int64)
    )
    members = []
    for seed in member_seeds(params):
        seeded = params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})
        members.append(train(seeded, train_split, val_split).model)
    return params, members, preprocess.apply(test_images[:64], params.preprocess)


def _member_probabilities(members, x: torch.Tensor, flips=FLIPS) -> np.ndarray:
    """The mean over members and views of softmax(member logits), computed apart from the graph, float64."""
    axes = {"horizontal": -1, "vertical": -2}
    views = [x, *(torch.flip(x, dims=(axes[f],)) for f in flips)]
    with torch.no_grad():
        probs = [softmax(m(v).numpy()) for m in members for v in views]
    return np.mean(probs, axis=0)


def test_member_seeds_follow_the_training_seed():
    params = parse_params({"train": {"seed": 7}, "model": {"ensemble": {"members": 3}}})
    assert member_seeds(params) == (7, 8, 9)


def test_the_members_differ(real):
    _, members, x = real
    with torch.no_grad():
        first, second = (softmax(m(x).numpy()) for m in members[:2])
    assert np.abs(first - second).max() > 1e-3  # else the mean below would prove nothing


def test_onnx_graph_softmax_is_the_mean_of_the_members_probabilities(real, tmp_path):
    _, members, x = real
    model = EnsembleModel(members, FLIPS).eval()
    path = export(model, x, tmp_path / "ensemble.onnx", 18, {})
    parity = check_parity(model, path, x, atol=1e-4)
    assert parity.passed, parity
    graph = softmax(onnx_logits(session(path), x.numpy()))
    expected = _member_probabilities(members, x)
    assert np.abs(graph - expected).max() < 1e-6
    assert np.allclose(graph.sum(axis=1), 1.0, atol=1e-12)
    # not merely close to some member: the mean differs from each member alone
    assert all(np.abs(graph - _member_probabilities([m], x)).max() > 1e-4 for m in members)


def test_a_flip_is_a_view_of_its_own(real):
    _, members, x = real
    with torch.no_grad():
        flipped = softmax(EnsembleModel(members[:1], ("horizontal",))(x).numpy())
        plain = softmax(EnsembleModel(members[:1])(x).numpy())
        mirrored = softmax(members[0](torch.flip(x, dims=(-1,))).numpy())
    np.testing.assert_allclose(flipped, (plain + mirrored) / 2, rtol=0, atol=1e-6)
    assert np.abs(flipped - plain).max() > 1e-5  # the flip changed the answer: the view is really there


def test_log_mean_never_underflows():
    class Confident(torch.nn.Module):
        def forward(self, x):
            return torch.stack([torch.full((len(x),), -200.0), torch.full((len(x),), 200.0)], dim=1)

    out = EnsembleModel([Confident(), Confident()])(torch.zeros(2, 1, 4, 4))
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(softmax(out.numpy()), [[0.0, 1.0], [0.0, 1.0]], atol=1e-12)


def test_unknown_flip_and_no_member_are_refused():
    with pytest.raises(ValueError, match="unknown flips"):
        EnsembleModel([torch.nn.Identity()], ("sideways",))
    with pytest.raises(ValueError, match="no member"):
        EnsembleModel([])


def test_load_trained_and_the_metadata_name_the_members(real, tmp_path):
    params, members, x = real
    rows = []
    for index, member in enumerate(members):
        path = tmp_path / f"member{index}.pt"
        torch.save(member.state_dict(), path)
        rows.append(
            MemberSummary(
                index=index,
                seed=member_seeds(params)[index],
                checkpoint=path,
                checkpoint_sha256="0" * 64,
                best_epoch=1,
                best_val_auc=0.5 + index / 10,
            )
        )
    trained = TrainSummary(
        checkpoint=rows[0].checkpoint,
        best_epoch=1,
        best_val_auc=0.7,
        epochs_run=1,
        steps=3,
        train_seconds=1.0,
        images_per_second=1.0,
        history=(),
        n_train=256,
        n_val=128,
        device="cpu",
        world_size=1,
        members=tuple(rows),
    )
    loaded = load_trained(params, trained)
    assert isinstance(loaded, EnsembleModel) and len(loaded.members) == 3
    assert explained(loaded) is loaded.members[0]
    with torch.no_grad():
        np.testing.assert_allclose(softmax(loaded(x).numpy()), _member_probabilities(members, x), atol=1e-6)
    with pytest.raises(ValueError, match="members is 2"):
        load_trained(
            params.model_copy(
                update={
                    "model": params.model.model_copy(
                        update={"ensemble": params.model.ensemble.model_copy(update={"members": 2})}
                    )
                }
            ),
            trained,
        )

    meta = metadata(params, "run-1", "data-1", 0.5)
    meta["medimg.ensemble"] = ensemble.description(params, trained, "run-1")
    meta["medimg.output"] = f"{meta['medimg.output']}{ensemble.OUTPUT_NOTE}"
    path = export(loaded, x, tmp_path / "m.onnx", 18, meta)
    described = json.loads(read_metadata(path)["medimg.ensemble"])
    assert [m["seed"] for m in described["members"]] == [42, 43, 44]
    assert {m["mlflow_run_id"] for m in described["members"]} == {"run-1"}
    assert described["tta_flips"] == list(FLIPS) and described["views"] == 3
    # every consumer reads it as a plain model: OnnxModel's class probabilities are the mean probabilities
    scored = OnnxModel(path).class_probabilities(x.numpy())
    assert np.abs(scored - _member_probabilities(members, x)).max() < 1e-6


def test_a_plain_model_keeps_its_params_hash():
    plain = parse_params({})
    assert plain.fingerprint() == parse_params({"model": {"ensemble": {"members": 1, "tta_flips": []}}}).fingerprint()
    assert plain.fingerprint() != parse_params({"model": {"ensemble": {"members": 2}}}).fingerprint()
    assert plain.fingerprint() != parse_params({"model": {"ensemble": {"tta_flips": ["horizontal"]}}}).fingerprint()
