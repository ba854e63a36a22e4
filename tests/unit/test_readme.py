"""README.md is the front page: at most 250 lines, and every link in it resolves (a file of the repository, and
for a link into a documentation page, a heading of that page)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def anchors(page: Path) -> set[str]:
    """The ids mkdocs' toc extension gives the page's headings (lower case, punctuation dropped, spaces -> -)."""
    out = set()
    for line in page.read_text().splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            out.add(re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", text)).strip("-"))
    return out


def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 250


def test_every_readme_link_resolves():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [x for x in links if not x.startswith(("http://", "https://", "mailto:"))]
    assert len(local) > 20, "the front page links into the documentation"
    broken = []
    for link in local:
        path, _, anchor = link.partition("#")
        target = REPO / path
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(link)
    assert not broken, f"README links that do not resolve: {broken}"
