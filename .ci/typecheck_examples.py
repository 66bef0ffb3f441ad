"""Type-check the documented examples with `mypy --strict`.

Extracts the code a user would copy:
- README.md: the ```python fenced blocks;
- docs/*.rst: the `.. code-block:: python`, `.. testcode::` (sphinx.ext.doctest) and
  `>>>` doctest examples, after docs/conf.py's doctest_global_setup (the imports
  Sphinx runs before every block);
- examples/*.py: the `>>>` doctest examples in their docstrings.

The blocks of one file build on each other (a doctest session, a guide that
continues an example), so they become one module per file, in order. Each block
keeps its line numbers: mypy's messages name the documentation file and line.
A name may be rebound with another type from one block to the next (x a float32
array, later a float64 one), as in any interactive session: --allow-redefinition.

Run from the repository root with bnorm importable: python .ci/typecheck_examples.py
Exit status: mypy's (0 when every example type-checks).
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^```python\s*$")
RST_DIRECTIVE = re.compile(r"^(\s*)\.\. (code-block|sourcecode|code):: python\s*$|^(\s*)\.\. testcode::")
DOCTEST_LINE = re.compile(r"^(\s*)(>>>|\.\.\.)( |$)")

Block = tuple[int, list[str]]  # (0-based line of the first code line, its lines, dedented)


def markdown_blocks(lines: list[str]) -> list[Block]:
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start = i + 1
            end = start
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            blocks.append((start, lines[start:end]))
            i = end
        i += 1
    return blocks


def rst_directive_blocks(lines: list[str]) -> list[Block]:
    """The bodies of python code directives: the lines indented deeper than the directive."""
    blocks: list[Block] = []
    for i, line in enumerate(lines):
        match = RST_DIRECTIVE.match(line)
        if not match:
            continue
        indent = len(match.group(1) or match.group(3) or "")
        j = i + 1
        while j < len(lines) and re.match(r"^\s+:[\w-]+:", lines[j]):  # directive options
            j += 1
        start = j
        end = j
        while end < len(lines) and (not lines[end].strip() or
                                    len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        body = textwrap.dedent("\n".join(lines[start:end])).split("\n")
        blocks.append((start, body))
    return blocks


def doctest_blocks(lines: list[str]) -> list[Block]:
    """`>>>` / `...` lines, each a one-line block at its own line."""
    blocks: list[Block] = []
    for i, line in enumerate(lines):
        match = DOCTEST_LINE.match(line)
        if match:
            blocks.append((i, [line[match.end():]]))
    return blocks


def sphinx_doctest_setup() -> list[str]:
    """docs/conf.py's doctest_global_setup, read without importing conf.py."""
    tree = ast.parse((ROOT / "docs" / "conf.py").read_text())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "doctest_global_setup"):
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return textwrap.dedent(value).strip().split("\n")
    return []


def as_module(n_lines: int, blocks: list[Block], setup: list[str]) -> str | None:
    """The blocks at their own line numbers, blank lines between; None without blocks."""
    if not blocks:
        return None
    out = [""] * n_lines
    if setup:
        first = min(start for start, _ in blocks)
        if first < len(setup):
            raise SystemExit(f"the setup ({len(setup)} lines) would overwrite a block at line {first + 1}")
        out[:len(setup)] = setup
    for start, body in sorted(blocks):
        for k, code in enumerate(body):
            out[start + k] = code
    return "\n".join(out) + "\n"


def collect() -> dict[Path, str]:
    modules: dict[Path, str | None] = {}
    readme = ROOT / "README.md"
    lines = readme.read_text().split("\n")
    modules[readme] = as_module(len(lines), markdown_blocks(lines), [])
    setup = sphinx_doctest_setup()
    for rst in sorted((ROOT / "docs").glob("*.rst")):
        lines = rst.read_text().split("\n")
        modules[rst] = as_module(len(lines), rst_directive_blocks(lines) + doctest_blocks(lines), setup)
    for example in sorted((ROOT / "examples").glob("*.py")):
        lines = example.read_text().split("\n")
        modules[example] = as_module(len(lines), doctest_blocks(lines), [])
    return {path: text for path, text in modules.items() if text is not None}


def main() -> int:
    modules = collect()
    if not any(path.name == "README.md" for path in modules):
        print("typecheck_examples: README.md has no ```python block", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        names: dict[str, Path] = {}
        for path, text in modules.items():
            rel = path.relative_to(ROOT)
            name = "example_" + re.sub(r"\W", "_", str(rel)) + ".py"
            (Path(tmp) / name).write_text(text)
            names[str(Path(tmp) / name)] = rel
        print("typecheck_examples: " + ", ".join(str(rel) for rel in names.values()))
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--allow-redefinition", "--no-incremental",
             "--config-file", str(ROOT / "pyproject.toml"), *names],
            capture_output=True, text=True, cwd=ROOT)
    output = result.stdout + result.stderr
    for generated, rel in names.items():  # name the documentation file, not the generated one
        output = output.replace(generated, str(rel))
    print(output, end="")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
