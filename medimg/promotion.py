"""Promotion and rollback of the ``champion`` alias: the only code that moves it.

Promotion is an audited act. Every alias move made here

* is refused (:class:`PromotionRefused`, nothing changed) unless the version's gate passed
  (version tag ``medimg.gate_passed == "True"``), or ``force`` is given with a non-empty reason;
* sets the version tags ``medimg.promoted_at``, ``medimg.promotion_reason``,
  ``medimg.previous_champion`` and ``medimg.promotion_forced``;
* appends one event (who, when, which version replaced which, why, from which flow run, whether
  the gate was overridden) to the workspace's append-only ``audit.jsonl`` **and** records the very
  same JSON as a tag ``medimg.audit.<nnnnnn>`` on the registered model, so an auditor reads the
  history in the MLflow UI even without the workspace, and the file survives a registry wipe.

The retraining flow's automatic promotion (``medimg.steps.register``) goes through
:func:`promote` too, so a promotion by the flow and one by a person leave the same trail.

``rollback`` moves ``champion`` back to the version the current champion replaced when it was
promoted (its ``medimg.previous_champion`` tag, or the audit log when the tag is absent). The
tag is not rewritten by a rollback, so repeated rollbacks walk back through the history
(v3 -> v2 -> v1) instead of bouncing between two versions.

Order of the writes: alias first, then version tags, then the audit file, then the audit tag.
The alias move is the act; the audit file is written right after it with fsync. Two people
promoting at the same second may both pick the same ``medimg.audit.<n>`` number; the JSON lines
file, appended under the OS's append semantics, never loses either event.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medimg import audit, registry
from medimg.config import Params
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


#: Longest accepted reason: the event must fit an MLflow tag value (5000 characters).
MAX_REASON_CHARS = 2000


class PromotionRefused(RuntimeError):
    """The requested alias move is not allowed; the registry and the audit log are unchanged."""


def _check_reason(reason: str | None, act: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise PromotionRefused(f"a {act} needs a reason (--reason TEXT); it goes into the audit log")
    if len(reason) > MAX_REASON_CHARS:
        raise PromotionRefused(f"the reason has {len(reason)} characters; at most {MAX_REASON_CHARS} are kept")
    return reason


def _version(name: str, version: str) -> registry.VersionInfo:
    try:
        return registry.resolve(str(version), name)
    except registry.VersionNotFound as err:
        raise PromotionRefused(str(err)) from None


def _record(ws: Workspace, name: str, event: dict, who: str | None = None) -> dict:
    """Append the event to audit.jsonl, then mirror the same JSON as a registered-model tag."""
    entry = audit.record(ws.audit_log, event, who)
    tags = registry.model_tags(name)
    taken = [
        int(k[len(registry.AUDIT_TAG_PREFIX) :])
        for k in tags
        if k.startswith(registry.AUDIT_TAG_PREFIX) and k[len(registry.AUDIT_TAG_PREFIX) :].isdigit()
    ]
    key = f"{registry.AUDIT_TAG_PREFIX}{max(taken, default=0) + 1:06d}"
    registry.set_model_tag(name, key, json.dumps(entry, sort_keys=True))
    return {**entry, "mlflow_tag": key}


def promote(
    params: Params,
    ws: Workspace,
    version: str | int,
    reason: str,
    force: bool = False,
    flow_run_id: str | None = None,
    who: str | None = None,
) -> dict:
    """Make ``version`` the champion; returns the audit event (with ``mlflow_tag``, its tag key).

    ``who``: the person promoting, for the audit event (the review page's user); ``None``: the OS user.

    Refused when the reason is empty, the version does not exist or already is the champion,
    or its gate did not pass and ``force`` is not given. A forced promotion of a version whose
    gate did not pass is logged with ``forced: true`` and tagged ``medimg.promotion_forced``.
    """
    name = params.registry.model_name
    version = str(version)
    reason = _check_reason(reason, "promotion")
    info = _version(name, version)
    gate_passed = info.tags.get(registry.TAG_GATE) == "True"
    if not gate_passed and not force:
        failed = info.tags.get(registry.TAG_GATE_FAILED, "unknown")
        state = "has no gate result" if registry.TAG_GATE not in info.tags else f"failed its gates ({failed})"
        raise PromotionRefused(
            f"model {name} v{version} {state}; refusing to make it champion. "
            "Use --force with a reason to override; the override is logged."
        )
    if registry.CHAMPION in info.aliases:
        raise PromotionRefused(f"model {name} v{version} already is the champion")
    previous = registry.version_by_alias(name, registry.CHAMPION)
    forced = not gate_passed

    registry.set_alias(name, registry.CHAMPION, version)
    cleared = []
    if registry.CHALLENGER in info.aliases:
        registry.delete_alias(name, registry.CHALLENGER)  # a champion is no longer a challenger
        cleared.append(registry.CHALLENGER)
    registry.set_tags(
        name,
        version,
        {
            registry.TAG_PROMOTED_AT: audit.now_iso(),
            registry.TAG_PROMOTION_REASON: reason,
            registry.TAG_PREVIOUS_CHAMPION: previous.version if previous else "none",
            registry.TAG_PROMOTION_FORCED: forced,
        },
    )
    entry = _record(
        ws,
        name,
        {
            "action": "promote",
            "model": name,
            "alias": registry.CHAMPION,
            "version": version,
            "previous": previous.version if previous else None,
            "reason": reason,
            "forced": forced,
            "force_requested": bool(force),
            "gate_passed": gate_passed,
            "flow_run_id": flow_run_id,
            "mlflow_run_id": info.run_id,
            "onnx_sha256": info.tags.get(registry.TAG_ONNX_SHA256),
            "cleared_aliases": cleared,
        },
        who,
    )
    (log.warning if forced else log.info)(
        "model %s v%s is the new champion (previous: %s)%s",
        name,
        version,
        f"v{previous.version}" if previous else "none",
        " [FORCED past failed gates]" if forced else "",
    )
    return entry


def _previous_from_audit(path: Path, name: str, version: str) -> str | None:
    promotions = [
        e
        for e in audit.read(path)
        if e.get("action") == "promote" and e.get("model") == name and e.get("version") == version
    ]
    return promotions[-1].get("previous") if promotions else None


def rollback_target(params: Params, ws: Workspace) -> tuple[registry.VersionInfo, str]:
    """(current champion, version to go back to); :class:`PromotionRefused` when there is none."""
    name = params.registry.model_name
    current = registry.version_by_alias(name, registry.CHAMPION)
    if current is None:
        raise PromotionRefused(f"model {name!r} has no champion; nothing to roll back")
    target = current.tags.get(registry.TAG_PREVIOUS_CHAMPION)
    if target is None:
        target = _previous_from_audit(ws.audit_log, name, current.version)
    if not target or target == "none":
        raise PromotionRefused(
            f"model {name} v{current.version} was the first champion: there is no previous champion to roll back to"
        )
    return current, str(target)


def rollback(
    params: Params, ws: Workspace, reason: str, flow_run_id: str | None = None, who: str | None = None
) -> dict:
    """Move ``champion`` back to the version the current champion replaced; returns the audit event.

    ``who``: the person rolling back, for the audit event (the review page's user); ``None``: the OS user.

    The restored version gets ``medimg.promoted_at`` and ``medimg.promotion_reason`` (``rollback
    from vN: <reason>``); the version rolled away from gets ``medimg.rolled_back_at`` and
    ``medimg.rollback_reason``. Gates are not re-checked: the target already was the champion.
    """
    name = params.registry.model_name
    reason = _check_reason(reason, "rollback")
    current, target = rollback_target(params, ws)
    restored = _version(name, target)  # refused clearly if the old version was deleted
    registry.set_alias(name, registry.CHAMPION, restored.version)
    now = audit.now_iso()
    registry.set_tags(name, current.version, {registry.TAG_ROLLED_BACK_AT: now, registry.TAG_ROLLBACK_REASON: reason})
    registry.set_tags(
        name,
        restored.version,
        {
            registry.TAG_PROMOTED_AT: now,
            registry.TAG_PROMOTION_REASON: f"rollback from v{current.version}: {reason}",
        },
    )
    entry = _record(
        ws,
        name,
        {
            "action": "rollback",
            "model": name,
            "alias": registry.CHAMPION,
            "version": restored.version,
            "previous": current.version,
            "reason": reason,
            "forced": False,
            "flow_run_id": flow_run_id,
            "mlflow_run_id": restored.run_id,
            "onnx_sha256": restored.tags.get(registry.TAG_ONNX_SHA256),
        },
        who,
    )
    log.warning("model %s: champion rolled back from v%s to v%s (%s)", name, current.version, restored.version, reason)
    return entry


def history(params: Params) -> list[dict]:
    """The promotion history as recorded on the registered model (oldest first)."""
    return events_from_tags(registry.model_tags(params.registry.model_name))


def events_from_tags(tags: dict[str, str]) -> list[dict]:
    """The audit events mirrored in a registered model's tags (oldest first)."""
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(registry.AUDIT_TAG_PREFIX))]
