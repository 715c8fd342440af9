"""The ``medimg`` command line: run the retraining flow and inspect the registry.

This is the one module of the library allowed to start a flow. It validates params and points
Prefect and MLflow at the workspace *before* importing them, because both read their settings
from the environment on import.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medimg.config import ConfigError, Params, load_params
from medimg.workspace import Workspace, activate

app = typer.Typer(add_completion=False, no_args_is_help=True, help="medimg: retrain, gate and promote medical image classifiers.")
console = Console(stderr=True)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to use")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a param: section.key=value (YAML value)")]


def parse_overrides(items: list[str] | None) -> dict:
    import yaml

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


def _load(params: Path, overrides: list[str] | None) -> tuple[Params, dict]:
    try:
        extra = parse_overrides(overrides)
        return load_params(params, extra), extra
    except ConfigError as err:
        console.print(f"[bold red]configuration error[/] {err}")
        raise typer.Exit(2) from None


def quiet_third_party_loggers() -> None:
    """Keep the console to medimg's and Prefect's own lines (HTTP calls and exporter chatter are noise)."""
    logging.getLogger("medimg").setLevel(logging.INFO)
    for name in ("httpx", "onnxscript", "torch.onnx", "great_expectations", "dvc", "alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _activate(params: Params) -> Workspace:
    ws = Workspace.at(params.workspace.path)
    activate(ws, params.workspace.tracking_uri)
    return ws


@app.command()
def run(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Run the retraining flow end to end: ingest, validate, train, evaluate, gate, export, register."""
    loaded, overrides = _load(params, set_)
    ws = _activate(loaded)
    from flows.retrain import retrain
    from medimg.data.medmnist import DataSourceError
    from medimg.steps.validate import ValidationFailed

    quiet_third_party_loggers()

    try:
        state = retrain(params_path=str(params.resolve()), overrides=overrides, return_state=True)
    except (DataSourceError, ValidationFailed, ConfigError) as err:
        console.print(f"[bold red]run failed[/] {err}")
        raise typer.Exit(1) from None
    if state.is_failed():
        try:
            state.result()
        except (DataSourceError, ValidationFailed, ConfigError) as err:
            console.print(f"[bold red]run failed[/] {err}")
            raise typer.Exit(1) from None
    summary = state.result()
    _print_run(summary, state.name, state.message, ws)


def _print_run(summary: dict, state_name: str, message: str | None, ws: Workspace) -> None:
    table = Table(title=f"retrain: {state_name}", show_header=False)
    model = summary["model"]
    table.add_row("model", f"{model['model_name']} v{model['version']} -> {model['alias']}")
    table.add_row("data version", summary["data_version"])
    for key, value in summary["test"].items():
        lo, hi = summary["test_ci95"][key]
        table.add_row(f"test {key}", f"{value:.4f}  (95% CI {lo:.4f}-{hi:.4f})")
    table.add_row("threshold", f"{summary['threshold']:.4f}")
    table.add_row("gate", "passed" if summary["gate"]["passed"] else "FAILED: " + ", ".join(summary["gate"]["failed"]))
    table.add_row("gate report", summary["gate"]["report"])
    table.add_row("validation report", summary["validation"]["report"])
    table.add_row("onnx sha256", summary["onnx"]["sha256"])
    table.add_row("step seconds", json.dumps(summary["step_seconds"]))
    table.add_row("workspace", str(ws.root))
    Console().print(table)
    if message and state_name != "Completed":
        console.print(f"[yellow]{message}[/]")


@app.command()
def status(params: ParamsOption = Path("params.yaml"), as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The champion: version, metrics, data version, ONNX sha256, when and why it was promoted."""
    loaded, _ = _load(params, None)
    ws = _activate(loaded)
    from medimg.status import champion_status

    info = champion_status(loaded, ws)
    if as_json:
        typer.echo(json.dumps(info, indent=1, default=str))
        return
    champ = info["champion"]
    if champ is None:
        console.print(f"no champion for model {loaded.registry.model_name!r} yet; run `medimg run`")
        return
    table = Table(title=f"{loaded.registry.model_name}@champion", show_header=False)
    for key in ("version", "data_version", "onnx_sha256", "promoted_at", "promotion_reason", "git_commit", "run_id"):
        table.add_row(key, str(champ.get(key)))
    for key, value in champ["metrics"].items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
