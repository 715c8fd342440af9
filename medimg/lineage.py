"""Lineage of a registered model: every link from the version back to its data, checks and decisions.

Why: an auditor must be able to answer, for any model a deployment pipeline pulled, "which data,
which code, which checks and which decisions produced this file?" without trusting any single
record. ``lineage`` follows the chain

    model version -> MLflow run (status, params, metrics with 95% CIs) -> git commit
    -> DVC data version (md5, the kept ``.dvc`` file, and the shell commands that fetch exactly
    that data) -> data validation result -> gate report -> ONNX sha256 -> promotion history

reading each link from where it is stored (registry tags, the run, the run's artifacts, the kept
``.dvc`` file, the ONNX file's own metadata, the workspace audit log), and records in ``checks``
whether the independent records agree (for instance the sha256 tag against the stored file's
actual hash, and the data version tag against the run's tag and the ONNX metadata). A missing
link is reported as missing, never filled in.

Promises:

* ``lineage`` only reads: it changes nothing in the registry, the run or the workspace.
* The report is JSON-native except ``figures[*]["png_base64"]`` (a string too, but bulky);
  ``to_json`` leaves that out.
* ``render_html`` returns one self-contained HTML document: inline CSS, no scripts, no web fonts,
  no links or references to any network resource (a Content-Security-Policy meta tag forbids
  loading anything but inline styles and ``data:`` images), with the ROC curve embedded as a
  ``data:`` URI. The data version, the gate decision and the ONNX sha256 are in a banner at the
  top. Every value from the records is HTML-escaped.

The caller points MLflow at the workspace first (``medimg.workspace.activate``), as the CLI does.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medimg import artifacts, audit, registry
from medimg.promotion import events_from_tags
from medimg.config import Params
from medimg.data import versioning
from medimg.provenance import PROJECT_ROOT, file_sha256
from medimg.workspace import Workspace

KEY_METRICS = ("roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "brier", "ece")


# ----------------------------------------------------------------------------------------------
# reading the links


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def _download(run_id: str, artifact_path: str, dest: Path) -> Path | None:
    try:
        return registry.download_run_artifact(run_id, artifact_path, dest)
    except (MlflowException, OSError):
        return None


def _list(run_id: str, path: str) -> list[str]:
    try:
        return [a.path for a in MlflowClient().list_artifacts(run_id, path) if not a.is_dir]
    except (MlflowException, OSError):
        return []


def _read_json(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def key_metrics(run_metrics: dict[str, float]) -> dict[str, dict]:
    """``{name: {"value", "ci95": [low, high] or None}}`` of the run's test metrics in :data:`KEY_METRICS`."""
    out = {}
    for name in KEY_METRICS:
        if f"test_{name}" not in run_metrics:
            continue
        lo, hi = run_metrics.get(f"test_{name}_ci_low"), run_metrics.get(f"test_{name}_ci_high")
        out[name] = {"value": run_metrics[f"test_{name}"], "ci95": [lo, hi] if lo is not None and hi is not None else None}
    return out


def _git(commit: str | None) -> dict:
    """The commit, whether it was dirty, and whether this checkout knows it (with its subject line)."""
    if not commit or commit == "unknown":
        return {"commit": commit, "sha": None, "dirty": None, "in_checkout": False, "subject": None,
                "checkout_command": None}
    sha = commit.removesuffix("-dirty")
    info = {"commit": commit, "sha": sha, "dirty": commit.endswith("-dirty"), "in_checkout": False, "subject": None,
            "checkout_command": f"git checkout {sha}"}
    try:
        shown = subprocess.run(["git", "show", "--no-patch", "--format=%s%n%cI", sha], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return info
    if shown.returncode == 0:
        lines = shown.stdout.strip().splitlines()
        info.update(in_checkout=True, subject=lines[0] if lines else None,
                    committed_at=lines[1] if len(lines) > 1 else None)
    return info


def _data(ws: Workspace, data_version: str | None, run_data_version: str | None, ingest: dict | None) -> dict:
    out: dict = {"version": data_version, "run_tag": run_data_version, "md5": None, "dvc_file": None,
                 "dvc_file_exists": False, "nfiles": None, "size": None, "fetch_commands": [],
                 "source": None, "source_md5": None, "split_counts": None, "n_images": None}
    if ingest:
        out.update(source=ingest.get("source"), source_md5=ingest.get("source_md5"),
                   split_counts=ingest.get("split_counts"), n_images=ingest.get("n_images"))
    if not data_version:
        return out
    kept = ws.data_versions / f"{data_version}.dvc"
    out["dvc_file"] = str(kept.relative_to(ws.root))
    out["fetch_commands"] = versioning.fetch_commands(ws, data_version)
    if kept.is_file():
        entry = versioning.read_dvc_file(kept)
        out.update(dvc_file_exists=True, md5=entry.get("md5"), nfiles=entry.get("nfiles"), size=entry.get("size"))
    return out


def _validation(run_id: str, tmp: Path, run_tag: str | None) -> dict:
    files = [p for p in _list(run_id, artifacts.VALIDATION_DIR) if p.endswith(".json")]
    out: dict = {"artifact": files[0] if files else None, "found": False, "passed": None, "run_tag": run_tag}
    report = _read_json(_download(run_id, files[0], tmp)) if files else None
    if report is None:
        return out
    warts = report.get("warts") or {}
    out.update(
        found=True,
        data_version=report.get("data_version"),
        passed=report.get("passed"),
        n_warnings=len(report.get("warnings") or []),
        warnings=[{"expectation": w.get("expectation"), "column": w.get("column"), "description": w.get("description"),
                   "severity": w.get("severity"), "unexpected_count": w.get("unexpected_count")}
                  for w in report.get("warnings") or []],
        failed_critical=[{"expectation": f.get("expectation"), "column": f.get("column"),
                          "description": f.get("description"), "unexpected_count": f.get("unexpected_count")}
                         for f in report.get("failed_critical") or []],
        n_dropped=len(report.get("dropped_ids") or []),
        warts={k: v for k, v in warts.items() if k not in ("within_split", "across_splits")},
        statistics=report.get("statistics"),
    )
    return out


def _gate(run_id: str, tmp: Path, tag: str | None) -> dict:
    report = _read_json(_download(run_id, artifacts.GATE_REPORT, tmp))
    out: dict = {"artifact": artifacts.GATE_REPORT, "found": report is not None, "passed": None, "decision": "UNKNOWN",
                 "registry_tag": tag}
    if report is None:
        return out
    out.update(
        passed=bool(report.get("passed")),
        decision="PASSED" if report.get("passed") else "FAILED",
        failed=report.get("failed") or [],
        rules=[{"name": r.get("name"), "passed": r.get("passed"), "reason": r.get("reason")} for r in report.get("rules") or []],
        threshold=report.get("threshold"),
        champion_version=report.get("champion_version"),
        benchmark=(report.get("benchmark") or {}).get("id"),
    )
    return out


def _onnx(name: str, version: registry.VersionInfo, tmp: Path, run_id: str) -> dict:
    """The sha256 tag, the stored file's actual hash, and the lineage keys in its own metadata."""
    from medimg.export.onnx_export import read_metadata  # here: it loads torch (1 s); only to read a stored file

    out: dict = {"sha256": version.tags.get(registry.TAG_ONNX_SHA256), "stored_sha256": None, "size_bytes": None,
                 "parity_max_abs_diff": version.tags.get(registry.TAG_PARITY), "parity": None, "metadata": {}}
    out["parity"] = _read_json(_download(run_id, artifacts.PARITY_REPORT, tmp)) if run_id else None
    try:
        path = registry.download_onnx(name, version.version, tmp / "onnx")
    except (MlflowException, OSError) as err:
        out["error"] = f"stored ONNX file could not be read: {err}"
        return out
    out["stored_sha256"] = file_sha256(path)
    out["size_bytes"] = path.stat().st_size
    try:
        meta = read_metadata(path)
    except Exception as err:  # a tampered or truncated file is a finding of the report, not a crash
        out["error"] = f"stored ONNX file is not a readable ONNX model: {type(err).__name__}: {err}"
        return out
    out["metadata"] = {k: meta[k] for k in (artifacts.META_DATA_VERSION, artifacts.META_GIT_COMMIT,
                                             artifacts.META_MLFLOW_RUN_ID, artifacts.META_THRESHOLD,
                                             artifacts.META_CLASS_NAMES, artifacts.META_PARAMS_HASH,
                                             artifacts.META_PREPROCESSING_HASH) if k in meta}
    return out


def _promotions(ws: Workspace, name: str, version: str) -> dict:
    """Audit events for this version, the model's whole alias history, and its current aliases.

    The events are the workspace's ``audit.jsonl`` merged with the copy that promotion mirrors
    into the registered model's tags, so a lineage read from another workspace (a shared
    registry) still sees every promotion; an event in both is listed once."""
    try:
        model = MlflowClient().get_registered_model(name)
        aliases = {alias: str(v) for alias, v in (model.aliases or {}).items()}
        model_tags = {k: v for k, v in (model.tags or {}).items() if k.startswith(artifacts.TAG_PREFIX)}
    except MlflowException:
        aliases, model_tags = {}, {}
    merged: dict[tuple, dict] = {}
    for event in [*audit.read(ws.audit_log), *events_from_tags(model_tags)]:
        if event.get("model") == name:
            merged.setdefault((event.get("when"), event.get("action"), str(event.get("version"))), event)
    events = sorted(merged.values(), key=lambda e: str(e.get("when")))
    mine = [e for e in events if str(e.get("version")) == version or str(e.get("previous")) == version]
    history = [{"when": e.get("when"), "action": e.get("action"), "alias": e.get("alias"), "version": e.get("version"),
                "previous": e.get("previous"), "who": e.get("who"), "reason": e.get("reason")} for e in events]
    return {"audit_log": str(ws.audit_log), "events": mine, "alias_history": history, "current_aliases": aliases,
            "registered_model_tags": model_tags}


def _check(name: str, ok: bool | None, detail: str) -> dict:
    return {"name": name, "ok": ok, "detail": detail}


def _checks(report: dict) -> list[dict]:
    model, run, data, val, gate, onnx = (report[k] for k in ("model", "run", "data", "validation", "gate", "onnx"))
    meta = onnx.get("metadata") or {}
    dv = data["version"]
    checks = [
        _check("run_finished", run.get("status") == "FINISHED", f"MLflow run status {run.get('status')}"),
        _check("data_version_consistent",
               bool(dv) and dv == data.get("run_tag") and dv == meta.get(artifacts.META_DATA_VERSION),
               f"version tag {dv}, run tag {data.get('run_tag')}, "
               f"ONNX metadata {meta.get(artifacts.META_DATA_VERSION)}"),
        _check("data_version_restorable",
               bool(data["dvc_file_exists"]) and (data.get("md5") or "").removesuffix(".dir") == dv,
               f"{data.get('dvc_file')}: {'present, md5 ' + str(data.get('md5')) if data['dvc_file_exists'] else 'missing'}"),
        _check("validation_passed", val.get("passed") is True and str(val.get("run_tag")) == "True",
               f"validation artifact passed={val.get('passed')}, run tag {val.get('run_tag')}"),
        _check("gate_report_matches_tag", gate["found"] and str(gate.get("passed")) == str(gate.get("registry_tag")),
               f"gate report passed={gate.get('passed')}, version tag {gate.get('registry_tag')}"),
        _check("onnx_sha256_verified", bool(onnx.get("sha256")) and onnx.get("sha256") == onnx.get("stored_sha256"),
               f"tag {onnx.get('sha256')}, stored file {onnx.get('stored_sha256')}"),
        _check("onnx_from_this_run", meta.get(artifacts.META_MLFLOW_RUN_ID) == run.get("id"),
               f"ONNX metadata run {meta.get(artifacts.META_MLFLOW_RUN_ID)}, version's run {run.get('id')}"),
        # Differs when a commit landed while the flow ran (the run is tagged at its start, the export and
        # the version later): then the code that produced the model is ambiguous, and the report says so.
        _check("git_commit_consistent",
               bool(report["code"].get("commit"))
               and report["code"]["commit"] == run.get("tags", {}).get(artifacts.TAG_GIT_COMMIT)
               == meta.get(artifacts.META_GIT_COMMIT),
               f"version tag {report['code'].get('commit')}, "
               f"run tag {run.get('tags', {}).get(artifacts.TAG_GIT_COMMIT)}, "
               f"ONNX metadata {meta.get(artifacts.META_GIT_COMMIT)}"),
    ]
    if model.get("is_champion"):
        promoted = any(e.get("action") in ("promote", "rollback")
                       and str(e.get("version")) == model["version"] for e in report["promotion"]["events"])
        checks.append(_check("champion_promotion_audited", promoted,
                             "an audit-log event put this version on champion" if promoted
                             else "champion alias set with no audit-log event for this version"))
    return checks


def lineage(params: Params, ws: Workspace, ref: str) -> dict:
    """The lineage report of the model version ``ref`` (``NAME@ALIAS``, ``NAME@VERSION`` or ``VERSION``).

    Raises :class:`medimg.registry.VersionNotFound` when ``ref`` names no registered version. Read-only.
    """
    mv = registry.resolve(ref, params.registry.model_name)
    client = MlflowClient()
    with tempfile.TemporaryDirectory(prefix="medimg-lineage-") as scratch:
        tmp = Path(scratch)
        run_info: dict = {"id": mv.run_id, "found": False, "status": None, "tags": {}}
        run_metrics: dict[str, float] = {}
        ingest = None
        figures: dict = {}
        if mv.run_id:
            try:
                run = client.get_run(mv.run_id)
            except MlflowException:
                run = None
            if run is not None:
                run_metrics = dict(run.data.metrics)
                run_info.update(
                    found=True, name=run.info.run_name, status=run.info.status, experiment_id=run.info.experiment_id,
                    start=_iso(run.info.start_time), end=_iso(run.info.end_time), user=run.info.user_id,
                    artifact_uri=run.info.artifact_uri, params=dict(sorted(run.data.params.items())),
                    tags={k: v for k, v in run.data.tags.items() if k.startswith(artifacts.TAG_PREFIX)},
                    flow_run_id=run.data.tags.get(registry.TAG_FLOW_RUN),
                    flow_run_name=run.data.tags.get(artifacts.TAG_FLOW_RUN_NAME),
                )
                run_info["metrics"] = key_metrics(run_metrics)
                run_info["threshold"] = run_metrics.get("test_threshold")
                run_info["n_test"] = int(run_metrics["test_n"]) if "test_n" in run_metrics else None
                ingest = _read_json(_download(mv.run_id, artifacts.INGEST_REPORT, tmp))
                roc = _download(mv.run_id, artifacts.ROC_CURVE, tmp)
                if roc is not None and roc.is_file():
                    blob = roc.read_bytes()
                    figures["roc_curve"] = {"artifact": artifacts.ROC_CURVE, "sha256": hashlib.sha256(blob).hexdigest(),
                                            "png_base64": base64.b64encode(blob).decode("ascii")}
        data_version = mv.tags.get(registry.TAG_DATA_VERSION)
        report = {
            "ref": ref,
            "generated_at": audit.now_iso(),
            "tracking_uri": client.tracking_uri,
            "workspace": str(ws.root),
            "model": {
                "name": mv.name, "version": mv.version, "aliases": mv.aliases, "is_champion": registry.CHAMPION in mv.aliases,
                "source": mv.source, "tags": dict(sorted(mv.tags.items())),
            },
            "run": run_info,
            "code": _git(mv.tags.get(registry.TAG_GIT_COMMIT)),
            "data": _data(ws, data_version, run_info["tags"].get(registry.TAG_DATA_VERSION), ingest),
            "validation": _validation(mv.run_id, tmp, run_info["tags"].get(registry.TAG_VALIDATION)) if run_info["found"]
            else {"found": False, "passed": None, "artifact": None, "run_tag": None},
            "gate": _gate(mv.run_id, tmp, mv.tags.get(registry.TAG_GATE)) if run_info["found"]
            else {"found": False, "passed": None, "decision": "UNKNOWN", "registry_tag": mv.tags.get(registry.TAG_GATE)},
            "onnx": _onnx(mv.name, mv, tmp, mv.run_id),
            "promotion": _promotions(ws, mv.name, mv.version),
            "figures": figures,
        }
        if mv.created_ms:
            report["model"]["registered_at"] = _iso(mv.created_ms)
    report["checks"] = _checks(report)
    report["all_checks_ok"] = all(c["ok"] for c in report["checks"])
    return report


def to_json(report: dict, with_figures: bool = False) -> str:
    """The report as JSON; embedded figures (base64 PNG) are left out unless asked for."""
    if not with_figures:
        report = {**report, "figures": {k: {kk: vv for kk, vv in v.items() if kk != "png_base64"}
                                        for k, v in (report.get("figures") or {}).items()}}
    return json.dumps(report, indent=1, default=str)


# ----------------------------------------------------------------------------------------------
# terminal rendering


def _fmt_metric(item: dict) -> str:
    ci = item.get("ci95")
    return f"{item['value']:.4f}" + (f"  (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")


def render_text(report: dict) -> str:
    """Plain text for the terminal (no markup, so Rich or a pipe prints it as is)."""
    model, run, code, data = report["model"], report["run"], report["code"], report["data"]
    val, gate, onnx, promo = report["validation"], report["gate"], report["onnx"], report["promotion"]
    lines = [
        f"Lineage of {model['name']} v{model['version']}"
        + (f" (aliases: {', '.join(model['aliases'])})" if model["aliases"] else " (no alias)"),
        f"  data version   {data['version']}",
        f"  gate decision  {gate['decision']}" + (f" (failed: {', '.join(gate.get('failed') or [])})" if gate.get("failed") else ""),
        f"  onnx sha256    {onnx.get('sha256')}",
        "",
        "1. MLflow run",
        f"  id {run.get('id')}  name {run.get('name')}  status {run.get('status')}",
        f"  started {run.get('start')}  ended {run.get('end')}  flow run {run.get('flow_run_name')} ({run.get('flow_run_id')})",
    ]
    for name, item in (run.get("metrics") or {}).items():
        lines.append(f"  test {name:<12} {_fmt_metric(item)}")
    if run.get("threshold") is not None:
        lines.append(f"  threshold      {run['threshold']:.4f}")
    lines += ["", "2. Code", f"  git commit {code.get('commit')}"
              + (f"  ({code.get('subject')})" if code.get("subject") else "  (not in this checkout)")]
    lines += ["", "3. Data (DVC)", f"  version {data['version']}  md5 {data.get('md5')}",
              f"  .dvc file {data.get('dvc_file')} ({'present' if data['dvc_file_exists'] else 'MISSING'})",
              f"  files {data.get('nfiles')}  bytes {data.get('size')}  source {data.get('source')} (md5 {data.get('source_md5')})",
              "  fetch exactly this data:"]
    lines += [f"    {cmd}" for cmd in data["fetch_commands"]]
    lines += ["", "4. Data validation", f"  passed {val.get('passed')}  warnings {val.get('n_warnings')}  "
              f"dropped rows {val.get('n_dropped')}  ({val.get('artifact')})"]
    for key, value in (val.get("warts") or {}).items():
        lines.append(f"  wart {key}: {json.dumps(value)}")
    for item in val.get("warnings") or []:
        lines.append(f"  warning: {item.get('description') or item.get('expectation')} ({item.get('unexpected_count')} rows)")
    lines += ["", "5. Gate report", f"  decision {gate['decision']}  threshold {gate.get('threshold')}"]
    for rule in gate.get("rules") or []:
        lines.append(f"  [{'PASS' if rule['passed'] else 'FAIL'}] {rule['name']}: {rule['reason']}")
    lines += ["", "6. ONNX", f"  sha256 tag    {onnx.get('sha256')}", f"  stored file   {onnx.get('stored_sha256')}",
              f"  parity max |logit diff| {onnx.get('parity_max_abs_diff')}"]
    if onnx.get("error"):
        lines.append(f"  ERROR {onnx['error']}")
    lines += ["", "7. Promotion history", f"  current aliases {json.dumps(promo['current_aliases'])}"]
    if not promo["alias_history"]:
        lines.append("  no audit-log events for this model")
    for event in promo["alias_history"]:
        previous = f"v{event['previous']}" if event.get("previous") else "none"
        lines.append(f"  {event.get('when')} {event.get('action')} {event.get('alias') or ''} v{event.get('version')} "
                     f"(previous: {previous}) by {event.get('who')}: {event.get('reason')}")
    lines += ["", "Checks"]
    for check in report["checks"]:
        lines.append(f"  [{'ok' if check['ok'] else 'FAIL'}] {check['name']}: {check['detail']}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# HTML rendering

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:72rem;
color:#1d232a;line-height:1.4;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:2px solid #d0d7de;padding-bottom:.2rem}
.sub{color:#57606a;margin-top:0}
.banner{display:grid;grid-template-columns:1fr 1fr;gap:.8rem;margin:1.2rem 0}
.card{border:2px solid #d0d7de;border-radius:8px;padding:.8rem 1rem;background:#f6f8fa}
.card .k{font-size:.8rem;text-transform:uppercase;letter-spacing:.05em;color:#57606a}
.card .v{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:1.1rem;word-break:break-all;font-weight:600}
.card.wide{grid-column:1 / span 2}
.pass{border-color:#1a7f37;background:#dafbe1}.pass .v{color:#116329}
.fail{border-color:#cf222e;background:#ffebe9}.fail .v{color:#a40e26}
table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;
vertical-align:top;font-size:.9rem}th{background:#f6f8fa;width:14rem}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.6rem;overflow-x:auto}
.ok{color:#116329;font-weight:600}.bad{color:#a40e26;font-weight:600}
img{max-width:32rem;border:1px solid #d0d7de}
details{margin:.4rem 0}footer{margin-top:2rem;color:#57606a;font-size:.8rem}
@media print{.card{break-inside:avoid}details{display:block}}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _rows(pairs: list[tuple[str, object]], code: bool = False) -> str:
    cell = (lambda v: f"<code>{_e(v)}</code>") if code else _e
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{cell(v)}</td></tr>" for k, v in pairs) + "</table>"


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return '<span class="bad">unknown</span>'
    return '<span class="ok">pass</span>' if ok else '<span class="bad">FAIL</span>'


def render_html(report: dict) -> str:
    """One self-contained HTML document for archiving (see the module docstring for the promises)."""
    model, run, code, data = report["model"], report["run"], report["code"], report["data"]
    val, gate, onnx, promo = report["validation"], report["gate"], report["onnx"], report["promotion"]
    gate_class = "pass" if gate.get("passed") else "fail"
    sha_ok = bool(onnx.get("sha256")) and onnx.get("sha256") == onnx.get("stored_sha256")
    title = f"Lineage: {model['name']} v{model['version']}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">Aliases: {_e(", ".join(model["aliases"]) or "none")} &middot; registered {_e(model.get("registered_at"))}'
        f" &middot; report generated {_e(report.get('generated_at'))} &middot; tracking {_e(report.get('tracking_uri'))}</p>",
        '<div class="banner">',
        f'<div class="card" id="data-version"><div class="k">Data version (DVC md5)</div><div class="v">{_e(data["version"])}</div></div>',
        f'<div class="card {gate_class}" id="gate-decision"><div class="k">Gate decision</div>'
        f'<div class="v">{_e(gate["decision"])}</div>'
        + (f"<div>failed: {_e(', '.join(gate.get('failed') or []))}</div>" if gate.get("failed") else "") + "</div>",
        f'<div class="card wide {"pass" if sha_ok else "fail"}" id="onnx-sha256"><div class="k">ONNX sha256 '
        f'({"stored file verified against the registry tag" if sha_ok else "stored file does NOT match the registry tag"})</div>'
        f'<div class="v">{_e(onnx.get("sha256"))}</div></div>',
        "</div>",
        f"<p>All lineage checks: {_verdict(report.get('all_checks_ok'))}</p>",
    ]

    parts.append("<h2>1. Model version and MLflow run</h2>")
    parts.append(_rows([
        ("model", f"{model['name']} v{model['version']}"), ("model source", model.get("source")),
        ("run id", run.get("id")), ("run name", run.get("name")), ("status", run.get("status")),
        ("started", run.get("start")), ("ended", run.get("end")), ("user", run.get("user")),
        ("flow run", f"{run.get('flow_run_name')} ({run.get('flow_run_id')})"), ("artifacts", run.get("artifact_uri")),
        ("decision threshold", run.get("threshold")), ("test images", run.get("n_test")),
    ]))
    metrics = run.get("metrics") or {}
    if metrics:
        parts.append("<table><tr><th>test metric</th><th>value</th><th>95% CI (bootstrap)</th></tr>")
        for name, item in metrics.items():
            ci = item.get("ci95")
            parts.append(f"<tr><td>{_e(name)}</td><td>{item['value']:.4f}</td><td>"
                         f"{_e(f'{ci[0]:.4f} - {ci[1]:.4f}' if ci else 'n/a')}</td></tr>")
        parts.append("</table>")
    roc = (report.get("figures") or {}).get("roc_curve")
    if roc and roc.get("png_base64"):
        parts.append(f'<figure><img alt="ROC curve on the test split" src="data:image/png;base64,{roc["png_base64"]}">'
                     f"<figcaption>ROC curve, test split (artifact {_e(roc['artifact'])}, sha256 {_e(roc['sha256'])})"
                     "</figcaption></figure>")
    if run.get("params"):
        parts.append("<details><summary>Run parameters</summary>" + _rows(list(run["params"].items()), code=True) + "</details>")

    parts.append("<h2>2. Code</h2>")
    parts.append(_rows([("git commit", code.get("commit")), ("uncommitted changes at training time", code.get("dirty")),
                        ("known to this checkout", code.get("in_checkout")), ("subject", code.get("subject")),
                        ("get this code", code.get("checkout_command"))], code=False))

    parts.append("<h2>3. Data version (DVC)</h2>")
    parts.append(_rows([("data version", data["version"]), ("DVC md5", data.get("md5")), (".dvc file", data.get("dvc_file")),
                        (".dvc file present", data["dvc_file_exists"]), ("files", data.get("nfiles")),
                        ("bytes", data.get("size")), ("images", data.get("n_images")),
                        ("split counts", json.dumps(data.get("split_counts"))), ("source", data.get("source")),
                        ("source md5", data.get("source_md5"))]))
    parts.append("<p>Shell commands that restore exactly this data:</p><pre>"
                 + _e("\n".join(data["fetch_commands"]) or "(unknown data version)") + "</pre>")

    parts.append("<h2>4. Data validation (Great Expectations)</h2>")
    parts.append(_rows([("passed", val.get("passed")), ("artifact", val.get("artifact")), ("warnings", val.get("n_warnings")),
                        ("critical failures", len(val.get("failed_critical") or [])), ("rows dropped by policy", val.get("n_dropped"))]
                       + [(f"wart: {k}", json.dumps(v)) for k, v in (val.get("warts") or {}).items()]))
    for item in val.get("warnings") or []:
        parts.append(f"<p>warning: {_e(item.get('description') or item.get('expectation'))} "
                     f"(<code>{_e(item.get('expectation'))}</code> on <code>{_e(item.get('column'))}</code>): "
                     f"{_e(item.get('unexpected_count'))} rows</p>")

    parts.append("<h2>5. Promotion gates</h2>")
    parts.append(f'<p>Decision: <span class="{"ok" if gate.get("passed") else "bad"}">{_e(gate["decision"])}</span> '
                 f"(artifact {_e(gate.get('artifact'))}; registry tag {_e(gate.get('registry_tag'))}; "
                 f"champion compared: {_e(gate.get('champion_version') or 'none')})</p>")
    if gate.get("rules"):
        parts.append("<table><tr><th>rule</th><th>verdict</th><th>reason</th></tr>")
        for rule in gate["rules"]:
            parts.append(f"<tr><td>{_e(rule['name'])}</td><td>{_verdict(rule['passed'])}</td><td>{_e(rule['reason'])}</td></tr>")
        parts.append("</table>")

    parts.append("<h2>6. ONNX file</h2>")
    parts.append(_rows([("sha256 (registry tag)", onnx.get("sha256")), ("sha256 (stored file)", onnx.get("stored_sha256")),
                        ("size (bytes)", onnx.get("size_bytes")), ("parity max |logit diff|", onnx.get("parity_max_abs_diff"))]
                       + ([("error", onnx["error"])] if onnx.get("error") else [])
                       + [(f"metadata {k}", v) for k, v in (onnx.get("metadata") or {}).items()], code=True))

    parts.append("<h2>7. Promotion history</h2>")
    parts.append(f"<p>Current aliases: <code>{_e(json.dumps(promo['current_aliases']))}</code>; audit log "
                 f"<code>{_e(promo['audit_log'])}</code></p>")
    if promo["alias_history"]:
        parts.append("<table><tr><th>when</th><th>action</th><th>alias</th><th>version</th><th>previous</th><th>who</th>"
                     "<th>reason</th></tr>")
        for ev in promo["alias_history"]:
            mark = ' style="font-weight:600"' if str(ev.get("version")) == model["version"] else ""
            parts.append(f"<tr{mark}>" + "".join(f"<td>{_e(ev.get(k))}</td>" for k in
                                                  ("when", "action", "alias", "version", "previous", "who", "reason")) + "</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No audit-log events for this model.</p>")

    parts.append("<h2>Lineage checks</h2><table><tr><th>check</th><th>verdict</th><th>detail</th></tr>")
    for check in report["checks"]:
        parts.append(f"<tr><td>{_e(check['name'])}</td><td>{_verdict(check['ok'])}</td><td>{_e(check['detail'])}</td></tr>")
    parts.append("</table>")
    parts.append(f"<footer>medimg lineage report for {_e(report.get('ref'))}; workspace {_e(report.get('workspace'))}. "
                 "Self-contained: no scripts, fonts or network resources.</footer></body></html>")
    return "\n".join(parts) + "\n"
