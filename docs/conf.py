"""Sphinx configuration for bnorm's user guide and API reference.

Build from the repository root with bnorm importable (``pip install -e ".[docs]"``):

    python -m sphinx -W --keep-going -b html docs <output dir>
    python -m sphinx -W -b doctest docs <output dir>

The API reference is plain autodoc: bnorm's docstrings are prose with signatures
(the module types are C extension types), not numpydoc sections, so numpydoc would
add nothing but warnings. The guide is reStructuredText so that Sphinx alone builds
it; its examples run as doctests (sphinx.ext.doctest) against the installed bnorm.
"""
import bnorm

project = "bnorm"
author = "the bnorm authors"
copyright = "the bnorm authors"
version = release = bnorm.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.doctest"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
# The C types have no __signature__ for every slot; docstrings carry the signature.
autodoc_docstring_signature = True

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []

# Names every guide example may use without importing them itself.
doctest_global_setup = """
import numpy as np
import bnorm
"""


def _docstring_as_preformatted_text(app, what, name, obj, options, lines):
    """Show each docstring as written, in a literal block.

    bnorm's docstrings are plain text for help() (``|x|`` is an absolute value,
    ``*spatial`` a shape), not reStructuredText; parsing them as markup would
    mangle the formulas. The literal block keeps them exactly as help() prints them.
    """
    if any(line.strip() for line in lines):
        lines[:] = ["::", ""] + ["    " + line for line in lines] + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _docstring_as_preformatted_text)
