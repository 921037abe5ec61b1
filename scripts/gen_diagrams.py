"""Regenerate the lifecycle diagrams in docs/ from the spec classes.

    python scripts/gen_diagrams.py          # write docs/diagrams/* and the blocks in docs/*.md
    python scripts/gen_diagrams.py --check  # exit 1 if anything is out of date

Markdown files embed generated text between ``<!-- BEGIN GENERATED name -->``
and ``<!-- END GENERATED name -->`` markers, where name is e.g. ``job.mmd``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from taskharbor.spec.diagrams import render

ROOT = Path(__file__).resolve().parent.parent
DIAGRAMS = ROOT / "docs" / "diagrams"
FENCES = {"mmd": "mermaid", "dot": "dot", "md": ""}


def generated() -> dict[str, str]:
    """File name under docs/diagrams -> its content."""
    files = {}
    for lifecycle in ("job", "workflow"):
        files[f"{lifecycle}.mmd"] = render(lifecycle, "mermaid")
        files[f"{lifecycle}.dot"] = render(lifecycle, "dot")
        files[f"{lifecycle}-table.md"] = render(lifecycle, "table")
    return files


def embed(text: str, files: dict[str, str]) -> str:
    """Replace every generated block in a Markdown text with the current content."""

    def block(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in files:
            raise SystemExit(f"unknown generated block {name!r}")
        fence = FENCES[name.rsplit(".", 1)[1]]
        body = files[name] if name.endswith(".md") else f"```{fence}\n{files[name]}```\n"
        return f"<!-- BEGIN GENERATED {name} -->\n{body}<!-- END GENERATED {name} -->"

    pattern = r"<!-- BEGIN GENERATED (\S+) -->\n.*?<!-- END GENERATED \1 -->"
    return re.sub(pattern, block, text, flags=re.S)


def outdated() -> dict[Path, str]:
    """Every file whose content differs from what it should be -> that content."""
    files = generated()
    wanted = {DIAGRAMS / name: content for name, content in files.items()}
    for doc in sorted((ROOT / "docs").glob("*.md")):
        wanted[doc] = embed(doc.read_text(), files)
    return {
        path: content
        for path, content in wanted.items()
        if not path.exists() or path.read_text() != content
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if anything is out of date")
    args = parser.parse_args()
    stale = outdated()
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)} (run make diagrams)")
        return 1 if stale else 0
    DIAGRAMS.mkdir(parents=True, exist_ok=True)
    for path, content in stale.items():
        path.write_text(content)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
