"""The ``medimg`` command line: run the retraining flow and inspect the registry.

This is the one module of the library allowed to start a flow. It validates params and points
Prefect and MLflow at the workspace *before* importing them, because both read their settings
from the environment on import.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from medimg.config import ConfigError, DataConfig, Params, TaskConfig, deep_merge, load_params
from medimg.contracts import RetrainSummary
from medimg.data import versioning
from medimg.workspace import Workspace, activate

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="medimg: retrain, gate and promote medical image classifiers."
)
console = Console(stderr=True)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to use")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a param: section.key=value (YAML value)")]


def parse_overrides(items: list[str] | None) -> dict:
    """Nested params overrides from ``--set section.key=value`` items; each value is parsed as YAML.

    Raises :class:`ConfigError` for an item without ``=``.
    """
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


@contextmanager
def _exit_on(errors: type[Exception] | tuple[type[Exception], ...], label: str, code: int = 1) -> Iterator[None]:
    """Turn the expected errors of a command into a red ``label: message`` line and exit ``code``."""
    try:
        yield
    except errors as err:
        console.print(f"[bold red]{label}[/] {err}")
        raise typer.Exit(code) from None


def _load(params: Path, overrides: list[str] | None) -> tuple[Params, dict]:
    with _exit_on(ConfigError, "configuration error", code=2):
        extra = parse_overrides(overrides)
        return load_params(params, extra), extra


def quiet_third_party_loggers() -> None:
    """Keep the console to medimg's and Prefect's own lines (HTTP calls and exporter chatter are noise)."""
    logging.getLogger("medimg").setLevel(logging.INFO)
    for name in ("httpx", "onnxscript", "torch.onnx", "great_expectations", "dvc", "alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _activate(params: Params) -> Workspace:
    ws = Workspace.at(params.workspace.path)
    activate(ws, params.workspace.tracking_uri)
    return ws


def _open(params: Path, overrides: list[str] | None = None) -> tuple[Params, Workspace]:
    """Load params (exit 2 when bad) and point Prefect and MLflow at their workspace."""
    loaded, _ = _load(params, overrides)
    return loaded, _activate(loaded)


@app.command()
def run(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="retrain even when nothing changed")] = False,
) -> None:
    """Run the retraining flow end to end: ingest, validate, train, evaluate, gate, export, register.

    Exit codes: 0 completed (promoted, not promoted, up to date or no drift), 1 bad or missing data
    or a failed validation, 2 bad params, 3 another retrain holds the workspace.
    """
    loaded, overrides = _load(params, set_)
    ws = _activate(loaded)
    from flows.retrain import retrain  # here: after activate (MLflow, Prefect read settings on import)

    quiet_third_party_loggers()

    with _exit_on((ConfigError, *_run_errors()), "run failed"):
        state = retrain(params_path=str(params.resolve()), overrides=overrides, force=force, return_state=True)
        if state.is_failed():
            state.result()
    if state.is_cancelled():
        console.print(f"[yellow]refused[/] {state.message}")
        raise typer.Exit(3)
    if state.name in ("UpToDate", "NoDrift"):
        console.print(f"[green]{state.name}[/] {state.message}")
        return
    summary = state.result()
    assert isinstance(summary, RetrainSummary)  # a trained run's state (Completed or NotPromoted) carries its summary
    _print_run(summary, state.name, state.message, ws)


def _run_errors() -> tuple[type[Exception], ...]:
    """A failed validation or bad data; imported when ``run`` starts, not when the CLI loads (pydicom, Pillow,
    scikit-learn)."""
    from medimg.steps.validate import ValidationFailed  # here: see the docstring

    return (ValidationFailed, *_data_errors())


def _figure(value: float | None) -> str:
    """A metric to 4 decimals; ``n/a`` for an undefined one (None or NaN)."""
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _print_run(summary: RetrainSummary, state_name: str | None, message: str | None, ws: Workspace) -> None:
    # here: the metric definitions import scikit-learn (1 s), needed only once a run has finished
    from medimg.evaluation.task_metrics import headline_metrics

    table = Table(title=f"retrain: {state_name}", show_header=False)
    model, evaluation, gate = summary.model, summary.evaluation, summary.gate
    table.add_row("model", f"{model.model_name} v{model.version} -> {model.alias}")
    table.add_row("data version", summary.data_version)
    for key in headline_metrics(evaluation.task_kind, evaluation.class_names):
        lo, hi = (_figure(v) for v in evaluation.test_ci95.get(key, (None, None)))
        table.add_row(f"test {key}", f"{_figure(evaluation.test.get(key))}  (95% CI {lo}-{hi})")
    table.add_row("threshold", "argmax" if evaluation.threshold is None else f"{evaluation.threshold:.4f}")
    table.add_row("gate", "passed" if gate.passed else "FAILED: " + ", ".join(gate.failed))
    table.add_row("gate report", str(gate.report))
    table.add_row("validation report", str(summary.validation.report))
    table.add_row("onnx sha256", summary.export.sha256)
    table.add_row("step seconds", json.dumps(summary.step_seconds))
    table.add_row("workspace", str(ws.root))
    Console().print(table)
    if message and state_name != "Completed":
        console.print(f"[yellow]{message}[/]")


@app.command()
def status(
    params: ParamsOption = Path("params.yaml"), as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """The champion: version, metrics, data version, ONNX sha256, when and why it was promoted."""
    loaded, ws = _open(params)
    from medimg.status import champion_status  # here: after activate (MLflow, Prefect read settings on import)

    info = champion_status(loaded, ws)
    if as_json:
        typer.echo(json.dumps(info, indent=1, default=str))
        return
    out = Console()
    sched = info["schedule"]
    out.print(
        f"schedule: {sched['cron']} ({sched['timezone']}), deployment {sched['deployment']}"
        + (f", work pool {sched['work_pool']}" if sched["work_pool"] else ", served by `medimg schedule`")
    )
    runs = Table(title="last runs")
    for column in ("started (UTC)", "outcome", "reason", "data version", "model"):
        runs.add_column(column)
    for row in info["last_runs"]:
        started = datetime.fromtimestamp(row["start_time"] / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")
        runs.add_row(
            started,
            row["outcome"] or row["status"],
            (row["reason"] or "")[:90],
            (row["data_version"] or "")[:12],
            row["model_version"] or "",
        )
    out.print(runs)
    champ = info["champion"]
    if champ is None:
        console.print(f"no champion for model {loaded.registry.model_name!r} yet; run `medimg run`")
        return
    table = Table(title=f"{loaded.registry.model_name}@champion", show_header=False)
    for key in ("version", "data_version", "onnx_sha256", "promoted_at", "promotion_reason", "git_commit", "run_id"):
        table.add_row(key, str(champ.get(key)))
    for key, value in champ["metrics"].items():
        table.add_row(key, f"{value:.4f}")
    out.print(table)


ReasonOption = Annotated[str, typer.Option("--reason", help="why; recorded in the audit log and on the registry")]


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="the model version to make champion")],
    reason: ReasonOption,
    force: Annotated[
        bool, typer.Option("--force", help="promote although its gates did not pass (logged as forced)")
    ] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Make VERSION the champion: refused unless it passed its gates, or --force with a reason."""
    loaded, ws = _open(params)
    from medimg.promotion import PromotionRefused  # here: after activate (MLflow, Prefect read settings on import)
    from medimg.promotion import promote as promote_version

    with _exit_on(PromotionRefused, "promotion refused"):
        entry = promote_version(loaded, ws, version, reason, force=force)
    forced = " [bold yellow](FORCED past failed gates)[/]" if entry["forced"] else ""
    console.print(
        f"{entry['model']} v{entry['version']} is champion (previous: {entry['previous'] or 'none'}){forced}; "
        f"audit: {ws.audit_log} and registry tag {entry['mlflow_tag']}"
    )


@app.command()
def rollback(reason: ReasonOption, params: ParamsOption = Path("params.yaml")) -> None:
    """Move champion back to the version the current champion replaced."""
    loaded, ws = _open(params)
    from medimg.promotion import PromotionRefused  # here: after activate (MLflow, Prefect read settings on import)
    from medimg.promotion import rollback as rollback_champion

    with _exit_on(PromotionRefused, "rollback refused"):
        entry = rollback_champion(loaded, ws, reason)
    console.print(
        f"{entry['model']}: champion rolled back from v{entry['previous']} to v{entry['version']}; "
        f"audit: {ws.audit_log} and registry tag {entry['mlflow_tag']}"
    )


class PullLayout(str, Enum):
    """What ``medimg pull --out`` becomes."""

    RELEASE = "release"
    TRITON = "triton"


@app.command()
def pull(
    out: Annotated[Path, typer.Option("--out", help="folder (managed as a symlink) that receives the model")],
    alias: Annotated[str | None, typer.Option("--alias", help="alias to pull (default champion)")] = None,
    version: Annotated[str | None, typer.Option("--version", help="version number to pull")] = None,
    layout: Annotated[
        PullLayout,
        typer.Option(
            "--layout",
            help="release: --out is a link to a verified release folder; triton: --out is a Triton/KServe model "
            "repository (<model>/config.pbtxt, <model>/<version>/model.onnx)",
        ),
    ] = PullLayout.RELEASE,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write model.onnx and its model card to --out, verified against the registry's sha256.

    Exit 1 when nothing could be pulled, 3 when the file failed its sha256 check; in both cases
    --out is left as it was.
    """
    loaded, _ = _open(params)
    from medimg.pull import IntegrityError, PullError  # here: after activate (MLflow, Prefect read settings on import)
    from medimg.pull import pull as pull_model

    if layout is PullLayout.TRITON:
        from medimg.pull.triton_repository import pull_triton  # here: ONNX Runtime for the triton layout only

        with _exit_on(PullError, "pull failed"), _exit_on(IntegrityError, "integrity check failed", code=3):
            written = pull_triton(loaded, repo=out, alias=alias, version=version)
        table = Table(
            title=f"pulled {written.model_name} v{written.version} into a Triton repository", show_header=False
        )
        table.add_row("sha256 (verified)", written.sha256)
        table.add_row("config", str(written.model_dir / "config.pbtxt"))
        table.add_row("model", str(written.version_dir / "model.onnx"))
        Console(stderr=True).print(table)
        return
    with _exit_on(PullError, "pull failed"), _exit_on(IntegrityError, "integrity check failed", code=3):
        result = pull_model(loaded, out_dir=out, alias=alias, version=version)
    table = Table(title=f"pulled {result.model_name} v{result.version}", show_header=False)
    table.add_row("sha256 (verified)", result.sha256)
    table.add_row("out", str(result.out_dir))
    table.add_row("release", str(result.release_dir))
    table.add_row("data version", str(result.card["data_version"]))
    table.add_row("gate", "passed" if result.card["gate"]["passed"] else "FAILED")
    Console(stderr=True).print(table)


@app.command()
def predict(
    model: Annotated[
        str, typer.Argument(help="an .onnx file, or an alias (champion) or version (3) of the registered model")
    ],
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="DICOM, PNG or JPEG files, or folders of them; for a 3D model: NIfTI files, .npz volumes, or "
            "folders holding DICOM series"
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="write the rows here instead of stdout; a segmentation model: the folder for masks, overlays, "
            "DICOM SEG and volumes.csv (required)",
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "csv",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    allow_modality: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-modality",
            help="also score DICOM of this Modality (e.g. CT), which the model is not for; repeatable",
        ),
    ] = None,
    any_modality: Annotated[
        bool, typer.Option("--any-modality", help="score DICOM of every Modality (no modality_mismatch)")
    ] = False,
    modality: Annotated[
        str | None,
        typer.Option(
            "--modality", help="3D models: the Modality of the NIfTI volumes (e.g. CT), which NIfTI does not say"
        ),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run the model over images with the preprocessing from its own metadata; bad files get a reason.

    Each row gives every class's probability (p_<class>), the predicted class (binary: by the
    model's threshold; multiclass: arg-max), the abnormality probability (the abnormal classes'
    sum) and the abnormality flag (at or above the threshold); probability and label, the
    columns of earlier versions, are the abnormality probability and the predicted class. A
    table of the predicted classes goes to stderr.

    A file is refused (a reason, no probability) when it cannot be decoded, or when ingest
    validation would have kept it out of the model's training data (non_finite, blank,
    bit_depth_out_of_range, size_out_of_range: the limits recorded in the model), or when it is a
    DICOM of a modality the model is not for (modality_mismatch) unless --allow-modality or
    --any-modality says to score it anyway.

    A 3D model scores volumes (medimg.predict_volumes): a NIfTI file, each volume of an .npz
    (arrays [D, H, W] or [N, D, H, W]) and each DICOM series in a folder, named in the volume column
    (npz key[index]; a series by the keyed pseudonym of its SeriesInstanceUID, which needs
    MEDIMG_DEID_SECRET); a refused series gets its reason (missing_slices, ...). A 2D image given to
    a 3D model, or a volume to a 2D model, gets image_for_3d_model or volume_for_2d_model.

    A segmentation model (medimg.predict_segmentation) writes into the --out folder, per NIfTI file or DICOM
    series: <name>.mask.nii.gz (labels on the input's own voxels, its affine), <name>.overlay.png, for a DICOM
    series <name>.seg.dcm (a DICOM Segmentation naming the model, its version and ONNX sha256), and one row per
    volume with each structure's volume in mL in volumes.csv (or volumes.json with --format json).
    """
    # here: torch and ONNX Runtime (1 s) load for predict only, not with every command
    from medimg.predict import DIMENSION_REASONS, collect_files, predict_files, registry_model, render, summary
    from medimg.scoring import OnnxModel

    if fmt not in ("csv", "json"):
        console.print(f"[bold red]--format {fmt!r}[/]: expected csv or json")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="medimg-predict-") as scratch:
        candidate = Path(model)
        if candidate.suffix.lower() == ".onnx" or candidate.is_file():
            if not candidate.is_file():
                console.print(f"[bold red]no such model file[/] {candidate}")
                raise typer.Exit(2)
            source = str(candidate)
            info = None
        else:
            loaded, _ = _open(params)
            from medimg.pull import PullError  # here: after activate (MLflow, Prefect read settings on import)

            with _exit_on(PullError, f"model {model!r}"):
                candidate, info = registry_model(loaded.registry.model_name, model, Path(scratch))
            source = f"{info.name} v{info.version} (sha256 verified)"
        onnx_model = OnnxModel(candidate)
        if onnx_model.is_segmentation:  # masks into a folder, not rows to stdout
            _predict_segmentation(
                onnx_model, source, info, paths, out, fmt, allow_modality or (), any_modality, modality
            )
            return
        volumetric = onnx_model.dims == 3
        files = list(paths) if volumetric else collect_files(paths)  # a 3D model reads series folders whole
        console.print(
            f"model {source} ({onnx_model.input_layout}); ONNX Runtime provider: {onnx_model.provider}; "
            f"{len(files)} {'path' if volumetric else 'file'}(s)"
        )
        rules = onnx_model.input_rules.allowing(allow_modality or (), any_modality)
        console.print(
            f"input checks: {rules.describe()}"
            + (
                ""
                if rules.bit_depth_range is not None
                else " (the model records no validation limits: exported before they were recorded)"
            )
        )
        if volumetric:
            predictions = _predict_volumes(onnx_model, files, batch_size, allow_modality, any_modality, modality)
        else:
            predictions = predict_files(
                onnx_model,
                files,
                batch_size=batch_size,
                show_progress=len(files) >= 32,
                console=console,
                allow_modalities=tuple(allow_modality or ()),
                any_modality=any_modality,
            )
    text = render(predictions, fmt, onnx_model.class_names, volumes=volumetric)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        tmp.replace(out)
    bad = [p for p in predictions if p.error]
    if len(bad) < len(predictions):
        table = Table(title=f"{onnx_model.task_kind} model: predicted class")
        table.add_column("class")
        table.add_column("files", justify="right")
        table.add_column(f"flagged abnormal (p_abnormal >= {onnx_model.threshold:.4g})", justify="right")
        for name, n, flagged in summary(predictions, onnx_model.class_names):
            abnormal = " (abnormal)" if name in onnx_model.abnormal_classes else ""
            table.add_row(f"{name}{abnormal}", str(n), str(flagged))
        console.print(table)
    console.print(
        f"{len(predictions) - len(bad)} predicted, {len(bad)} not usable"
        + (
            ": " + ", ".join(f"{Path(p.file).name}{' ' + p.volume if p.volume else ''} ({p.error})" for p in bad[:10])
            if bad
            else ""
        )
    )
    for reason in sorted({p.error for p in bad} & set(DIMENSION_REASONS)):
        console.print(f"[bold red]{reason}[/]: {DIMENSION_REASONS[reason]}")
    if len(bad) == len(predictions):  # nothing predicted (no files, or all unusable)
        raise typer.Exit(1)


def _predict_segmentation(onnx_model, source, record, paths, out, fmt, allow_modality, any_modality, modality) -> None:
    """``medimg predict`` with a segmentation model (:mod:`medimg.predict_segmentation`): files into the ``out``
    folder, a summary to stderr; exit 2 without ``--out`` or the pseudonymisation secret a DICOM input needs, 1
    when no input could be segmented."""
    # here: pydicom, nibabel, highdicom and the volume readers load for a segmentation model's predict only
    from medimg.data.deid import MissingSecretError, secret_from_env
    from medimg.predict import DIMENSION_REASONS
    from medimg.predict_segmentation import algorithm_for, predict_segmentation, write_table
    from medimg.predict_volumes import needs_secret

    if out is None or out.is_file():
        console.print(
            "[bold red]--out FOLDER[/]: a segmentation model writes masks, overlays, DICOM SEG and volumes.csv into "
            + ("a folder, not a file" if out is not None else "a folder; give one")
        )
        raise typer.Exit(2)
    secret = None
    if needs_secret(paths):
        with _exit_on(MissingSecretError, "DICOM series are named by keyed pseudonyms:", code=2):
            secret = secret_from_env()
    algorithm = algorithm_for(onnx_model, record)
    console.print(
        f"model {source} (segmentation, {onnx_model.input_layout}, structures "
        f"{', '.join(onnx_model.abnormal_classes)}); ONNX Runtime provider: {onnx_model.provider}; "
        f"{len(paths)} path(s); into {out}"
    )
    console.print(f"input checks: {onnx_model.input_rules.allowing(tuple(allow_modality), any_modality).describe()}")
    results = predict_segmentation(
        onnx_model,
        paths,
        out,
        algorithm,
        allow_modalities=tuple(allow_modality),
        any_modality=any_modality,
        secret=secret,
        modality=modality,
    )
    structures = list(onnx_model.abnormal_classes)
    table_path = write_table(results, structures, out, fmt)
    done = [r for r in results if r.error is None]
    if done:
        table = Table(title="segmented: volume per structure (mL)")
        table.add_column("input")
        for name in structures:
            table.add_column(name, justify="right")
        table.add_column("DICOM SEG")
        for r in done:
            label = r.volume or Path(r.file).name  # a series by its pseudonym, never a UID
            volumes = r.volumes_ml
            seg = r.dicom_seg or (f"not written: {r.dicom_seg_skipped}" if r.dicom_seg_skipped else "")
            table.add_row(label, *(f"{volumes[name]:.3f}" for name in structures), seg)
        console.print(table)
    bad = [r for r in results if r.error]
    console.print(
        f"{len(done)} segmented, {len(bad)} not usable; table {table_path}"
        + (
            ": " + ", ".join(f"{Path(r.file).name}{' ' + r.volume if r.volume else ''} ({r.error})" for r in bad[:10])
            if bad
            else ""
        )
    )
    for reason in sorted({r.error for r in bad if r.error} & set(DIMENSION_REASONS)):
        console.print(f"[bold red]{reason}[/]: {DIMENSION_REASONS[reason]}")
    if not done:
        raise typer.Exit(1)


def _predict_volumes(onnx_model, paths, batch_size, allow_modality, any_modality, modality):
    """``medimg predict`` with a 3D model (:mod:`medimg.predict_volumes`); exit 2 when DICOM inputs need the
    pseudonymisation secret and none is set."""
    # here: pydicom, nibabel and the volume readers load for a 3D model's predict only
    from medimg.data.deid import MissingSecretError, secret_from_env
    from medimg.predict_volumes import needs_secret, predict_volumes

    secret = None
    if needs_secret(paths):
        with _exit_on(MissingSecretError, "DICOM series are named by keyed pseudonyms:", code=2):
            secret = secret_from_env()
    return predict_volumes(
        onnx_model,
        paths,
        batch_size=min(batch_size, 8),
        allow_modalities=tuple(allow_modality or ()),
        any_modality=any_modality,
        secret=secret,
        modality=modality,
    )


# --------------------------------------------------------------------------- ingest and validate

SOURCE_KINDS = ("medmnist", "image_folder", "dicom_folder", "nifti_folder", "dicom_series")
SourceArgument = Annotated[
    str | None,
    typer.Argument(
        help="a source kind (medmnist | image_folder | dicom_folder) or the folder/.npz to ingest; "
        "default: data.source and data.root from params"
    ),
]
KindOption = Annotated[
    str | None,
    typer.Option(
        "--kind",
        help=(
            "source kind for a SOURCE folder (default: data.source from params unless medmnist, else told by the "
            "layout: top-level folders named after a class or a split (NORMAL/, train/...) -> image_folder, "
            "whatever the files (PNG, JPEG or DICOM); else a labels CSV (data.dicom.labels_csv) at the top -> "
            "dicom_folder)"
        ),
    ),
]
InboxOption = Annotated[Path | None, typer.Option("--inbox", help="folder of new files to add incrementally")]


def _data_errors() -> tuple[type[Exception], ...]:
    """Errors about the data or its configuration: reported in one line, exit status 1."""
    # here: pydicom and the data modules load with the commands that read data, not with --help
    from medimg.data.deid import MissingSecretError
    from medimg.data.medmnist import DataSourceError
    from medimg.data.quarantine import QuarantineThresholdError
    from medimg.data.sources import SourceLayoutError

    return (DataSourceError, MissingSecretError, QuarantineThresholdError, SourceLayoutError)


def source_overrides(
    source: str | None,
    kind: str | None,
    inbox: Path | None,
    configured: str,
    data_config=None,
    class_names: tuple[str, ...] | None = None,
) -> dict:
    """``medimg ingest SOURCE --kind K --inbox I`` as params overrides of the ``data`` section.

    A SOURCE folder without ``--kind`` takes ``configured`` (``data.source``) unless it is medmnist;
    else its kind is told by its layout (:func:`medimg.data.sources.guess_kind`, with the class
    names ``class_names`` (``task.class_names``) and the class folders and labels CSV of ``data_config``, a
    ``DataConfig``; defaults when None):
    class or split folders -> image_folder, else a labels CSV -> dicom_folder, else a ``ConfigError``.
    """
    if kind is not None and kind not in SOURCE_KINDS:
        raise ConfigError(f"--kind {kind!r}: expected one of {', '.join(SOURCE_KINDS)}")
    data: dict = {}
    if source in SOURCE_KINDS:
        kind, source = kind or source, None
    if source is not None:
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"{source}: no such file or folder (nor a source kind: {', '.join(SOURCE_KINDS)})")
        if path.is_file():
            if path.suffix != ".npz":
                raise ConfigError(f"{source}: a file source must be a MedMNIST .npz archive; give folders for images")
            kind = kind or "medmnist"
            data["data_dir"] = str(path.parent)
        else:
            if kind is None:
                kind = configured if configured != "medmnist" else _guess_kind(path, data_config, class_names)
            data["root"] = str(path)
    if kind is not None:
        data["source"] = kind
    if inbox is not None:
        data["inbox"] = str(inbox.expanduser().resolve())
    return {"data": data} if data else {}


def _guess_kind(path: Path, data_config: DataConfig | None, class_names: tuple[str, ...] | None) -> str:
    # here: the source scanner imports pydicom and the preprocessing (0.5 s), only for `ingest SOURCE`
    from medimg.data.sources import guess_kind

    cfg = data_config or DataConfig()
    names = class_names or TaskConfig().class_names
    guessed = guess_kind(path, names, cfg.image_folder.class_folders, cfg.dicom.labels_csv)
    if guessed is None:
        raise ConfigError(
            f"{path}: cannot tell the source kind: no top-level class or split folder "
            f"({', '.join(names)}, train/val/test; any case) and no {cfg.dicom.labels_csv or 'labels CSV'}; "
            "give --kind image_folder, dicom_folder, nifti_folder or dicom_series"
        )
    return guessed


def _console_logging() -> None:
    """medimg's log lines (quarantined files, warts) on the console, unless logging is set up already."""
    logger = logging.getLogger("medimg")
    if not logging.getLogger().handlers and not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=console, show_path=False, show_time=False))
    quiet_third_party_loggers()


@app.command()
def ingest(
    source: SourceArgument = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    kind: KindOption = None,
    inbox: InboxOption = None,
) -> None:
    """Ingest a source: decode in parallel, de-identify, preprocess, quarantine bad files, version with DVC.

    Every file under the source is ingested, quarantined (a bad image, with its reason) or skipped
    (not an image: hidden files, the labels CSV, DICOMDIR and other non-image DICOM objects); both
    lists are in the workspace's reports. See --kind for how a SOURCE folder's kind is told.
    """
    from medimg.steps import ingest as ingest_step  # here: the ingest's imports (1 s) only for this command

    loaded, extra = _load(params, set_)
    with _exit_on(ConfigError, "configuration error", code=2):
        extra = deep_merge(
            extra, source_overrides(source, kind, inbox, loaded.data.source, loaded.data, loaded.task.class_names)
        )
        loaded = load_params(params, extra)
    ws = _activate(loaded)
    _console_logging()
    columns = (TextColumn("decode"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    # the bar stops (Progress exits) before the error line is printed
    with _exit_on(_data_errors(), "ingest failed"), Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("decode", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = ingest_step.run(loaded, ws, progress=progress)
    table = Table(title=f"ingest: {summary.source_kind}", show_header=False)
    table.add_row("data version", f"{summary.data_version} ({'new' if summary.new_version else 'unchanged'})")
    table.add_row("images", f"{summary.n_images} {json.dumps(summary.split_counts)}")
    table.add_row("files", f"{summary.n_files} ({summary.n_decoded} decoded, {summary.n_cached} from the cache)")
    table.add_row("quarantined", f"{summary.n_quarantined} {json.dumps(summary.quarantine_by_reason)}")
    table.add_row("quarantine report", str(summary.quarantine_csv))
    table.add_row("skipped (not images)", f"{summary.n_skipped_files} {json.dumps(summary.skipped_files_by_reason)}")
    if summary.skipped_files_csv is not None:
        table.add_row("skip report", str(summary.skipped_files_csv))
    table.add_row("contract hash", summary.contract_hash)
    table.add_row("workspace", str(ws.root))
    Console().print(table)


@app.command()
def validate(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Run the Great Expectations suites on the current data version; exit 1 when a critical one fails."""
    from medimg.steps import validate as validate_step  # here: pydicom, scikit-learn only for this command

    loaded, ws = _open(params, set_)
    _console_logging()
    version = versioning.current_version(ws)
    if version is None:
        console.print(f"[bold red]no data version[/] in {ws.root}; run `medimg ingest` first")
        raise typer.Exit(1)
    summary = validate_step.run(loaded, ws, version)
    table = Table(title=f"validate: {'passed' if summary.passed else 'FAILED'}", show_header=False)
    table.add_row("data version", version)
    table.add_row("warnings", str(summary.n_warnings))
    for line in summary.failed:
        table.add_row("failed", line)
    table.add_row("warts", json.dumps(summary.warts))
    table.add_row("report (JSON)", str(summary.report))
    table.add_row("report (HTML)", str(summary.html_report))
    Console().print(table)
    if not summary.passed:
        raise typer.Exit(1)


@app.command()
def lineage(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS, NAME@VERSION, or a version number")] = "champion",
    html: Annotated[Path | None, typer.Option("--html", help="write a self-contained HTML report here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Trace a model version to its run, params, code, data version, checks, gate decision, file and promotions."""
    loaded, ws = _open(params)
    from medimg import lineage as lineage_lib  # here: after activate (MLflow, Prefect read settings on import)
    from medimg.registry import VersionNotFound

    with _exit_on(VersionNotFound, "lineage"):
        report = lineage_lib.lineage(loaded, ws, ref)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(lineage_lib.render_html(report), encoding="utf-8")
        console.print(f"HTML report: {html}")
    if as_json:
        typer.echo(lineage_lib.to_json(report))
    elif html is None:
        Console().print(lineage_lib.render_text(report), markup=False, highlight=False)


@app.command()
def reproduce(
    version: Annotated[str, typer.Argument(help="the model version (or champion, NAME@ALIAS) to reproduce")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Restore that version's data with DVC and its run's params, retrain, and compare the metrics."""
    loaded, ws = _open(params)
    quiet_third_party_loggers()
    from medimg import reproduce as reproduce_lib  # here: after activate (MLflow, Prefect read settings on import)
    from medimg.registry import VersionNotFound

    with _exit_on((VersionNotFound, reproduce_lib.ReproduceError), "reproduce"):
        result = reproduce_lib.reproduce(loaded, ws, version)
    Console().print(reproduce_lib.render_text(result), markup=False, highlight=False)


@app.command()
def schedule(
    params: ParamsOption = Path("params.yaml"),
    work_pool: Annotated[
        str | None,
        typer.Option(
            "--work-pool",
            help="register with this Prefect work pool instead of serving here (default: schedule.work_pool)",
        ),
    ] = None,
) -> None:
    """Run retraining on the cron schedule in params, live monitoring on monitor.cron (and the inbox watcher
    when data.inbox is set).

    Without a work pool this process serves the deployments until stopped (Ctrl-C); with one,
    the deployments are registered and a `prefect worker start --pool POOL` runs them.
    Scheduled runs never overlap: each deployment has a concurrency limit of one.
    """
    loaded, _ = _open(params)
    quiet_third_party_loggers()
    from prefect.settings import PREFECT_API_URL  # here: after activate (MLflow, Prefect read settings on import)

    if not PREFECT_API_URL.value():  # the ephemeral API runs no scheduler: the cron would never fire
        console.print(
            "[bold red]no Prefect server[/] schedules need a running one (Prefect's embedded API has no "
            "scheduler): start it with `prefect server start` (or `scripts/services.sh start`) and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
        raise typer.Exit(2)
    # here: after activate (MLflow, Prefect read settings on import)
    from flows.deployments import deploy_to_pool, runner_deployments

    pool = work_pool or loaded.schedule.work_pool
    if pool:
        ids = deploy_to_pool(loaded, params, pool)
        console.print(
            f"registered {len(ids)} deployment(s) with work pool {pool!r}: {', '.join(ids)}; "
            f"start a worker with `prefect worker start --pool {pool}`"
        )
        return
    import prefect  # here: after activate (MLflow, Prefect read settings on import)

    console.print(
        f"serving retrain on '{loaded.schedule.cron}' and monitor on '{loaded.monitor.cron}' "
        f"({loaded.schedule.timezone})"
        + (f" and the inbox watcher every {loaded.schedule.inbox_poll_seconds} s" if loaded.data.inbox else "")
    )
    prefect.serve(*runner_deployments(loaded, params))


@app.command()
def serve(
    params: ParamsOption = Path("params.yaml"),
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="HTTP port (default serve.port)")] = None,
    set_: SetOption = None,
) -> None:
    """Serve the registered model over HTTP (Open Inference Protocol v2 and a file endpoint) until stopped.

    Binds serve.host (127.0.0.1 by default). Follows serve.alias (champion) in the registry: the version
    it names is downloaded, checked against its sha256 and swapped in between requests when the alias
    moves. Every endpoint but /v2/health/live and /v2/health/ready needs a login (`medimg users add`).
    With a PACS (serve.pacs_url or MEDIMG_ORTHANC_URL) the DICOM node follows it too, and its scored images
    become cases of the review pages (/review: session login for radiologist and admin users).
    """
    loaded, ws = _open(params, set_)
    quiet_third_party_loggers()
    _console_logging()
    # here: after activate (MLflow reads its settings on import); FastAPI and ONNX Runtime for serve only
    from medimg.serving.server import build_service, run_service

    run_service(build_service(loaded, ws, port))


@app.command()
def monitor(params: ParamsOption = Path("params.yaml")) -> None:
    """Judge the service's prediction log once: score and input drift, refusals, realised sensitivity and
    specificity from reviews; report and plots in <workspace>/serve/monitoring/ (the /review/monitoring page),
    events and notifications as the scheduled monitor sends them. Exit 0 either way; the events are printed."""
    _open(params)
    quiet_third_party_loggers()
    from flows.monitor import monitor as monitor_flow  # here: after activate (MLflow, Prefect read settings on import)

    state = monitor_flow(params_path=str(params), return_state=True)
    if state.is_failed():
        console.print(f"[bold red]monitor failed[/] {state.message}")
        raise typer.Exit(1)
    console.print(f"monitor: {state.name}: {state.message}")


users_app = typer.Typer(no_args_is_help=True, help="Manage the users of `medimg serve` (the workspace's user store).")
app.add_typer(users_app, name="users")


def _user_store(params: Path):
    """The user store of the params' workspace (no MLflow or Prefect needed)."""
    from medimg.users import UserStore  # here: argon2 loads for the users commands only

    loaded, _ = _load(params, None)
    return UserStore(Workspace.at(loaded.workspace.path).users_file)


def read_password(stream=None) -> str:
    """The new password: one line of ``stream`` (default standard input) without its line ending; from a
    terminal, asked twice without echo."""
    stream = stream or sys.stdin
    if stream.isatty():
        return typer.prompt("password", hide_input=True, confirmation_prompt=True, err=True)
    line = stream.readline()
    return line[:-1] if line.endswith("\n") else line


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="the user's login name")],
    role: Annotated[str, typer.Option("--role", help="admin, radiologist or service")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Add a user; the password is read from standard input (one line), never from the command line.

    Exit 1 for an unknown role, a name already taken, a bad name or an empty password.
    """
    store = _user_store(params)
    from medimg.users import UserError  # here: argon2 loads for the users commands only

    password = read_password().removesuffix("\r")
    with _exit_on((UserError, ValueError), "users add"):
        user = store.add(name, role, password)
    console.print(f"added user {user.name} (role {user.role}) to {store.path}")


@users_app.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument(help="the user's login name")], params: ParamsOption = Path("params.yaml")
) -> None:
    """Remove a user; their logins stop working at their next request. Exit 1 when there is no such user."""
    store = _user_store(params)
    from medimg.users import UserError  # here: argon2 loads for the users commands only

    with _exit_on((UserError, ValueError), "users remove"):
        user = store.remove(name)
    console.print(f"removed user {user.name} (role {user.role}) from {store.path}")


@users_app.command("list")
def users_list(params: ParamsOption = Path("params.yaml")) -> None:
    """List the users and their roles (never a hash)."""
    store = _user_store(params)
    with _exit_on(ValueError, "users list"):
        users = store.users()
    table = Table(title=f"users ({store.path})")
    table.add_column("name")
    table.add_column("role")
    table.add_column("created")
    for user in users:
        table.add_row(user.name, user.role, user.created)
    Console().print(table)


# --------------------------------------------------------------------------- tune


@app.command()
def tune(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="trials this call (default tune.trials)")
    ] = None,
    dask: Annotated[
        str | None,
        typer.Option("--dask", help="a Dask scheduler's ADDRESS (tcp://host:8786); default: a local cluster"),
    ] = None,
    retrain_best: Annotated[
        bool, typer.Option("--retrain/--no-retrain", help="run the best trial's params through the retrain flow")
    ] = True,
) -> None:
    """Run an Optuna study (tune section of params) on a Dask cluster, then the best trial through the normal flow.

    Each trial is a Prefect task on a Dask worker and an MLflow child run of the study's parent run; trials are
    pruned on the per-epoch validation metric. The best trial becomes a params file (base: the given one) that
    the retrain flow trains, gates and registers like any candidate. Exit codes: 0 done (promoted or not), 1 no
    trial completed, bad data or a failed run, 2 bad params, 3 another run holds the workspace.
    """
    extra = {"tune": {"trials": trials}} if trials else {}
    with _exit_on(ConfigError, "configuration error", code=2):
        overrides = deep_merge(parse_overrides(set_), extra)
        loaded = load_params(params, overrides)
    ws = _activate(loaded)
    from flows.tune import dask_runner  # here: after activate (MLflow, Prefect read settings on import)
    from flows.tune import tune as tune_flow

    quiet_third_party_loggers()
    for name in ("distributed", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    runner = dask_runner(dask, loaded.tune.workers)
    with _exit_on((ConfigError, RuntimeError, *_run_errors()), "tune failed"):
        state = tune_flow.with_options(task_runner=runner)(
            params_path=str(params.resolve()), overrides=overrides, retrain_best=retrain_best, return_state=True
        )
        if state.is_failed():
            state.result()
    if state.is_cancelled():
        console.print(f"[yellow]refused[/] {state.message}")
        raise typer.Exit(3)
    summary = state.result()
    from medimg.tuning.results import TuneSummary  # here: with the command, as its flow

    assert isinstance(summary, TuneSummary)  # a completed tune's state carries its summary
    table = Table(title=f"tune: study {summary.study_name}", show_header=False)
    table.add_row("storage", summary.storage)
    table.add_row("data version", summary.data_version)
    states = [t.state for t in summary.trials]
    table.add_row(
        "trials this call",
        f"{len(states)} on {summary.workers} Dask worker(s) in {summary.trials_seconds:.0f} s: "
        + ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "failed")),
    )
    table.add_row("best trial", f"{summary.best_number}: {loaded.tune.metric} {summary.best_value:.4f}")
    table.add_row(
        "best values", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.best_values)
    )
    table.add_row("best params file", str(summary.best_params_file))
    table.add_row("MLflow parent run", summary.parent_run_id)
    if summary.retrain_state:
        model = (
            f"v{summary.model_version} {'promoted' if summary.promoted else 'not promoted'}"
            if summary.model_version
            else ""
        )
        table.add_row("retrain", f"{summary.retrain_state} {model}".strip())
    table.add_row("workspace", str(ws.root))
    Console().print(table)
    if summary.retrain_message and summary.retrain_state != "Completed":
        console.print(f"[yellow]{summary.retrain_message}[/]")


def main() -> None:
    """The ``medimg`` console script: run the CLI; Ctrl-C exits with status 130."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
