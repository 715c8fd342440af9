"""The HTTP side of ``medimg serve``: FastAPI, the Open Inference Protocol v2 and medimg's own endpoints.

Endpoints (every one but the two health checks needs an HTTP Basic login against the workspace's
user store, :mod:`medimg.users`; any role may infer; a missing or wrong login is 401 with
``WWW-Authenticate: Basic``):

* ``GET /v2/health/live``, ``GET /v2/health/ready``: 200, or 503 while no verified model is loaded;
* ``GET /v2``: server metadata;
* ``GET /v2/models/{name}[/versions/{version}]``: model metadata (input name, datatype FP32 and
  shape with -1 for the batch; outputs; the model's classes, threshold and task);
* ``GET /v2/models/{name}[/versions/{version}]/ready``;
* ``POST /v2/models/{name}[/versions/{version}]/infer``: v2 inference (:mod:`medimg.serving.v2`,
  JSON or the binary tensor extension). The input is the model's preprocessed tensor (FP32
  ``[N, C, H, W]``, ``[N, C, D, H, W]`` for a 3D model), exactly what :func:`medimg.preprocess.apply`
  gives. Outputs: ``logits`` (FP32 ``[N, K]``), ``probabilities`` (FP64 ``[N, K]``, softmax in
  ``class_names`` order), ``p_abnormal`` (FP64 ``[N]``, their sum over the abnormal classes) and
  ``abnormal`` (BOOL ``[N]``, p_abnormal >= the model's threshold): the numbers ``medimg predict``
  gives. A segmentation model answers ``logits`` (FP32 ``[N, K, D, H, W]``), ``probabilities`` (FP32,
  softmax over K) and ``mask`` (UINT8 ``[N, D, H, W]``, the arg-max label);
* ``POST /medimg/v1/models/{name}/predict``: the body is one DICOM, PNG or JPEG file; medimg's own
  decoding, input checks and preprocessing (those of ``medimg predict``, from the model's own
  contract) and the fields of a ``medimg predict`` row (without ``file``); an input the model must
  not score is answered 422 with its reason code in ``error`` (``modality_mismatch``, ``truncated``, ...);
* ``GET /metrics``: Prometheus (:mod:`medimg.serving.metrics`);
* ``GET /medimg/v1/status``: the model in service, readiness and whether the DICOM path is ready.

Every answer names the model it was answered with: headers ``X-Medimg-Model-Version`` and
``X-Medimg-Onnx-Sha256`` (``none`` before a model is loaded), and in JSON ``model_version`` and
``onnx_sha256`` (a v2 inference response: ``model_version`` and ``parameters.onnx_sha256``). One
request keeps one model from start to end (:meth:`~medimg.serving.loaded_model.ModelHolder.current`
is read once), so a swap never mixes versions. Errors are JSON ``{"error": "..."}`` (the v2 form):
404 for an unknown model name or version, 400 for a malformed request or a tensor of the wrong
datatype or shape (the message says which), 413 for a body over ``serve.max_body_mb``, 503 before a
model is loaded.

Every inference is appended to the prediction log (:mod:`medimg.serving.prediction_log`): one
line per tensor row or file, with pseudonyms only (an uploaded DICOM's study, series and SOP
instance UIDs through :func:`medimg.data.deid.pseudonym`, when the service has the key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.datastructures import MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import medimg
from medimg import preprocess
from medimg.config import Params
from medimg.data import deid
from medimg.data.dicom import read_header_bytes
from medimg.data.images import BadImage
from medimg.export.onnx_export import onnx_logits
from medimg.pacs.selection import code_string
from medimg.predict import DIMENSION_REASONS, prepare_input, score_prepared, to_rows
from medimg.probabilities import softmax
from medimg.scoring import DEFAULT_BATCH_SIZE, SEGMENTATION_BATCH_SIZE, OnnxModel
from medimg.serving import v2
from medimg.serving.loaded_model import LoadedModel, ModelHolder
from medimg.serving.metrics import ServeMetrics
from medimg.serving.prediction_log import LoggedPrediction, PredictionLog
from medimg.users import CachedVerifier, User, UserStore

log = logging.getLogger(__name__)

VERSION_HEADER = "X-Medimg-Model-Version"
SHA256_HEADER = "X-Medimg-Onnx-Sha256"
REALM = "medimg"
#: The ONNX Runtime platform name Triton's model repository uses for these models.
PLATFORM = "onnxruntime_onnx"
#: HTTP Basic credentials of a request, ``None`` when it has none (the 401 is :func:`create_app`'s ``login``).
_BASIC = HTTPBasic(realm=REALM, auto_error=False)


@dataclass(frozen=True)
class ScoredUpload:
    """One uploaded file, scored or refused: the ``medimg predict`` row fields (``row``, without ``file``), the
    reason code when refused (``refusal_reason``), the decoded image's modality and pseudonyms, and the mean
    and standard deviation of the stored-size grey uint8 image the model saw (``None`` when refused before)."""

    row: dict[str, Any]
    refusal_reason: str | None
    modality: str | None = None
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    input_mean: float | None = None
    input_std: float | None = None


def _upload_identity(data: bytes, secret: bytes | None) -> tuple[str | None, dict[str, str | None]]:
    """A DICOM upload's modality and study/series/SOP instance pseudonyms (none for PNG/JPEG, an unreadable header
    or no key)."""
    if not preprocess.has_dicom_marker(data):
        return None, {}
    try:
        header = read_header_bytes(data, "upload")
    except BadImage:
        return None, {}
    ids = deid.identity_pseudonyms(header, secret) if secret is not None else {}
    return code_string(header.get("Modality")), ids


def score_upload(model: OnnxModel, data: bytes, secret: bytes | None) -> ScoredUpload:
    """Decode, check, preprocess and score one file's bytes as ``medimg predict`` does a file on disk.

    The path of every 2D input: :func:`medimg.predict.prepare_input` (decode, the model's input checks,
    the contract) and :func:`medimg.predict.score_prepared`. A refused file's row has ``error`` set to
    the reason code and no probabilities. ``secret``: the pseudonymisation key for a DICOM's UIDs
    (``None``: no pseudonyms). A 2D classification model only (see the caller).
    """
    modality, ids = _upload_identity(data, secret)
    prepared = prepare_input(model, Path("upload"), model.input_rules, data=data)
    row = to_rows([score_prepared(model, prepared)], model.class_names)[0]
    row.pop("file")
    stored = prepared.stored
    return ScoredUpload(
        row=row,
        refusal_reason=prepared.error,
        modality=modality,
        study=ids.get("study_pseudonym"),
        series=ids.get("series_pseudonym"),
        instance=ids.get("sop_pseudonym"),
        input_mean=float(stored.mean()) if stored is not None else None,
        input_std=float(stored.std()) if stored is not None else None,
    )


def _model_headers(loaded: LoadedModel | None) -> dict[str, str]:
    return {
        VERSION_HEADER: loaded.version if loaded is not None else "none",
        SHA256_HEADER: loaded.onnx_sha256 if loaded is not None else "none",
    }


def _model_fields(loaded: LoadedModel | None) -> dict[str, Any]:
    return {
        "model_version": loaded.version if loaded is not None else None,
        "onnx_sha256": loaded.onnx_sha256 if loaded is not None else None,
    }


def _answer(loaded: LoadedModel | None, body: dict[str, Any], status: int = 200) -> JSONResponse:
    """A JSON answer naming ``loaded`` in its fields and headers."""
    return JSONResponse({**body, **_model_fields(loaded)}, status_code=status, headers=_model_headers(loaded))


class _Refusal(Exception):
    """An error answer naming the model the request was answered with."""

    def __init__(self, status: int, message: str, loaded: LoadedModel | None) -> None:
        super().__init__(message)
        self.status = status
        self.loaded = loaded


def _shape(dims: list[Any]) -> list[int]:
    """An ONNX input/output shape with named or unknown dimensions as -1."""
    return [d if isinstance(d, int) else -1 for d in dims]


def _input_shape(model: OnnxModel) -> list[int]:
    return _shape(model.session.get_inputs()[0].shape)


def _outputs_metadata(model: OnnxModel) -> list[dict[str, Any]]:
    k = len(model.class_names)
    if model.is_segmentation:
        spatial = _input_shape(model)[2:]
        return [
            {"name": "logits", "datatype": "FP32", "shape": [-1, k, *spatial]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k, *spatial]},
            {"name": "mask", "datatype": "UINT8", "shape": [-1, *spatial]},
        ]
    return [
        {"name": "logits", "datatype": "FP32", "shape": [-1, k]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, k]},
        {"name": "p_abnormal", "datatype": "FP64", "shape": [-1]},
        {"name": "abnormal", "datatype": "BOOL", "shape": [-1]},
    ]


def _check_tensor(model: OnnxModel, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The one input the model takes, as FP32 of its shape; :class:`ValueError` saying what is wrong."""
    if list(inputs) != [model.input_name]:
        raise ValueError(f"the model takes one input named {model.input_name!r}; got {list(inputs)}")
    x = inputs[model.input_name]
    if x.dtype != np.float32:
        raise ValueError(f"input {model.input_name!r}: datatype {v2.datatype_of(x)}, the model takes FP32")
    expected = _input_shape(model)
    fits = len(x.shape) == len(expected) and all(e in (-1, s) for e, s in zip(expected, x.shape, strict=True))
    if not fits:
        raise ValueError(f"input {model.input_name!r}: shape {list(x.shape)}, the model takes {expected}")
    if x.shape[0] == 0:
        raise ValueError(f"input {model.input_name!r}: an empty batch")
    return x


def _run(model: OnnxModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of :func:`_outputs_metadata` for inputs ``x``, computed as :class:`medimg.scoring.OnnxModel` does."""
    if model.is_segmentation:
        logits = onnx_logits(model.session, x, SEGMENTATION_BATCH_SIZE, model.input_name)
        return {
            "logits": logits.astype(np.float32, copy=False),
            "probabilities": softmax(logits).astype(np.float32),
            "mask": logits.argmax(axis=1).astype(np.uint8),
        }
    logits = onnx_logits(model.session, x, DEFAULT_BATCH_SIZE[model.dims], model.input_name)
    probs = softmax(logits)  # what OnnxModel.class_probabilities gives
    p_abnormal = model.abnormal_from(probs)
    return {
        "logits": logits.astype(np.float32, copy=False),
        "probabilities": probs,
        "p_abnormal": p_abnormal,
        "abnormal": p_abnormal >= model.threshold,
    }


class _ServiceMiddleware:
    """Outermost layer: the body size limit (413), the model headers on every answer, and the request metrics."""

    def __init__(self, app: ASGIApp, holder: ModelHolder, metrics: ServeMetrics, max_body: int) -> None:
        self.app = app
        self.holder = holder
        self.metrics = metrics
        self.max_body = max_body

    @staticmethod
    def _endpoint(scope: Scope) -> str:
        """The route template that answered (or would have answered) ``scope``; ``unmatched`` for none."""
        route = scope.get("route")
        if route is None and "app" in scope:  # answered before routing (413): find the route it was for
            route = next((r for r in scope["app"].router.routes if r.matches(scope)[0] == Match.FULL), None)
        return str(getattr(route, "path", "unmatched"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_named(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if VERSION_HEADER.lower() not in headers:
                    for key, value in _model_headers(self.holder.current()).items():
                        headers[key] = value
            await send(message)

        try:
            body = await self._body(scope, receive)
            if body is None:
                too_large = JSONResponse(
                    {"error": f"request body larger than serve.max_body_mb ({self.max_body} bytes)"}, status_code=413
                )
                await too_large(scope, receive, send_named)
                return
            delivered = False

            async def replay() -> Message:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_named)
        finally:
            self.metrics.observe_request(self._endpoint(scope), status, time.perf_counter() - started)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole request body, or ``None`` when it is (or says it is) larger than the limit."""
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return None
        chunks = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return bytes(chunks)  # the client went away; the app sees an empty body
            chunks += message.get("body", b"")
            if len(chunks) > self.max_body:
                return None
            if not message.get("more_body", False):
                return bytes(chunks)


def create_app(
    holder: ModelHolder,
    metrics: ServeMetrics,
    prediction_log: PredictionLog,
    users: UserStore,
    params: Params,
    *,
    secret: bytes | None = None,
    dicom_ready: Callable[[], bool] | None = None,
    review_app: ASGIApp | None = None,
) -> FastAPI:
    """The service's FastAPI app (see the module docstring).

    ``holder``: the model to answer with (:class:`medimg.serving.model_follower.ModelFollower`);
    ``users``: the store logins are checked against (successful checks are remembered in memory,
    :class:`medimg.users.CachedVerifier`); ``params``: the registered model name
    (``registry.model_name``, the only ``{name}`` answered) and ``serve.max_body_mb``; ``secret``:
    the pseudonymisation key for uploaded DICOM files (``None``: logged without pseudonyms);
    ``dicom_ready``: the DICOM node's readiness (``None``: no DICOM node); ``review_app``: the review pages
    (:func:`medimg.review.web.create_review_app`), mounted under ``/review`` with their own session login.
    """
    model_name = params.registry.model_name
    verifier = CachedVerifier(users)
    app = FastAPI(
        title="medimg serve",
        version=medimg.__version__,
        docs_url=None,  # no unauthenticated pages besides the health checks
        redoc_url=None,
        openapi_url=None,
    )

    def login(credentials: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)]) -> User:
        user = verifier.verify(credentials.username, credentials.password) if credentials is not None else None
        if user is None:
            raise HTTPException(
                401,
                "login required" if credentials is None else "wrong user name or password",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
            )
        return user

    auth = [Depends(login)]  # a dependency, not a parameter: the routes' annotations are strings here

    def model_for(name: str, version: str | None = None) -> LoadedModel:
        """The model to answer with, for the ``{name}`` (and ``{version}``) of the path."""
        loaded = holder.current()
        if name != model_name:
            raise _Refusal(404, f"unknown model {name!r}; this service serves {model_name!r}", loaded)
        if loaded is None:
            raise _Refusal(503, f"model {model_name!r} is not ready: no verified version loaded yet", None)
        if version is not None and version != loaded.version:
            raise _Refusal(
                404, f"model {model_name!r} version {version!r} is not loaded; serving {loaded.version}", loaded
            )
        return loaded

    @app.exception_handler(_Refusal)
    async def refusal(request: Request, exc: _Refusal) -> JSONResponse:
        return _answer(exc.loaded, {"error": str(exc)}, exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        loaded = holder.current()
        response = _answer(loaded, {"error": str(exc.detail)}, exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        return _answer(holder.current(), {"error": f"invalid request: {problems}"}, 400)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error answering %s: %s", request.url.path, exc, exc_info=exc)
        return _answer(holder.current(), {"error": "internal error"}, 500)

    # ------------------------------------------------------------------ health (no login)

    @app.get("/v2/health/live")
    def live() -> JSONResponse:
        return _answer(holder.current(), {"live": True})

    @app.get("/v2/health/ready")
    def ready() -> JSONResponse:
        loaded = holder.current()
        return _answer(loaded, {"ready": loaded is not None}, 200 if loaded is not None else 503)

    # ------------------------------------------------------------------ v2 metadata

    @app.get("/v2", dependencies=auth)
    def server_metadata() -> JSONResponse:
        return _answer(
            holder.current(),
            {
                "name": "medimg",
                "version": medimg.__version__,
                "extensions": ["binary_tensor_data"],
                "model_name": model_name,
            },
        )

    @app.get("/v2/models/{name}", dependencies=auth)
    @app.get("/v2/models/{name}/versions/{version}", dependencies=auth)
    def model_metadata(name: str, version: str | None = None) -> JSONResponse:
        loaded = model_for(name, version)
        model = loaded.model
        return _answer(
            loaded,
            {
                "name": loaded.name,
                "versions": [loaded.version],
                "platform": PLATFORM,
                "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": _input_shape(model)}],
                "outputs": _outputs_metadata(model),
                "parameters": {
                    "task_kind": model.task_kind,
                    "class_names": ",".join(model.class_names),
                    "abnormal_classes": ",".join(model.abnormal_classes),
                    "threshold": model.threshold if not model.is_segmentation else None,
                    "input_layout": model.input_layout,
                    "alias": loaded.alias,
                },
            },
        )

    @app.get("/v2/models/{name}/ready", dependencies=auth)
    @app.get("/v2/models/{name}/versions/{version}/ready", dependencies=auth)
    def model_ready(name: str, version: str | None = None) -> JSONResponse:
        loaded = model_for(name, version)
        return _answer(loaded, {"name": loaded.name, "ready": True})

    # ------------------------------------------------------------------ v2 inference

    def infer_sync(loaded: LoadedModel, body: bytes, header_length: str | None, received: float) -> Response:
        model = loaded.model
        try:
            length = int(header_length) if header_length is not None else None
            request = v2.decode_request(body, length)
            x = _check_tensor(model, request.inputs)
        except ValueError as err:  # ProtocolError included
            raise _Refusal(400, str(err), loaded) from None
        computed = _run(model, x)
        outputs = computed
        if request.outputs is not None:
            unknown = [o.name for o in request.outputs if o.name not in computed]
            if unknown:
                raise _Refusal(400, f"unknown output(s) {unknown}; the model gives {list(computed)}", loaded)
            outputs = {o.name: computed[o.name] for o in request.outputs}
        parameters: dict[str, v2.Parameter] = {
            "onnx_sha256": loaded.onnx_sha256,
            "class_names": ",".join(model.class_names),
        }
        if not model.is_segmentation:
            parameters["threshold"] = model.threshold
        content, json_length = v2.encode_response(
            loaded.name,
            loaded.version,
            outputs,
            {name: request.wants_binary(name) for name in outputs},
            request.id,
            parameters,
        )
        latency_ms = (time.perf_counter() - received) * 1000
        if not model.is_segmentation:
            _log_tensor_rows(prediction_log, loaded, _rows(model, computed), latency_ms)
        headers = _model_headers(loaded)
        if json_length is not None:
            headers[v2.HEADER_LENGTH] = str(json_length)
        media = "application/octet-stream" if json_length is not None else "application/json"
        return Response(content, media_type=media, headers=headers)

    @app.post("/v2/models/{name}/infer", dependencies=auth)
    @app.post("/v2/models/{name}/versions/{version}/infer", dependencies=auth)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        received = time.perf_counter()
        loaded = model_for(name, version)
        if request.headers.get("content-encoding", "identity") != "identity":
            raise _Refusal(415, "compressed request bodies are not supported (Content-Encoding)", loaded)
        body = await request.body()
        return await run_in_threadpool(infer_sync, loaded, body, request.headers.get(v2.HEADER_LENGTH), received)

    # ------------------------------------------------------------------ medimg: one file

    def predict_sync(loaded: LoadedModel, body: bytes, received: float) -> JSONResponse:
        model = loaded.model
        if model.dims != 2 or model.is_segmentation:
            reason = "image_for_3d_model"
            metrics.observe_refusal(reason, "http")
            return _answer(loaded, {"error": reason, "detail": DIMENSION_REASONS[reason]}, 422)
        result = score_upload(model, body, secret)
        latency_ms = (time.perf_counter() - received) * 1000
        row = result.row
        prediction_log.append(
            LoggedPrediction(
                source="http_file",
                model_name=loaded.name,
                model_version=loaded.version,
                onnx_sha256=loaded.onnx_sha256,
                latency_ms=latency_ms,
                refusal_reason=result.refusal_reason,
                class_probabilities={c: row[f"p_{c}"] for c in model.class_names}
                if result.refusal_reason is None
                else None,
                p_abnormal=row["abnormal_probability"],
                predicted_class=row["predicted_class"],
                abnormal=row["abnormal"],
                threshold=model.threshold,
                study=result.study,
                series=result.series,
                instance=result.instance,
                modality=result.modality,
                input_mean=result.input_mean,
                input_std=result.input_std,
            )
        )
        if result.refusal_reason is not None:
            metrics.observe_refusal(result.refusal_reason, "http")
            return _answer(loaded, {"model_name": loaded.name, "threshold": model.threshold, **row}, 422)
        return _answer(loaded, {"model_name": loaded.name, "threshold": model.threshold, **row})

    @app.post("/medimg/v1/models/{name}/predict", dependencies=auth)
    async def predict_file(name: str, request: Request) -> JSONResponse:
        received = time.perf_counter()
        loaded = model_for(name)
        body = await request.body()
        if not body:
            raise _Refusal(400, "empty body: send one DICOM, PNG or JPEG file as the request body", loaded)
        return await run_in_threadpool(predict_sync, loaded, body, received)

    # ------------------------------------------------------------------ operations

    @app.get("/metrics", dependencies=auth)
    def metrics_page() -> Response:
        content, media = metrics.exposition()
        return Response(content, media_type=media, headers=_model_headers(holder.current()))

    @app.get("/medimg/v1/status", dependencies=auth)
    def status() -> JSONResponse:
        loaded = holder.current()
        model = loaded.model if loaded is not None else None
        return _answer(
            loaded,
            {
                "model_name": model_name,
                "ready": loaded is not None,
                "alias": loaded.alias if loaded is not None else None,
                "task_kind": model.task_kind if model is not None else None,
                "class_names": model.class_names if model is not None else None,
                "threshold": model.threshold if model is not None and not model.is_segmentation else None,
                "provider": model.provider if model is not None else None,
                "dicom_node": dicom_ready is not None,
                "dicom_ready": dicom_ready() if dicom_ready is not None else None,
            },
        )

    if review_app is not None:
        app.mount("/review", review_app)

    app.add_middleware(
        _ServiceMiddleware, holder=holder, metrics=metrics, max_body=int(params.serve.max_body_mb * 1024 * 1024)
    )
    return app


def _rows(model: OnnxModel, outputs: dict[str, np.ndarray]) -> list[tuple[dict[str, float], float, str, bool]]:
    """Per row of a classification batch's outputs (:func:`_run`): (class probabilities, p_abnormal, predicted
    class, abnormal)."""
    probs = outputs["probabilities"]
    names = model.predicted_classes(probs)
    return [
        (dict(zip(model.class_names, map(float, row), strict=True)), float(p), name, bool(flag))
        for row, p, name, flag in zip(probs, outputs["p_abnormal"], names, outputs["abnormal"], strict=True)
    ]


def _log_tensor_rows(
    prediction_log: PredictionLog,
    loaded: LoadedModel,
    rows: list[tuple[dict[str, float], float, str, bool]],
    latency_ms: float,
) -> None:
    for probabilities, p_abnormal, name, abnormal in rows:
        prediction_log.append(
            LoggedPrediction(
                source="http_tensor",
                model_name=loaded.name,
                model_version=loaded.version,
                onnx_sha256=loaded.onnx_sha256,
                latency_ms=latency_ms,
                class_probabilities=probabilities,
                p_abnormal=p_abnormal,
                predicted_class=name,
                abnormal=abnormal,
                threshold=loaded.model.threshold,
            )
        )
