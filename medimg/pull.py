"""``medimg pull``: a verified, self-describing model for deployment pipelines.

``pull`` resolves the alias (default ``champion``) to a version number **once** and reads
everything else (file, tags, run metrics, gate report) by that number, so a promotion that
happens while a pull runs yields the old model or the new one, never parts of both.

What a pull writes, and why a reader never sees a torn or tampered set
------------------------------------------------------------------------
``--out DIR`` is managed as a **symbolic link** to a complete, verified release folder::

    PARENT/DIR -> .DIR.releases/<model>-v<N>-<sha256[:12]>-<random>/
    PARENT/.DIR.releases/<model>-v<N>-.../model.onnx
                                        /model_card.md
                                        /model_card.json

1. Everything is downloaded into ``PARENT/.DIR.releases/.partial-<random>/`` (same file system
   as ``DIR``, so renames are atomic).
2. The ONNX file's sha256 is checked against the version's ``medimg.onnx_sha256`` tag. A
   mismatch (or a missing tag) raises :class:`IntegrityError`; the partial folder is deleted and
   ``DIR`` is not touched: it still points at the previous complete release, or does not exist.
3. The model card (JSON and markdown) is written next to the verified file, files and folder are
   fsynced, and the partial folder is renamed to its release name.
4. A new symlink is created under a temporary name and ``os.replace``-d onto ``DIR``: one atomic
   ``rename(2)``, so ``DIR`` is at every instant either the old complete set or the new one.

A reader that opens several files should resolve ``DIR`` once (``os.path.realpath``) and read
them from the resolved folder; a reader opening ``DIR/model.onnx`` alone is always safe. Old
releases stay for readers that resolved them earlier: the newest ``keep_previous`` ones are kept,
and older ones are deleted only once they are more than ten minutes old. Concurrent pulls into
the same ``DIR`` each build their own release folder; the last link swap wins.

``DIR`` may not be an existing non-empty real directory (it cannot be swapped atomically): pull
refuses it with :class:`PullError` rather than mixing files into it.

The MLflow client follows ``MLFLOW_TRACKING_URI``, so the same code pulls from the embedded
SQLite registry of a workspace or from a remote tracking server (``http://host:5000``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medimg import artifacts, registry
from medimg.audit import now_iso
from medimg.config import Params
from medimg.export.onnx_export import read_metadata
from medimg.provenance import file_sha256

log = logging.getLogger(__name__)

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
CARD_VERSION = 1
PRUNE_AFTER_S = 600
PARTIAL_PREFIX = ".partial-"
COUNT_METRICS = {"tp", "fp", "tn", "fn", "n"}

INTENDED_USE = (
    "Research and engineering use: a probability that a frontal paediatric chest radiograph shows "
    "pneumonia (class 'pneumonia' vs 'normal'), for decision support under the supervision of a qualified "
    "clinician, at the recorded decision threshold. Not a certified medical device; not for autonomous "
    "diagnosis."
)
LIMITATIONS = [
    "Trained and tested on PneumoniaMNIST (MedMNIST v2): 28x28 downsampled paediatric (age 1-5) chest "
    "X-rays from one centre (Guangzhou Women and Children's Medical Center). Performance on adults, other "
    "sites, scanners or populations has not been measured.",
    "Inputs are reduced to the contract's size (see preprocessing) with bilinear resizing and no "
    "antialiasing; fine detail of full-resolution images is lost and large images alias.",
    "The model scores any grey image it is given, including CT or MR slices and non-chest radiographs: such "
    "scores are meaningless. Only frontal chest radiographs are in scope.",
    "The decision threshold was chosen on the validation split for a target sensitivity; its sensitivity "
    "and specificity at other prevalences or sites will differ.",
    "The data set holds a few byte-identical images across splits (reported by validation), which can "
    "flatter test metrics slightly.",
    "Metrics' 95% confidence intervals are percentile bootstrap intervals over the 624-image test split.",
]


class PullError(RuntimeError):
    """The model could not be pulled; the output folder was left as it was."""


class IntegrityError(PullError):
    """The file downloaded from the registry is not the file the registry's sha256 tag names."""


@dataclass(frozen=True)
class PullResult:
    out_dir: Path  # the symlink the caller named
    release_dir: Path  # the folder it points at now (this pull's files)
    model_name: str
    version: str
    sha256: str
    card: dict

    @property
    def onnx(self) -> Path:
        return self.release_dir / registry.ONNX_FILE


def resolve_version(model_name: str, alias: str | None = None, version: str | int | None = None) -> registry.VersionInfo:
    """The version to pull: ``version`` when given, else the one ``alias`` (default champion) names."""
    if version is not None and alias is not None:
        raise PullError("give either an alias or a version, not both")
    ref = str(version) if version is not None else (alias or registry.CHAMPION)
    try:
        return registry.resolve(f"{model_name}@{ref}", model_name)
    except registry.VersionNotFound as err:
        raise PullError(str(err)) from None


def fetch_verified_onnx(info: registry.VersionInfo, dest: Path) -> Path:
    """Download the version's ONNX file into ``dest`` and check it against ``medimg.onnx_sha256``.

    On a mismatch the downloaded file is deleted and :class:`IntegrityError` raised.
    """
    expected = info.tags.get(registry.TAG_ONNX_SHA256)
    if not expected:
        raise IntegrityError(f"model {info.name} v{info.version} has no {registry.TAG_ONNX_SHA256} tag: cannot verify it")
    path = registry.download_onnx(info.name, info.version, dest)
    actual = file_sha256(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise IntegrityError(
            f"model {info.name} v{info.version}: the downloaded ONNX file has sha256 {actual}, the registry says "
            f"{expected}; the artifact store copy was altered or corrupted. Nothing was installed."
        )
    return path


def _public_uri(uri: str) -> str:
    """The tracking URI without any user:password part."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


def _decode_meta(meta: dict[str, str]) -> dict:
    out = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
    return out


def _metrics_with_ci(metrics: dict[str, float]) -> dict[str, dict]:
    out = {}
    for key in sorted(metrics):
        if not key.startswith("test_") or key.endswith(("_ci_low", "_ci_high")):
            continue
        name = key[len("test_"):]
        out[name] = {"value": metrics[key], "ci95_low": metrics.get(f"{key}_ci_low"),
                     "ci95_high": metrics.get(f"{key}_ci_high")}
    return out


def build_card(info: registry.VersionInfo, onnx_path: Path, sha256: str, work: Path, alias: str | None) -> dict:
    """The model card as a dict: identity, lineage, metrics with CIs, gate report, contract, use."""
    client = MlflowClient()
    meta = _decode_meta(read_metadata(onnx_path))
    metrics, params, gate_report = {}, {}, None
    if info.run_id:
        try:
            run = client.get_run(info.run_id)
        except MlflowException as err:
            raise PullError(f"model {info.name} v{info.version}: its MLflow run {info.run_id} cannot be read "
                            f"({err.error_code}); no card without its lineage") from None
        metrics, params = dict(run.data.metrics), dict(run.data.params)
        try:
            gate_file = registry.download_run_artifact(info.run_id, artifacts.GATE_REPORT, work / "gate")
            gate_report = json.loads(gate_file.read_text())
        except Exception as err:  # noqa: BLE001 - a card without the report says so instead of failing
            log.warning("model %s v%s: no gate report artifact (%s)", info.name, info.version, type(err).__name__)
    tags = info.tags
    return {
        "card_version": CARD_VERSION,
        "model_name": info.name,
        "version": info.version,
        "pulled_alias": alias,
        "aliases_at_pull": sorted(info.aliases),
        "pulled_at": now_iso(),
        "tracking_uri": _public_uri(client.tracking_uri),
        "onnx_file": registry.ONNX_FILE,
        "sha256": sha256,
        "sha256_verified_against": registry.TAG_ONNX_SHA256,
        "mlflow_run_id": info.run_id,
        "data_version": tags.get(registry.TAG_DATA_VERSION) or meta.get(artifacts.META_DATA_VERSION),
        "git_commit": tags.get(registry.TAG_GIT_COMMIT) or meta.get(artifacts.META_GIT_COMMIT),
        "params_hash": tags.get(registry.TAG_PARAMS_HASH),
        "flow_run_id": tags.get(registry.TAG_FLOW_RUN),
        "validation_passed": tags.get(registry.TAG_VALIDATION) == "True",
        "onnx_parity_max_abs_diff": float(tags[registry.TAG_PARITY]) if tags.get(registry.TAG_PARITY) else None,
        "class_names": meta.get(artifacts.META_CLASS_NAMES),
        "positive_class": meta.get(artifacts.META_POSITIVE_CLASS),
        "threshold": meta.get(artifacts.META_THRESHOLD),
        "threshold_rule": params.get("gates.threshold"),
        "input_name": meta.get(artifacts.META_INPUT_NAME),
        "input_layout": meta.get(artifacts.META_INPUT_LAYOUT),
        "output": meta.get(artifacts.META_OUTPUT),
        "preprocessing": meta.get(artifacts.META_PREPROCESSING),
        "architecture": meta.get(artifacts.META_ARCHITECTURE),
        "training_data": params.get("data.medmnist_flag"),
        "metrics": _metrics_with_ci(metrics),
        "gate": {
            "passed": tags.get(registry.TAG_GATE) == "True",
            "failed_rules": [r for r in (tags.get(registry.TAG_GATE_FAILED) or "").split(",") if r and r != "none"],
            "report": gate_report,
        },
        "promotion": {
            "promoted_at": tags.get(registry.TAG_PROMOTED_AT),
            "reason": tags.get(registry.TAG_PROMOTION_REASON),
            "previous_champion": tags.get(registry.TAG_PREVIOUS_CHAMPION),
            "forced": tags.get(registry.TAG_PROMOTION_FORCED) == "True",
        },
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
    }


def _fmt(value) -> str:
    return "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def card_markdown(card: dict) -> str:
    """The human-readable card; every number comes from ``card`` (the JSON card)."""
    lines = [
        f"# Model card: {card['model_name']} v{card['version']}",
        "",
        "| | |", "| --- | --- |",
        f"| ONNX file | `{card['onnx_file']}` |",
        f"| sha256 | `{card['sha256']}` (verified against the registry tag `{card['sha256_verified_against']}`) |",
        f"| pulled | {card['pulled_at']} via {card['pulled_alias'] or 'version number'} from `{card['tracking_uri']}` |",
        f"| data version (DVC md5) | `{card['data_version']}` |",
        f"| git commit | `{card['git_commit']}` |",
        f"| MLflow run | `{card['mlflow_run_id']}` |",
        f"| classes | {card['class_names']} (positive: {card['positive_class']}) |",
        f"| decision threshold | {_fmt(card['threshold'])} ({card['threshold_rule']}) |",
        f"| ONNX/PyTorch parity | max abs logit difference {_fmt(card['onnx_parity_max_abs_diff'])} |",
        "",
        "## Intended use", "", card["intended_use"], "",
        "## Limitations", "", *[f"- {item}" for item in card["limitations"]], "",
        "## Test metrics (95% bootstrap CI)", "",
        "| metric | value | 95% CI |", "| --- | --- | --- |",
    ]
    for name, m in card["metrics"].items():
        ci = f"{_fmt(m['ci95_low'])} - {_fmt(m['ci95_high'])}" if m["ci95_low"] is not None else ""
        value = str(int(m["value"])) if name in COUNT_METRICS and m["value"] is not None else _fmt(m["value"])
        lines.append(f"| {name} | {value} | {ci} |")
    gate = card["gate"]
    lines += ["", "## Gate decision", "",
              f"**{'PASSED' if gate['passed'] else 'FAILED: ' + ', '.join(gate['failed_rules'])}**", ""]
    for rule in (gate["report"] or {}).get("rules", []):
        lines.append(f"- `{rule['name']}`: {'pass' if rule['passed'] else 'FAIL'}: {rule['reason']}")
    promo = card["promotion"]
    lines += ["", "## Promotion", "",
              f"promoted at {promo['promoted_at'] or 'never'}; reason: {promo['reason'] or 'n/a'}; previous champion: "
              f"{promo['previous_champion'] or 'n/a'}{'; FORCED past failed gates' if promo['forced'] else ''}", "",
              "## Preprocessing contract (from the ONNX metadata)", "", "```json",
              json.dumps(card["preprocessing"], indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def releases_dir(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.releases"


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.is_symlink() or not out_dir.exists():
        return
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return
    raise PullError(
        f"{out_dir} exists and is not a link made by medimg pull; pull manages --out as a symlink to a verified "
        "release so it can be swapped atomically. Remove it or choose another --out."
    )


def _swap_link(out_dir: Path, release: Path) -> None:
    tmp_link = out_dir.parent / f".{out_dir.name}.link-{uuid.uuid4().hex}"
    os.symlink(os.path.relpath(release, out_dir.parent), tmp_link)
    try:
        if out_dir.is_dir() and not out_dir.is_symlink():
            out_dir.rmdir()  # checked empty before the download; rmdir fails if it no longer is
        os.replace(tmp_link, out_dir)
    except OSError:
        tmp_link.unlink(missing_ok=True)
        raise
    _fsync_dir(out_dir.parent)


def _prune(out_dir: Path, keep_previous: int) -> None:
    """Delete old releases (beyond the newest ``keep_previous``, older than PRUNE_AFTER_S) and stale partials."""
    rel = releases_dir(out_dir)
    current = Path(os.path.realpath(out_dir)) if out_dir.is_symlink() else None
    now = time.time()
    entries = sorted((p for p in rel.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    finished = [p for p in entries if not p.name.startswith(PARTIAL_PREFIX) and p.resolve() != current]
    stale = [p for p in entries if p.name.startswith(PARTIAL_PREFIX) and now - p.stat().st_mtime > 6 * PRUNE_AFTER_S]
    for path in finished[keep_previous:] + stale:
        if now - path.stat().st_mtime > PRUNE_AFTER_S:
            shutil.rmtree(path, ignore_errors=True)


def pull(params: Params, *, out_dir: str | Path, alias: str | None = None, version: str | int | None = None,
         keep_previous: int = 2) -> PullResult:
    """Pull one verified model into ``out_dir`` (see the module docstring for the layout and promises)."""
    out_dir = Path(os.path.abspath(Path(out_dir).expanduser()))
    _check_out_dir(out_dir)
    name = params.registry.model_name
    info = resolve_version(name, alias, version)  # the one and only alias lookup
    rel = releases_dir(out_dir)
    rel.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=rel))
    try:
        onnx_path = fetch_verified_onnx(info, partial)  # partial/model.onnx, its sha256 checked
        sha256 = info.tags[registry.TAG_ONNX_SHA256]
        card = build_card(info, onnx_path, sha256, partial / ".work", alias if version is None else None)
        _write_synced(partial / CARD_JSON, json.dumps(card, indent=1, sort_keys=True, default=str))
        _write_synced(partial / CARD_MD, card_markdown(card))
        with open(onnx_path, "rb") as handle:
            os.fsync(handle.fileno())
        shutil.rmtree(partial / ".work", ignore_errors=True)
        partial.chmod(0o755)  # mkdtemp makes it 0700; deployment readers may be other users
        _fsync_dir(partial)
        release = rel / f"{name}-v{info.version}-{sha256[:12]}-{partial.name[len(PARTIAL_PREFIX):]}"
        os.rename(partial, release)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _swap_link(out_dir, release)
    try:
        _prune(out_dir, keep_previous)
    except OSError as err:  # pruning is housekeeping: never fail a good pull over it
        log.warning("could not prune old releases in %s: %s", rel, err)
    log.info("pulled %s v%s (sha256 %s) into %s -> %s", name, info.version, sha256, out_dir, release.name)
    return PullResult(out_dir=out_dir, release_dir=release, model_name=name, version=info.version, sha256=sha256,
                      card=card)


def read_pulled(out_dir: str | Path) -> tuple[Path, dict]:
    """(release folder, card) of a pulled model, resolving the link once so the pair is consistent."""
    release = Path(os.path.realpath(out_dir))
    return release, json.loads((release / CARD_JSON).read_text())
