"""The documentation holds together: README.md and docs/*.md link to files and headings that exist, the code
cites docs pages, sections and module paths that exist, the README stays short, and "METHOD.md" (a page that
is not part of the project) is cited nowhere. Pure text checks: no network, no imports of the package.

Each test fails with one message listing every broken reference it found, as ``file:line: reference (why)``.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 300
CODE_DIRS = ("landscape_mpi", "plotting", "tests", "benchmarks", "jobs", "scripts")
CODE_SUFFIXES = {".py", ".sh", ".sbatch", ".cfg", ".toml", ".yml", ".yaml", ".txt", ""}

# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional "title" is ignored)
MD_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
MD_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_HREF = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
# docs/<page>.md or docs/<page>.md#anchor, as cited in code (not part of a longer path)
DOCS_CITE = re.compile(r"(?<![\w./-])docs/([\w.-]+\.md)(#[\w-]+)?")
# landscape_mpi/.../x.py and plotting/.../x.py, not part of a longer path
MODULE_PATH = re.compile(r"(?<![\w./-])((?:landscape_mpi|plotting)/(?:[\w-]+/)*[\w-]+\.py)\b")
# in the documentation also the scripts around the package
DOC_FILE_PATH = re.compile(
    r"(?<![\w./-])((?:landscape_mpi|plotting|benchmarks|jobs|scripts)/(?:[\w-]+/)*[\w.-]+\.(?:py|sh|sbatch))\b")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def code_files() -> list[Path]:
    """Source, job and script files of the repository (git's view when available, else a walk)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *CODE_DIRS],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
        files = [ROOT / p for p in out if p]
    except (OSError, subprocess.CalledProcessError):
        files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*")]
    return sorted(p for p in files if p.is_file() and p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def prose(text: str) -> str:
    """Markdown with fenced code blocks and inline code blanked out (same length, so offsets and lines stay)."""
    out, fenced = [], None
    for line in text.splitlines(keepends=True):
        m = FENCE.match(line)
        if fenced is not None:
            out.append("\n" if line.endswith("\n") else "")
            if m and m.group(1) == fenced:
                fenced = None
            continue
        if m:
            fenced = m.group(1)
            out.append("\n" if line.endswith("\n") else "")
            continue
        out.append(line)
    plain = "".join(out)
    return re.sub(r"(`+)(.+?)\1", lambda m: " " * len(m.group(0)), plain)


def slugify(heading: str) -> str:
    """GitHub's anchor of a heading: markup and punctuation dropped, lower case, spaces -> hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a markdown file (duplicates get -1, -2 ... as on GitHub) and explicit ids."""
    seen: dict[str, int] = {}
    found = set()
    fenced = None
    for line in read(path).splitlines():
        m = FENCE.match(line)
        if fenced is not None:
            if m and m.group(1) == fenced:
                fenced = None
            continue
        if m:
            fenced = m.group(1)
            continue
        h = re.match(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not h:
            continue
        slug = slugify(h.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    text = read(path)
    found.update(re.findall(r"""<a\s[^>]*(?:name|id)\s*=\s*["']([^"']+)["']""", text, re.I))
    return frozenset(found)


def check_target(source: Path, target: str) -> str | None:
    """None if `target` (relative to `source`) resolves, else why not."""
    target = target.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
        return None  # http:, https:, mailto: ...: not checked (no network)
    path_part, _, anchor = target.partition("#")
    path_part = path_part.split("?", 1)[0]
    dest = source if not path_part else (source.parent / path_part).resolve()
    if path_part and not dest.exists():
        return f"no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if anchor:
        if dest.is_dir() or dest.suffix.lower() != ".md":
            return None
        if anchor.lower() not in anchors(dest):
            return f"no heading #{anchor} in {rel(dest)}"
    return None


def relative_links(path: Path) -> list[tuple[int, str]]:
    text = prose(read(path))
    out = []
    for pattern in (MD_LINK, MD_REF_DEF, HTML_HREF):
        for m in pattern.finditer(text):
            out.append((line_of(text, m.start(1)), m.group(1)))
    return sorted(set(out))


def fail_listing(title: str, broken: list[str]) -> None:
    if broken:
        raise AssertionError(f"{title} ({len(broken)}):\n  " + "\n  ".join(broken))


# ------------------------------------------------------------------------------------------------ tests
def test_the_docs_pages_exist():
    fail_listing("documentation pages missing",
                 [p for p in ("docs/method.md", "docs/install.md", "docs/file-format.md", "docs/mpi.md",
                              "docs/slurm.md", "docs/analyses.md", "docs/hessian.md", "docs/performance.md",
                              "docs/testing.md", "docs/reproducing.md", "docs/findings.md")
                  if not (ROOT / p).is_file()])


def test_relative_links_in_readme_and_docs_resolve():
    broken = []
    for path in doc_files():
        for line, target in relative_links(path):
            why = check_target(path, target)
            if why:
                broken.append(f"{rel(path)}:{line}: ({target}) -> {why}")
    fail_listing("broken links in README.md and docs/", broken)


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in relative_links(README)}
    missing = [rel(p) for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    fail_listing("docs pages the README does not link", missing)


def test_docs_pages_and_sections_cited_in_code_exist():
    broken = []
    for path in code_files():
        text = read(path)
        for m in DOCS_CITE.finditer(text):
            page = ROOT / "docs" / m.group(1)
            anchor = (m.group(2) or "")[1:]
            where = f"{rel(path)}:{line_of(text, m.start())}: docs/{m.group(1)}{m.group(2) or ''}"
            if not page.is_file():
                broken.append(f"{where} -> no file docs/{m.group(1)}")
            elif anchor and page.suffix == ".md" and anchor.lower() not in anchors(page):
                broken.append(f"{where} -> no heading #{anchor} in docs/{m.group(1)}")
    fail_listing("docs references in code that do not resolve", broken)


def test_module_paths_cited_in_docs_exist():
    broken = []
    for path in doc_files():
        text = read(path)
        for m in DOC_FILE_PATH.finditer(text):
            if not (ROOT / m.group(1)).exists():
                broken.append(f"{rel(path)}:{line_of(text, m.start())}: {m.group(1)} -> no such file")
    fail_listing("file paths cited in README.md and docs/ that do not exist", broken)


def test_module_paths_cited_in_code_exist():
    broken = []
    for path in code_files():
        text = read(path)
        for m in MODULE_PATH.finditer(text):
            if not (ROOT / m.group(1)).exists():
                broken.append(f"{rel(path)}:{line_of(text, m.start())}: {m.group(1)} -> no such file")
    fail_listing("module paths cited in code that do not exist", broken)


def test_readme_is_short():
    n = len(read(README).splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; at most {README_MAX_LINES} (move detail to docs/)"


def test_method_md_is_cited_only_as_a_link_to_docs_method():
    """ "METHOD.md" is not part of the project: it may appear only as the text of a link to docs/method.md."""
    allowed = re.compile(r"\[[^\]]*METHOD\.md[^\]]*\]\((?:\.\./|\./)?(?:docs/)?method\.md(?:#[\w-]+)?\)")
    this = Path(__file__).resolve()
    broken = []
    for path in [*doc_files(), *code_files(), *(ROOT / p for p in ("setup.cfg", "pyproject.toml",
                                                                     "environment.yml") if (ROOT / p).is_file())]:
        if path.resolve() == this:
            continue
        text = read(path)
        spans = [m.span() for m in allowed.finditer(text)] if path.suffix == ".md" else []
        for m in re.finditer(r"METHOD\.md", text):
            if not any(a <= m.start() < b for a, b in spans):
                broken.append(f"{rel(path)}:{line_of(text, m.start())}: METHOD.md (cite docs/method.md instead)")
    fail_listing('"METHOD.md" cited outside a link to docs/method.md', broken)


def test_slugify_matches_github():
    assert slugify("The paper's claims") == "the-papers-claims"
    assert slugify("PCA of a trajectory") == "pca-of-a-trajectory"
    assert slugify("Writing the file: `--io single | collective`") == "writing-the-file---io-single--collective"
    assert slugify("Gallery (the demo's file)") == "gallery-the-demos-file"
