"""The README and docs/ show what the code has: tables and synopses generated from it, kept equal here."""

from __future__ import annotations

import re
from pathlib import Path

from torchrest.cli import synopsis
from torchrest.config import OptimizeConfig, ServerConfig
from torchrest.errors import error_table
from torchrest.optimize.candidates import candidate_table

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_serving_doc_has_the_generated_error_table_and_synopsis() -> None:
    serving = (ROOT / "docs" / "serving.md").read_text()
    assert error_table() in serving
    assert synopsis("serve", ServerConfig) in serving


def test_readme_stays_the_front_door() -> None:
    """What it is, set-up, one summary table, pictures, links: details live in docs/."""
    assert len(README.encode()) <= 15 * 1024
    assert README.count("\n|---") + README.count("\n| ---") <= 1


def test_optimize_doc_has_the_generated_synopsis_and_candidate_table() -> None:
    optimize = (ROOT / "docs" / "optimize.md").read_text()
    assert synopsis("optimize", OptimizeConfig) in optimize
    assert candidate_table() in optimize


def test_every_relative_link_in_the_docs_leads_somewhere() -> None:
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "deploy" / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"
