"""Prometheus metrics of ``medimg serve``, in their own :class:`prometheus_client.CollectorRegistry`.

One :class:`ServeMetrics` per service: the HTTP app counts requests and latencies, the model
follower counts loads, swaps and failed verifications, the DICOM node reports each instance it
handled through :meth:`ServeMetrics.observe_dicom`. ``GET /metrics`` exposes them in the text
format (:meth:`ServeMetrics.exposition`).

Label values are codes, never data: an endpoint is its route template (``/v2/models/{name}/infer``,
not the requested path), a refusal reason a reason code (``modality_mismatch``), a model its
registered name, version and ONNX sha256. No tag value of a DICOM file reaches a label.

The metrics (all prefixed ``medimg_serve_``):

* ``requests_total{endpoint, status}``: HTTP answers by route and status code;
* ``request_latency_seconds{path, endpoint}``: histogram, HTTP request to answer (``path`` http), or
  DICOM instance received to result stored (``path`` dicom, ``endpoint`` dicom);
* ``refusals_total{reason, path}``: inputs refused, by reason code and path (``http`` | ``dicom``);
* ``dicom_instances_total{outcome}``: instances the DICOM node handled (``stored`` | ``refused``);
* ``model_info{name, version, onnx_sha256}``: the model answering now (one series, value 1);
* ``model_ready``: 1 once a verified model is loaded, else 0;
* ``model_swaps_total``: models put in service after the first one;
* ``model_load_failures_total{reason}``: versions that could not be put in service
  (``integrity``: sha256 mismatch or no sha256 tag; ``download``; ``load``: ONNX Runtime or medimg
  metadata; ``registry``: the alias could not be read).
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from medimg.serving.loaded_model import LoadedModel

#: Where an input came in.
InputPath = Literal["http", "dicom"]
#: Why a version could not be put in service.
LoadFailure = Literal["integrity", "download", "load", "registry"]
#: Latency buckets (seconds): a 28 px model answers in about a millisecond, a full-resolution DICOM
#: decode or a batch of 32 takes a good part of a second, the DICOM path adds a STOW-RS round trip.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PREFIX = "medimg_serve"


class ServeMetrics:
    """The service's counters, histogram and gauges in a registry of their own (``registry``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP answers by route template and status code",
            ("endpoint", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_latency_seconds",
            "seconds from receiving an input to the answer (dicom: to the result stored)",
            ("path", "endpoint"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refusals = Counter(
            f"{PREFIX}_refusals",
            "inputs refused, by reason code and path (http, dicom)",
            ("reason", "path"),
            registry=self.registry,
        )
        self.dicom_instances = Counter(
            f"{PREFIX}_dicom_instances",
            "instances the DICOM node handled, by outcome (stored, refused)",
            ("outcome",),
            registry=self.registry,
        )
        self.model = Info(f"{PREFIX}_model", "the model answering now", registry=self.registry)
        self.ready = Gauge(f"{PREFIX}_model_ready", "1 once a verified model is loaded", registry=self.registry)
        self.swaps = Counter(f"{PREFIX}_model_swaps", "models put in service after the first", registry=self.registry)
        self.load_failures = Counter(
            f"{PREFIX}_model_load_failures",
            "versions that could not be put in service, by reason (integrity, download, load, registry)",
            ("reason",),
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, status: int, latency_s: float) -> None:
        """One HTTP answer: ``endpoint`` the route template (``unmatched`` for none), ``status`` its code,
        ``latency_s`` seconds from receiving the request to the answer."""
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(path="http", endpoint=endpoint).observe(latency_s)

    def observe_refusal(self, reason: str, path: InputPath) -> None:
        """One input refused with reason code ``reason`` on ``path``."""
        self.refusals.labels(reason=reason, path=path).inc()

    def observe_dicom(self, refusal_reason: str | None, latency_s: float) -> None:
        """One instance handled by the DICOM node: refused with ``refusal_reason`` (a reason code), or
        ``None`` when its result was stored; ``latency_s`` from receiving it to the result stored (or the
        refusal). The DICOM node's observer callback."""
        if refusal_reason is None:
            self.dicom_instances.labels(outcome="stored").inc()
        else:
            self.dicom_instances.labels(outcome="refused").inc()
            self.observe_refusal(refusal_reason, "dicom")
        self.latency.labels(path="dicom", endpoint="dicom").observe(latency_s)

    def model_loaded(self, loaded: LoadedModel, swapped: bool) -> None:
        """``loaded`` is answering now; ``swapped``: it replaced another model (counted as a swap)."""
        self.model.info({"name": loaded.name, "version": loaded.version, "onnx_sha256": loaded.onnx_sha256})
        self.ready.set(1)
        if swapped:
            self.swaps.inc()

    def load_failed(self, reason: LoadFailure) -> None:
        """A version could not be put in service (the previous model, if any, keeps answering)."""
        self.load_failures.labels(reason=reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        """(the metrics in Prometheus' text format, its content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
