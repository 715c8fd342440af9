"""Grad-CAM overlays of review cases, from the registered version's own PyTorch weights.

The registry holds the ONNX file, which has no gradients; the PyTorch weights of a version are the best
epoch's ``state_dict`` its training run kept in the workspace, ``runs/<MLflow run id>/best.pt``
(:mod:`medimg.steps.train`; not logged to MLflow). The network is rebuilt from the run's own logged params
(``model.*``, ``preprocess.*``, :func:`medimg.pull.card.params_from_run`), the weights loaded, and
:func:`medimg.evaluation.gradcam.grad_cam` explains the case's decided class on the case's stored image
through the model's preprocessing contract.

The overlay is a transparent RGBA PNG of the image's size (the ``jet`` colour map, opacity growing with the
heat), laid over the grey image by the page, so the reader can switch it off. It is made on a case's first
view and cached beside the case (``gradcam.png``); when it cannot be made (no weights in this workspace, a
3D or segmentation model, weights that do not fit) the reason is cached instead (``gradcam.json``) and the
page says so: no made-up overlay is ever shown.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from medimg import registry
from medimg.review.cases import Case, CaseStore
from medimg.workspace import Workspace

log = logging.getLogger(__name__)

OVERLAY_FILE = "gradcam.png"
NO_OVERLAY_FILE = "gradcam.json"
WEIGHTS_FILE = "best.pt"
#: Most opacity of the hottest pixel.
MAX_ALPHA = 0.6


@dataclass(frozen=True)
class Overlay:
    """A case's overlay: ``png`` (RGBA, the image's size) or ``None`` with ``reason`` saying why there is none."""

    png: bytes | None
    reason: str | None = None


def heat_png(heat: np.ndarray) -> bytes:
    """A heatmap in [0, 1] ``[H, W]`` as an RGBA PNG: ``jet`` colours, alpha ``MAX_ALPHA * heat``."""
    from matplotlib import colormaps  # here: matplotlib only once an overlay is drawn

    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64)), 0.0, 1.0)
    rgba = colormaps["jet"](heat)
    rgba[..., 3] = MAX_ALPHA * heat
    out = io.BytesIO()
    Image.fromarray(np.rint(rgba * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


class _Explainer:
    """One version's rebuilt network and preprocessing contract."""

    def __init__(self, network: Any, contract: Any) -> None:
        self.network = network
        self.contract = contract
        self.lock = threading.Lock()  # one Grad-CAM at a time: the hooks are per module


class OverlayMaker:
    """Makes and caches the overlays of ``cases`` with the weights kept in workspace ``ws`` (module docstring)."""

    def __init__(self, ws: Workspace, cases: CaseStore) -> None:
        self.ws = ws
        self.cases = cases
        self._explainers: dict[tuple[str, str], _Explainer | str] = {}
        self._lock = threading.Lock()

    def overlay(self, case: Case) -> Overlay:
        """The case's overlay, made now on its first view and cached beside it."""
        folder = self.cases.folder(case.case_id)
        if folder is None:
            return Overlay(None, "no such case")
        made, refused = folder / OVERLAY_FILE, folder / NO_OVERLAY_FILE
        if made.is_file():
            return Overlay(made.read_bytes())
        if refused.is_file():
            return Overlay(None, str(json.loads(refused.read_text(encoding="utf-8"))["reason"]))
        overlay = self._make(case)
        target, data = (made, overlay.png) if overlay.png is not None else (refused, _reason_json(overlay.reason))
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return overlay

    def _make(self, case: Case) -> Overlay:
        if case.task_kind == "segmentation":
            return Overlay(None, "Grad-CAM overlays are made for classification models only")
        explainer = self._explainer(case)
        if isinstance(explainer, str):
            return Overlay(None, explainer)
        pixels = self.cases.pixels(case.case_id)
        if pixels is None:
            return Overlay(None, "the case's image is missing")
        # here: torch and the preprocessing only once an overlay is made
        from medimg import preprocess
        from medimg.evaluation.gradcam import grad_cam

        x = preprocess.apply(pixels, explainer.contract)
        with explainer.lock:
            heat = grad_cam(explainer.network, x, target_class=case.class_names.index(case.predicted_class))[0]
        if heat.shape != pixels.shape:  # the contract resized the image: show the map at the image's size
            heat = np.asarray(
                Image.fromarray(heat.astype(np.float32)).resize(pixels.shape[::-1], Image.Resampling.BILINEAR)
            )
        return Overlay(heat_png(heat))

    def _explainer(self, case: Case) -> _Explainer | str:
        key = (case.model_name, case.model_version)
        with self._lock:
            known = self._explainers.get(key)
            if known is None:
                known = self._load(case)
                self._explainers[key] = known
        return known

    def _load(self, case: Case) -> _Explainer | str:
        """The version's network, or why it cannot be rebuilt."""
        try:
            info = registry.get_version(case.model_name, case.model_version)
        except Exception as err:  # MlflowException and transport errors: the registry is not the page's fault
            log.warning("overlay: model %s v%s not readable (%s)", case.model_name, case.model_version, err)
            return f"model {case.model_name} v{case.model_version} could not be read from the registry"
        if not info.run_id:
            return f"model v{case.model_version} has no training run: no PyTorch weights to explain it with"
        weights = self.ws.runs / info.run_id / WEIGHTS_FILE
        if not weights.is_file():
            return (
                f"no PyTorch weights of v{case.model_version} in this workspace (runs/<run id>/{WEIGHTS_FILE}): "
                "no Grad-CAM overlay"
            )
        # here: torch and the model zoo only once an overlay is made
        import torch

        # here: the run's params and the model zoo (torch) only once an overlay is made
        from medimg.pull.card import params_from_run
        from medimg.training.models import build_model

        try:
            params = params_from_run(registry.run_params(info.run_id))
            if params.preprocess.dims != 2:
                return "Grad-CAM overlays on the review page are made for 2D models only"
            network = build_model(params.model, params.preprocess.channels, len(case.class_names))
            network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as err:  # weights or params that do not fit: say so, never draw a wrong overlay
            log.warning("overlay: v%s not rebuilt (%s: %s)", case.model_version, type(err).__name__, err)
            return f"the PyTorch weights of v{case.model_version} could not be loaded ({type(err).__name__})"
        network.eval()
        return _Explainer(network, params.preprocess)


def _reason_json(reason: str | None) -> bytes:
    return (json.dumps({"reason": reason or "no overlay"}) + "\n").encode("utf-8")
