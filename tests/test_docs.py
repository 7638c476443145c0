"""The README and docs render: every table a Markdown parser sees is the table written, the README stays
short, every local link resolves, and every results file is linked from a page."""

import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RESULTS = [ROOT / "docs" / "results", ROOT / "docs" / "bench"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def local_links(page: Path) -> set[Path]:
    """Files a page links to or embeds by a relative path (anchors dropped)."""
    targets = (m.group(1).split("#")[0] for m in LINK.finditer(page.read_text()))
    return {(page.parent / t).resolve() for t in targets if t and "://" not in t}


def written_tables(text: str) -> list[int]:
    """The body rows of each table as written: runs of lines starting with '|' outside code blocks."""
    tables, run, fenced = [], 0, False
    for line in [*text.splitlines(), ""]:
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("|"):
            run += 1
        elif run:
            tables.append(run - 2)  # a header and its separator line
            run = 0
    return tables


def parsed_tables(text: str) -> list[int]:
    """The body rows of each table CommonMark + GFM tables parses."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables, rows = [], None
    for token in tokens:
        if token.type == "tbody_open":
            rows = 0
        elif token.type == "tr_open" and rows is not None:
            rows += 1
        elif token.type == "tbody_close":
            tables.append(rows)
            rows = None
    return tables


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_table_renders_whole(page):
    text = page.read_text()
    assert parsed_tables(text) == written_tables(text), f"{page.name}: a table is split or does not parse"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_local_link_resolves(page):
    missing = sorted(str(t.relative_to(ROOT)) for t in local_links(page) if not t.exists())
    assert not missing, f"{page.name} links to files that do not exist: {missing}"


def test_every_results_file_is_linked():
    """docs/results and docs/bench hold only what a page links (results.json from its report)."""
    linked = set().union(*(local_links(p) for p in PAGES))
    files = [f.resolve() for folder in RESULTS for f in folder.rglob("*") if f.is_file()]
    orphans = sorted(str(f.relative_to(ROOT)) for f in files if f not in linked)
    assert not orphans, f"results no page links: {orphans}"


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220


def test_a_split_table_is_caught():
    """Negative control: a blank line inside a table leaves its second half as plain text."""
    split = "| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n| 5 | 6 |\n"
    assert parsed_tables(split) != written_tables(split)


def test_a_link_to_a_missing_file_is_caught(tmp_path):
    """Negative control: a relative link counts (anchors dropped), web addresses and bare anchors do not."""
    page = tmp_path / "page.md"
    page.write_text("[a](gone.md#part) [b](https://example.com/x.md) [c](#top) ![d](plots/p.png)\n")
    assert local_links(page) == {(tmp_path / "gone.md").resolve(), (tmp_path / "plots" / "p.png").resolve()}
