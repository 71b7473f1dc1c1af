"""The repository's references to its documentation stay true.

No file may point at the spec documents that used to live outside the repository (the upper-case paper and
design notes, or the shared folder beside the checkout): the project's own docs/ replace them. Every
`docs/NAME.md` reference must name a file that exists, and when it names a section ("docs/paper.md section 6")
or a table ("docs/paper.md Table 5"), the file must have that numbered heading or that table. Relative
Markdown links to .md files must resolve too.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Git's own folder, and the environment, build outputs and caches that .gitignore keeps out of the repository.
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "runs", "build", ".whl"}
MAX_BYTES = 2_000_000  # weights and data files are not documentation; reading them would only cost time

# Written so that this file does not match its own patterns.
EXTERNAL = re.compile(r"\b(?:PAPER|DESIGN)\.md\b|\.\./shared\b|/work/shared\b")
DOC_REF = re.compile(r"\bdocs/([\w.-]+\.md)\b")
NUMBERS = r"(\d+(?:\s*(?:,|and|-|–)\s*\d+)*)"
SECTION_AFTER = re.compile(r"[\s,(]*(?:sections?|s\.|§)\s*" + NUMBERS, re.IGNORECASE)
TABLE_AFTER = re.compile(r"[\s,(]*Tables?\s+" + NUMBERS)
MD_LINK = re.compile(r"\]\(([^)\s#]+\.md)(?:#[^)]*)?\)")


def repository_files(root: Path):
    """(path, text) of every UTF-8 text file under root, outside SKIP_DIRS and egg-info folders."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder) / name
            try:
                if path.stat().st_size > MAX_BYTES:
                    continue
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary (a PNG, a .pyc) or a dangling link: not a place for a reference
            yield path, text


def numbered_headings(text: str) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(\d+)\b", text, re.MULTILINE)}


def numbers(spec: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", spec)]


def problems_in(path: Path, text: str, root: Path) -> list[str]:
    """Every broken or outdated documentation reference in one file, as 'file:line: what is wrong'."""
    out = []
    where = lambda pos: f"{path.relative_to(root)}:{text.count(chr(10), 0, pos) + 1}"  # noqa: E731
    for m in EXTERNAL.finditer(text):
        out.append(f"{where(m.start())}: refers to {m.group(0)!r}, outside the repository; point to docs/ instead")
    for m in DOC_REF.finditer(text):
        target = root / "docs" / m.group(1)
        if not target.is_file():
            out.append(f"{where(m.start())}: docs/{m.group(1)} does not exist")
            continue
        doc = target.read_text(encoding="utf-8")
        after = text[m.end():m.end() + 80]
        if sec := SECTION_AFTER.match(after):
            missing = [n for n in numbers(sec.group(1)) if n not in numbered_headings(doc)]
            if missing:
                out.append(f"{where(m.start())}: docs/{m.group(1)} has no section {missing} (headings '## N ...')")
        if tab := TABLE_AFTER.match(after):
            missing = [n for n in numbers(tab.group(1)) if not re.search(rf"\bTables? (?:\d+\D{{1,7}})?{n}\b", doc)]
            if missing:
                out.append(f"{where(m.start())}: docs/{m.group(1)} has no Table {missing}")
    if path.suffix == ".md":
        for m in MD_LINK.finditer(text):
            if "://" not in m.group(1) and not (path.parent / m.group(1)).is_file():
                out.append(f"{where(m.start())}: link to {m.group(1)}, which does not exist")
    return out


def test_no_file_refers_outside_and_every_docs_reference_resolves():
    # This file is left out: its examples below are broken references on purpose.
    problems = [p for path, text in repository_files(ROOT) if path != Path(__file__).resolve()
                for p in problems_in(path, text, ROOT)]
    assert not problems, "\n".join(problems)


def test_the_docs_exist_with_the_numbered_sections_others_cite():
    assert numbered_headings((ROOT / "docs" / "paper.md").read_text()) >= set(range(1, 8))
    assert numbered_headings((ROOT / "docs" / "design.md").read_text()) >= set(range(1, 8))


# The outdated names, spelled so that a grep for them finds no file of the repository, this one included.
OLD_PAPER, OLD_DESIGN, OLD_SHARED = "PAPER" + ".md", "DESIGN" + ".md", ".." + "/shared"


@pytest.fixture()
def fake_repo(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "paper.md").write_text("# t\n## 1 One\n## 6 Six\nTable 5 and Tables 8 and 9 are here.\n")
    return tmp_path


@pytest.mark.parametrize("text,expected", [
    ("see docs/paper.md section 6", []),
    ("see docs/paper.md, section 1", []),
    ("(docs/paper.md sections 1 and 6)", []),
    ("docs/paper.md Table 5", []),
    ("docs/paper.md Table 9", []),
    ("docs/paper.md", []),
    ("docs/paper.md section 4", ["has no section [4]"]),
    ("docs/paper.md sections 1 and 2", ["has no section [2]"]),
    ("docs/paper.md Table 7", ["has no Table [7]"]),
    ("docs/design.md", ["docs/design.md does not exist"]),
    ("docs/design.md section 3", ["docs/design.md does not exist"]),
    (f"as {OLD_PAPER} section 6 says", [f"refers to {OLD_PAPER!r}"]),
    (f"# {OLD_DESIGN}", [f"refers to {OLD_DESIGN!r}"]),
    (f"cat {OLD_SHARED}" + "/notes.txt", [f"refers to {OLD_SHARED!r}"]),
    ("docs/paper.mdx and paper.md alone", []),
])
def test_problems_in_finds_each_kind(fake_repo, text, expected):
    found = problems_in(fake_repo / "x.py", "line one\n" + text + "\n", fake_repo)
    assert len(found) == len(expected), found
    for message, want in zip(found, expected):
        assert message.startswith("x.py:2: ") and want in message, message


def test_markdown_links_must_resolve(fake_repo):
    doc = fake_repo / "docs" / "design.md"
    text = "[the paper](paper.md#6-six) and [gone](missing.md) and [web](https://example.org/x.md)\n"
    found = problems_in(doc, text, fake_repo)
    assert found == ["docs/design.md:1: link to missing.md, which does not exist"]


def test_repository_files_skips_binary_and_ignored_folders(tmp_path):
    (tmp_path / "a.md").write_text("text")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    for skipped in (".venv", ".git", "runs", "__pycache__", "bot.egg-info"):
        (tmp_path / skipped).mkdir()
        (tmp_path / skipped / "c.md").write_text(OLD_PAPER)
    assert [p.name for p, _ in repository_files(tmp_path)] == ["a.md"]
