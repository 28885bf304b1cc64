"""docs/migrating.md: a guide with code to run, whose links resolve, linked
from the README.

Its ```python blocks run in order as one program, and what they print is
compared with the ```text blocks after them, in ``test_doc_blocks.py`` with
every other page's (``doc_blocks.py`` says how).
"""

from __future__ import annotations

import re

from doc_blocks import FENCE, README, ROOT, RUN, page_blocks, page_programs

GUIDE = ROOT / "docs" / "migrating.md"
BLOCKS = page_blocks(GUIDE)


def test_the_guide_has_code_to_run() -> None:
    assert len(BLOCKS) >= 10
    assert all(block.kind == RUN for block in BLOCKS)
    # One program: each block may use what the earlier ones defined.
    assert [program.blocks for program in page_programs(BLOCKS)] == [tuple(BLOCKS)]
    assert sum(block.expected is not None for block in BLOCKS) >= 10


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    without_code = FENCE.sub("", markdown)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", without_code, re.MULTILINE)}


def test_the_guide_links_resolve() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]*)\)", FENCE.sub("", text))
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = (GUIDE.parent / path).resolve() if path else GUIDE
        assert target.exists(), f"docs/migrating.md links to a missing {path}"
        if anchor:
            assert anchor in anchors(target.read_text(encoding="utf-8")), (
                f"docs/migrating.md links to #{anchor}, which {target.name} has no heading for"
            )


def test_the_readme_links_the_guide() -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme.split("## Coming from python-cqrs", 1)[1].split("\n## ", 1)[0]
    documentation = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    assert "(docs/migrating.md)" in section
    assert "(docs/migrating.md)" in documentation
