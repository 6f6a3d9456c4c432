"""The jinja2 environment of the report templates (``report/templates``): autoescape on, undefined names are
errors. The HTML report (``report.html``) and the follow-up page (``report.compare``) render through it."""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined


@cache
def environment() -> Environment:
    """The shared environment (built once)."""
    return Environment(
        loader=PackageLoader("lungtumor.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
