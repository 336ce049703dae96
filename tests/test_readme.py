"""The README stays short and newcomer-first; README and docs/ links resolve."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_LINES = 250
MAX_COLUMNS, MAX_CELL = 6, 40  # the README's results table
MAX_DOCS_CELL = 120  # any table in docs/
SETUP = "bash scripts/setup.sh && .venv/bin/python "
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


def _cells(row: str) -> list[str]:
    row = row.strip()
    assert row.startswith("|") and row.endswith("|"), row
    return [c.strip() for c in re.split(r"(?<!\\)\|", row[1:-1])]


def _tables(text: str) -> list[list[str]]:
    """Markdown tables outside fenced code: each a list of its rows."""
    tables, current = [], []
    for line in FENCE.sub("", text).splitlines():
        if line.strip().startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (at most {MAX_LINES}): move details to docs/"


def test_first_block_is_the_two_commands():
    language, body = _fenced_blocks(README.read_text())[0]
    assert language == "bash", "README's first fenced block must be the bash block with the two commands"
    commands = [line.split("#")[0].strip() for line in body.splitlines() if line.strip()]
    assert commands == [SETUP + "examples/fashion_mnist.py", SETUP + "-m pytest"], commands
    # CI runs exactly the second command
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_results_table_is_readable():
    text = README.read_text()
    assert RESULTS_START in text and RESULTS_END in text, "README lacks its results block"
    block = text.split(RESULTS_START, 1)[1].split(RESULTS_END, 1)[0]
    tables = _tables(block)
    assert len(tables) == 1, "the README's results block holds exactly one table"
    rows = tables[0]
    assert len(rows) >= 3, "results table has no data rows"
    assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", rows[1].strip()), "second row must be the separator"
    width = len(_cells(rows[0]))
    assert width <= MAX_COLUMNS, f"results table has {width} columns (at most {MAX_COLUMNS})"
    for row in rows[:1] + rows[2:]:
        cells = _cells(row)
        assert len(cells) == width, row
        for cell in cells:
            assert len(cell) <= MAX_CELL, f"results table cell over {MAX_CELL} characters: {cell!r}"


def test_docs_tables_have_no_long_cells():
    for page in PAGES:
        for table in _tables(page.read_text()):
            for row in table:
                for cell in _cells(row):
                    assert len(cell) <= MAX_DOCS_CELL, (
                        f"{page.relative_to(ROOT)}: table cell over {MAX_DOCS_CELL} characters, "
                        f"write it as prose or bullets: {cell[:80]!r}...")


def test_relative_links_point_to_existing_files():
    broken = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text())
        text = re.sub(r"`[^`\n]*`", "", text)  # inline code
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # absolute URL or an anchor on the same page
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_the_pages_the_readme_promises_exist():
    text = README.read_text()
    for page in ("docs/architecture.md", "docs/benchmarks.md", "CHANGELOG.md"):
        assert f"]({page})" in text and (ROOT / page).exists(), page
