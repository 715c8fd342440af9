"""The review pages on a real registry: cases scored by the registered champion (ONNX Runtime), Grad-CAM from
the version's own PyTorch weights, a correction that lands in the inbox with its provenance, and promotion and
rollback from the admin page through :mod:`medimg.promotion` (the audited path of ``medimg promote``).

The registry is a full clone of the session's template (``tests/registry_fixtures.py``: v1 champion, v2
challenger that failed its gates), with its ``runs/<run id>/best.pt`` weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from datapaths import CR_CHEST
from lineage_fixtures import full_clone
from medimg import audit, preprocess, registry
from medimg.data import deid
from medimg.data.deid import DEMO_SECRET
from medimg.evaluation.gradcam import grad_cam
from medimg.predict import prepare_input, score_prepared
from medimg.pull.card import params_from_run
from medimg.review.cases import CaseStore
from medimg.review.overlay import MAX_ALPHA
from medimg.review.reviews import ReviewLog
from medimg.serving.metrics import ServeMetrics
from medimg.serving.model_follower import ModelFollower
from medimg.serving.prediction_log import LoggedPrediction
from medimg.training.models import build_model
from registry_fixtures import MODEL, _activated
from review_site import PASSWORDS, make_site, make_users, real_images

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def users_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("users") / "users.json"
    make_users(path)
    return path


@pytest.fixture(scope="module")
def clone(tmp_path_factory, registry_template):
    copied = full_clone(registry_template, tmp_path_factory.mktemp("review-registry"))
    mp = _activated(copied.ws)
    yield copied
    mp.undo()


@pytest.fixture(scope="module")
def follower(clone, tmp_path_factory):
    follower = ModelFollower(MODEL, "champion", tmp_path_factory.mktemp("models"), 3600, ServeMetrics())
    assert follower.refresh().outcome == "loaded"
    return follower


def _scored_case(store: CaseStore, follower: ModelFollower, data: bytes, name: str):
    """What the DICOM node does with one image: prepare, score with the champion, log entry, case."""
    loaded = follower.current()
    model = loaded.model
    prepared = prepare_input(model, name, model.input_rules, data=data)
    assert prepared.error is None and prepared.stored is not None
    prediction = score_prepared(model, prepared)
    entry = LoggedPrediction(
        source="dicom",
        model_name=loaded.name,
        model_version=loaded.version,
        onnx_sha256=loaded.onnx_sha256,
        latency_ms=5.0,
        class_probabilities=prediction.class_probabilities,
        p_abnormal=prediction.probability,
        predicted_class=prediction.label,
        abnormal=prediction.abnormal,
        threshold=model.threshold,
        study=deid.pseudonym(f"study-{name}", DEMO_SECRET, "study"),
        modality="CR",
        input_mean=float(prepared.stored.mean()),
        input_std=float(prepared.stored.std()),
    )
    store.recorder(entry, prepared.stored, loaded)
    return store.get(store.all()[0].case_id), prepared.stored


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def test_a_scored_case_with_its_gradcam_and_a_correction_into_the_inbox(clone, follower, users_file, tmp_path):
    site = make_site(tmp_path, users_file, ws_root=clone.ws.root, holder=follower)
    case, stored = _scored_case(site.cases, follower, CR_CHEST.read_bytes(), "cr")
    assert case.model_version == "1" and case.class_names == ("normal", "pneumonia")
    assert np.array_equal(site.cases.pixels(case.case_id), stored)

    client = site.client()
    csrf = site.login(client, "rad")
    listed = client.get("/review/worklist").text
    assert case.case_id in listed
    page = client.get(f"/review/cases/{case.case_id}").text
    assert 'id="show-gradcam" checked' in page and 'id="gradcam"' in page
    assert f"{case.p_abnormal:.4f}" in page and f"v{case.model_version}" in page
    assert "1.2.276" not in page  # no UID of the file, only pseudonyms

    # the overlay is Grad-CAM of the decided class with v1's own weights, drawn as the alpha of the PNG
    overlay = client.get(f"/review/cases/{case.case_id}/gradcam.png")
    assert overlay.status_code == 200
    rgba = np.asarray(Image.open(io.BytesIO(overlay.content)))
    assert rgba.shape == (*stored.shape, 4)
    run_id = registry.get_version(MODEL, "1").run_id
    params = params_from_run(registry.run_params(run_id))
    network = build_model(params.model, params.preprocess.channels, 2)
    network.load_state_dict(torch.load(clone.ws.runs / run_id / "best.pt", map_location="cpu", weights_only=True))
    heat = grad_cam(network, preprocess.apply(stored, params.preprocess), case.class_names.index(case.predicted_class))
    np.testing.assert_allclose(rgba[..., 3] / 255.0, MAX_ALPHA * heat[0], atol=1 / 255 + 1e-6)
    alpha = rgba[..., 3].astype(int)
    # a real map, not a flat wash: hot somewhere, and much cooler elsewhere (the floor depends on the
    # trained weights: Grad-CAM is max-normalised, not min-normalised, so the coolest pixel need not be 0)
    assert alpha.max() > 100 and alpha.max() - alpha.min() > 80, (alpha.min(), alpha.max())

    # the reader corrects the label; the example and its provenance are in the inbox
    corrected = "normal" if case.predicted_class == "pneumonia" else "pneumonia"
    answer = client.post(
        f"/review/cases/{case.case_id}/review", data={"csrf": csrf, "label": corrected, "comment": "no consolidation"}
    )
    assert answer.status_code == 303
    assert "Your review is saved" in client.get(answer.headers["location"]).text
    (review,) = ReviewLog(site.ws.reviews_log).read()
    assert (review.reader, review.model_said, review.reader_said, review.agrees) == (
        "rad",
        case.predicted_class,
        corrected,
        False,
    )
    example = site.inbox / corrected / f"review-{case.case_id}.png"
    assert review.example == f"{corrected}/review-{case.case_id}.png" and example.is_file()
    assert example.read_bytes() == site.cases.image(case.case_id)
    assert review.example_sha256 == hashlib.sha256(example.read_bytes()).hexdigest()
    provenance = json.loads(example.with_name(f"review-{case.case_id}.provenance.json").read_text())
    assert provenance["reader_pseudonym"] == deid.pseudonym("rad", DEMO_SECRET, "reader")
    assert provenance["label"] == corrected and provenance["model_version"] == "1"
    assert provenance["image_sha256"] == review.example_sha256
    assert "rad" not in json.dumps({k: v for k, v in provenance.items() if k != "reader_pseudonym"})
    assert "no consolidation" not in json.dumps(provenance)  # the comment stays in the workspace

    # the worklist's filters
    second, _ = _scored_case(site.cases, follower, _png(real_images(1, start=7)[0]), "png")
    ids = {
        show: client.get(f"/review/worklist?show={show}").text
        for show in ("to_review", "reviewed", "disagreements", "all")
    }
    assert second.case_id in ids["to_review"] and case.case_id not in ids["to_review"]
    assert case.case_id in ids["reviewed"] and second.case_id not in ids["reviewed"]
    assert case.case_id in ids["disagreements"] and second.case_id not in ids["disagreements"]
    assert case.case_id in ids["all"] and second.case_id in ids["all"]
    assert case.case_id not in client.get("/review/worklist?show=all&version=2").text
    assert client.get("/review/worklist?show=bogus").status_code == 422


def test_without_the_versions_weights_the_page_says_so(clone, follower, users_file, tmp_path):
    site = make_site(tmp_path, users_file, ws_root=clone.ws.root, holder=follower)
    case, _ = _scored_case(site.cases, follower, _png(real_images(1, start=3)[0]), "png")
    weights = clone.ws.runs / registry.get_version(MODEL, "1").run_id / "best.pt"
    aside = weights.with_name("best.pt.aside")
    shutil.move(weights, aside)
    try:
        site = make_site(tmp_path, users_file, ws_root=clone.ws.root, holder=follower)  # no remembered network
        client = site.client()
        site.login(client, "rad")
        page = client.get(f"/review/cases/{case.case_id}").text
        assert 'id="no-overlay"' in page and "no PyTorch weights of v1" in page and 'id="gradcam"' not in page
        assert client.get(f"/review/cases/{case.case_id}/gradcam.png").status_code == 404
    finally:
        shutil.move(aside, weights)


def test_promotion_and_rollback_from_the_admin_page_are_audited(registry_template, users_file, tmp_path):
    copied = full_clone(registry_template, tmp_path / "registry")
    mp = _activated(copied.ws)
    try:
        site = make_site(tmp_path, users_file, ws_root=copied.ws.root)
        audit_before = audit.read(copied.ws.audit_log)

        def champion() -> str:
            return registry.version_by_alias(MODEL, registry.CHAMPION).version

        rad = site.client()
        csrf = site.login(rad, "rad")
        forced = {"csrf": csrf, "version": "2", "reason": "radiologist tries", "force": "yes"}
        assert rad.post("/review/admin/promote", data=forced).status_code == 403
        assert champion() == "1" and audit.read(copied.ws.audit_log) == audit_before

        boss = site.client()
        csrf = site.login(boss, "boss")
        admin = boss.get("/review/admin").text
        assert 'id="promote-form"' in admin and "v2" in admin
        assert boss.post("/review/admin/promote", data={"csrf": csrf, "version": "2", "reason": " "}).status_code == 422
        refused = boss.post("/review/admin/promote", data={"csrf": csrf, "version": "2", "reason": "better AUC"})
        assert refused.status_code == 409 and "failed its gates" in refused.text  # v2 failed its gates
        assert champion() == "1" and audit.read(copied.ws.audit_log) == audit_before

        answer = boss.post(
            "/review/admin/promote", data={"csrf": csrf, "version": "2", "reason": "reader study", "force": "yes"}
        )
        assert answer.status_code == 303 and champion() == "2"
        event = audit.read(copied.ws.audit_log)[-1]
        assert (event["who"], event["action"], event["version"], event["forced"]) == ("boss", "promote", "2", True)
        mirrored = [json.loads(v) for k, v in registry.model_tags(MODEL).items() if k.startswith("medimg.audit.")]
        assert any(e["who"] == "boss" and e["reason"] == "reader study" for e in mirrored)

        answer = boss.post("/review/admin/rollback", data={"csrf": csrf, "reason": "false positives"})
        assert answer.status_code == 303 and champion() == "1"
        event = audit.read(copied.ws.audit_log)[-1]
        assert (event["who"], event["action"], event["version"], event["previous"]) == ("boss", "rollback", "1", "2")
        assert "false positives" in boss.get("/review/admin").text
        assert PASSWORDS["boss"] not in copied.ws.audit_log.read_text()
    finally:
        mp.undo()
