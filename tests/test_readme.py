from __future__ import annotations

from pathlib import Path

from torchrest.errors import error_table


def test_readme_error_table_is_the_generated_one() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert error_table() in readme
