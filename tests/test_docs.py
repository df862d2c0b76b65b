"""The documentation: a short README, links that resolve, and a site that builds with warnings as errors."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """A heading's anchor as MkDocs' toc extension makes it (and GitHub, for these plain headings)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8")))}


def broken_links(pages: list[Path]) -> list[str]:
    """Every relative link or image in ``pages`` whose file, or heading after '#', does not exist."""
    broken = []
    for page in pages:
        for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
            if SCHEME.match(target):
                continue  # a URL: not checked (no network in CI)
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where} (no heading #{anchor})")
    return broken


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_relative_link_resolves():
    assert len(PAGES) > 10
    assert broken_links(PAGES) == []


def test_the_link_check_catches_broken_links(tmp_path):
    """The checker is not vacuous: a missing file, a missing image and a missing heading are all flagged,
    while code, URLs and good links are not."""
    (tmp_path / "other.md").write_text("# Other page\n\n## Adding a backend or a precision\n")
    (tmp_path / "pic.png").write_bytes(b"")
    sample = tmp_path / "sample.md"
    sample.write_text(
        "# Sample\n\n"
        "[good](other.md) [good anchor](other.md#adding-a-backend-or-a-precision) ![ok](pic.png) [self](#sample)\n"
        "[url](https://example.org/x.md) `[code](nowhere.md)`\n\n"
        "```\n[fenced](nowhere.md)\n```\n\n"
        "[missing](nowhere.md) ![missing image](gone.png) [bad anchor](other.md#no-such-heading)\n"
    )
    found = broken_links([sample])
    assert len(found) == 3, found
    assert [f.split(": ", 1)[1].split(" ")[0] for f in found] == ["nowhere.md", "gone.png", "other.md#no-such-heading"]


def test_slugs_match_mkdocs():
    assert slug("Adding a backend or a precision") == "adding-a-backend-or-a-precision"
    assert slug("What `stsun serve` keeps running") == "what-stsun-serve-keeps-running"
    assert slug("The paper compared with the authors' code") == "the-paper-compared-with-the-authors-code"


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    # not -q: it silences the warnings that --strict turns into a failure
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=120)


needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                                  reason="mkdocs is not installed (pip install -c constraints.txt -e '.[docs]')")


@needs_mkdocs
def test_site_builds_strictly(tmp_path):
    res = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert res.returncode == 0, res.stdout + res.stderr
    built = {p.relative_to(tmp_path / "site").parts[0] for p in (tmp_path / "site").rglob("index.html")}
    assert {p.stem for p in (ROOT / "docs").glob("*.md") if p.stem != "index"} <= built


@needs_mkdocs
def test_site_build_fails_on_a_broken_link(tmp_path):
    """Warnings are errors: the same config over a copy of docs/ with one broken anchor does not build."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text(encoding="utf-8") + "\n[broken](11-architecture.md#no-such-heading)\n")
    res = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert res.returncode != 0 and "no-such-heading" in res.stdout + res.stderr
