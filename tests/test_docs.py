"""Documentation that repeats a text of the code must repeat it exactly."""

from __future__ import annotations

from pathlib import Path

from cnnlab.data.augment_help import AUGMENT_HELP

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_data_docs_show_the_augmentation_grammar_verbatim() -> None:
    # The grammar is described once (AUGMENT_HELP); docs/data.md shows that text, not its own.
    assert f"```text\n{AUGMENT_HELP}\n```" in (DOCS / "data.md").read_text(encoding="utf-8")


def test_readme_links_the_architecture_page() -> None:
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    assert "(docs/architecture.md)" in readme and (DOCS / "architecture.md").is_file()
