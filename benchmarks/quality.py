"""Quality on the official PneumoniaMNIST split: the default config against the plain script and the literature.

Trains the default config (params.yaml, or the file given) with medimg's training loop, picks the
threshold on the validation split as the flow does, and reports test AUC and ACC with stratified
bootstrap 95% CIs beside the plain 3-conv-block script (benchmarks/plain_script.py, run here in
the same session) and the MedMNIST v2 / MedMNIST+ rows of ../shared/reference/benchmarks.md.
Usage: python benchmarks/quality.py [params.yaml] [--set section.key=value ...]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bare_train import fit_and_score  # benchmarks/ is sys.path[0] when this script runs
from rich.console import Console
from rich.table import Table

from medimg.cli import parse_overrides
from medimg.config import load_params
from medimg.evaluation.bootstrap import bootstrap_ci

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "benchmarks.md"


def reference_rows(path: Path) -> list[tuple[str, str, str, str]]:
    """(model, input, AUC, ACC) rows of the PneumoniaMNIST table in benchmarks.md."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"0\.\d+", cells[2]) and re.fullmatch(r"0\.\d+", cells[3]):
            rows.append((cells[0], cells[1], cells[2], cells[3]))
    return rows


def main(argv: list[str]) -> None:
    sets = [a.removeprefix("--set=") for a in argv if "=" in a]
    files = [a for a in argv if a != "--set" and "=" not in a]
    params = load_params(files[0] if files else ROOT / "params.yaml", parse_overrides(sets))
    started = time.perf_counter()
    scored = fit_and_score(params)
    result, p_test, threshold, metrics = scored.result, scored.p_test, scored.threshold, scored.metrics
    ci = bootstrap_ci(scored.y_test, p_test, threshold, n_boot=params.gates.bootstrap_samples, seed=params.train.seed)
    seconds = time.perf_counter() - started
    plain = json.loads(
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "plain_script.py"), str(scored.archive)],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )

    table = Table(title=f"PneumoniaMNIST test (n={len(p_test)}), {os.cpu_count()} CPU cores")
    for col in ("model", "input", "AUC", "ACC", "note"):
        table.add_column(col)
    table.add_row(
        f"medimg {params.model.architecture} (w{params.model.width}, {params.train.epochs} ep)",
        str(params.preprocess.size),
        f"{metrics['roc_auc']:.4f} [{ci['roc_auc'][0]:.4f}, {ci['roc_auc'][1]:.4f}]",
        f"{metrics['accuracy']:.4f} [{ci['accuracy'][0]:.4f}, {ci['accuracy'][1]:.4f}]",
        f"train {result.seconds:.0f} s, threshold {threshold:.3f} ({params.gates.threshold})",
    )
    table.add_row(
        "plain script (3 conv, AdamW, 10 ep)",
        "28",
        f"{plain['test_auc']:.4f}",
        f"{plain['test_acc']:.4f}",
        f"{plain['seconds']:.0f} s, threshold 0.5",
    )
    for name, size, auc, acc in reference_rows(REFERENCE):
        table.add_row(name, size, auc, acc, "published")
    Console().print(table)
    print(
        json.dumps(
            {
                "auc": metrics["roc_auc"],
                "auc_ci": ci["roc_auc"],
                "acc": metrics["accuracy"],
                "acc_ci": ci["accuracy"],
                "sensitivity": metrics["sensitivity"],
                "specificity": metrics["specificity"],
                "threshold": threshold,
                "train_seconds": result.seconds,
                "total_seconds": seconds,
                "best_epoch": result.best_epoch,
                "plain": plain,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
