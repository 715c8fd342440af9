"""The Jinja2 environment that renders medimg's pages and documents from ``medimg/templates``.

Every HTML page (the lineage report, the data-validation report) and the Markdown model card is a
template in ``medimg/templates`` (package data); Python code hands typed data to :func:`render` and
never assembles markup from strings. The HTML templates extend ``page.html.j2``, which inlines the
one stylesheet ``report.css`` and a Content-Security-Policy that lets the page load nothing.

Promises:

* Autoescaping is on for every ``*.html.j2`` template (``jinja2.select_autoescape``): any value
  from a record (a tag, a reason, a file name) is HTML-escaped, so ``<script>`` in a tag is text.
  Markdown templates (``*.md.j2``) are not escaped: Markdown has no escaping of its own to apply.
* An undefined name in a template is an error (``StrictUndefined``), not an empty string.
"""

from __future__ import annotations

import json
from functools import cache

import jinja2

HTML_SUFFIX = "html.j2"


def text(value: object) -> str:
    """``value`` as text; ``None`` is the empty string."""
    return "" if value is None else str(value)


def cell(value: object) -> str:
    """A table cell: floats to 4 significant digits, dicts and lists as JSON, ``None`` empty."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return text(value)


def fixed(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals; ``None`` is ``n/a``."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt(value: object) -> str:
    """Floats with 4 decimals, ``None`` as ``n/a``, anything else as text (the model card's numbers)."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def to_json(value: object, indent: int | None = None, sort_keys: bool = False) -> str:
    """``json.dumps`` (non-JSON values as ``str``); the result is escaped like any text in HTML."""
    return json.dumps(value, indent=indent, sort_keys=sort_keys, default=str)


@cache
def environment() -> jinja2.Environment:
    """The shared environment: package templates, autoescaped HTML, strict undefined names."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("medimg", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=(HTML_SUFFIX,), default_for_string=True, default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(text=text, cell=cell, fixed=fixed, fmt=fmt, json=to_json)
    return env


def render(template: str, **context: object) -> str:
    """Template ``template`` (a file name in ``medimg/templates``) rendered with ``context``."""
    return environment().get_template(template).render(**context)
