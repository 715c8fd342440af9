"""Lineage of a registered model: every link from the version back to its data, checks and decisions.

Why: an auditor must be able to answer, for any model a deployment pipeline pulled, "which data,
which code, which checks and which decisions produced this file?" without trusting any single
record. :func:`lineage` gathers the chain into a typed :class:`LineageReport`
(:mod:`~medimg.lineage.gather`), :mod:`~medimg.lineage.checks` records whether the independent
records agree (for instance the sha256 tag against the stored file's actual hash, and the data
version tag against the run's tag and the ONNX metadata), and :mod:`~medimg.lineage.render` shows it
as text, JSON (figures left out unless asked for) or one self-contained HTML page.
"""

from medimg.lineage.gather import KEY_METRICS, lineage
from medimg.lineage.render import render_html, render_text, to_json
from medimg.lineage.report import LineageReport

__all__ = ["KEY_METRICS", "LineageReport", "lineage", "render_html", "render_text", "to_json"]
