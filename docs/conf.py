"""Sphinx configuration of the agentlocks documentation site (furo theme, MyST markdown).

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (scripts/test builds it with
warnings as errors). Pages stay markdown; the API reference comes from the docstrings.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import agentlocks  # noqa: E402  (after the path change, so the checkout's source is used)

project = "agentlocks"
author = "agentlocks developers"
copyright = "agentlocks developers"
release = agentlocks.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"agentlocks {release}"

# "Attributes:" as :ivar: fields: a class that documents its properties both ways would
# otherwise describe each twice.
napoleon_use_ivar = True
napoleon_custom_sections = [("Class attributes", "params_style")]
