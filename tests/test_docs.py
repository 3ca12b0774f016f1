"""Every relative link and image in README.md, docs/*.md and benchmarks/RESULTS.md points at a file that exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)  # fenced code blocks: their brackets are code
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target "title")


def links(markdown: str) -> list[str]:
    """The targets of the Markdown links and images outside code.

    Returns:
        Each link's target, in order of appearance.
    """
    text = INLINE_CODE.sub("", FENCE.sub("", markdown))
    return LINK.findall(text)


def broken_links(page: Path) -> list[str]:
    """The relative targets in ``page`` (anchor stripped) that name no file or folder.

    Returns:
        The broken targets as written in the page.
    """
    broken = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # URL, mailto:, same-page anchor
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    return broken


def test_the_pages_exist() -> None:
    assert (ROOT / "docs").is_dir() and len(PAGES) > 3
    assert all(p.exists() for p in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_parser_finds_links_and_images_but_not_code() -> None:
    text = ("See [the docs](docs/a.md#part) and ![fig](../figures/x.png \"title\"), [web](https://x.org).\n"
            "Not `[code](nope.md)`, nor\n```bash\n[also code](nope2.md)\n```\n")
    assert links(text) == ["docs/a.md#part", "../figures/x.png", "https://x.org"]


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("x")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#anchor) [gone](missing.md) ![img](fig/none.png) [web](http://x) [here](#top)")
    assert broken_links(page) == ["missing.md", "fig/none.png"]
