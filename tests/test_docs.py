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


# ---- the README and the docs pages (issue 20) --------------------------------------------------------------------
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 15_000
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _load(name: str, path: Path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_options = _load("render_options", DOCS / "render_options.py")


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links and code as their text) lower-cased, every character that is
    not a letter, digit, underscore, hyphen or space dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text (outside code blocks); repeats get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", FENCE.sub("", text), re.MULTILINE):
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def link_problems(path: Path, text: str) -> list[str]:
    """Relative links (and #anchors) of one Markdown file that do not resolve, as 'file: link: why'."""
    out = []
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    for m in LINK.finditer(prose):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):   # https:, mailto:: not ours to check
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            out.append(f"{path.name}: {target}: {file_part} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            out.append(f"{path.name}: {target}: {dest.name} has no heading with anchor #{anchor}")
    return out


def test_the_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; the reference belongs in docs/ (at most {README_MAX_BYTES})"


def test_every_link_and_anchor_of_the_readme_and_the_docs_resolves():
    problems = [p for path in [README, *pages(), ROOT / "benchmarks" / "README.md"]
                for p in link_problems(path, path.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / m.group(1).partition("#")[0]).resolve() for m in LINK.finditer(README.read_text())}
    missing = [p.name for p in pages() if p.resolve() not in linked]
    assert not missing, f"README.md links no docs/{missing}"


@pytest.mark.parametrize("heading,slug", [
    ("Image files (every stage)", "image-files-every-stage"),
    ("Input pipeline: `--loader torch` (default) or `--loader dali`", "input-pipeline---loader-torch-default-or---loader-dali"),
    ("3 Run directory", "3-run-directory"),
    ("Training curves: `bot plot` and TensorBoard", "training-curves-bot-plot-and-tensorboard"),
    ("Start-up at full size (`startup.py`)", "start-up-at-full-size-startuppy"),
    ("What [the paper](paper.md) says", "what-the-paper-says"),
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_link_problems_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n## Same\n## Same\n```\n# not a heading\n```\n")
    text = ("[ok](a.md#same-1) [ok](a.md) [web](https://x.org/y#z) [self](#here) `[code](gone.md)`\n"
            "## Here\n[bad](a.md#not-a-heading) [gone](gone.md) [dup](a.md#same-2)\n")
    doc = tmp_path / "b.md"
    doc.write_text(text)
    assert link_problems(doc, text) == ["b.md: a.md#not-a-heading: a.md has no heading with anchor #not-a-heading",
                                        "b.md: gone.md: gone.md does not exist",
                                        "b.md: a.md#same-2: a.md has no heading with anchor #same-2"]


def bot_commands():
    from bot.cli import main
    return dict(main.commands)


def test_every_command_has_a_page_with_its_options_table():
    assert render_options.problems(bot_commands()) == []
    assert set(render_options.COMMAND_PAGES) == set(bot_commands())


def test_the_option_tables_are_what_render_options_writes():
    # A CLI change without `python docs/render_options.py` fails here.
    commands = bot_commands()
    stale = [page for page in sorted(set(render_options.COMMAND_PAGES.values()))
             if render_options.render_page((DOCS / page).read_text(), commands, page) != (DOCS / page).read_text()]
    assert not stale, f"run `python docs/render_options.py`: the option tables of docs/{stale} are not current"


def test_every_flag_of_every_command_is_documented_in_its_page_beyond_its_table():
    import click
    missing = []
    for name, command in bot_commands().items():
        page = render_options.COMMAND_PAGES[name]
        prose = re.sub(r"<!-- options of bot [\w-]+: .*?<!-- end of options -->", "", (DOCS / page).read_text(), flags=re.S)
        for param in command.params:
            if isinstance(param, click.Option):
                missing += [f"docs/{page}: bot {name} {flag}" for flag in [*param.opts, *param.secondary_opts]
                            if not re.search(re.escape(flag) + r"(?![\w-])", prose)]
    assert not missing, "\n".join(missing)


def test_every_option_says_its_default():
    import click
    silent = []
    for name, command in bot_commands().items():
        for param in command.params:
            if not isinstance(param, click.Option) or param.required:
                continue
            plain_flag = param.is_flag and not param.secondary_opts   # off unless given
            shown = param.show_default and param.default is not None
            said = any(word in (param.help or "").lower() for word in ("default", "required"))
            if not (plain_flag or shown or said):
                silent.append(f"bot {name} {param.opts[0]}")
    assert not silent, "help text without its default: " + ", ".join(silent)


def readme_command_lines(text: str) -> tuple[list[str], list[str]]:
    """The `bot ...` command lines of the README's code blocks, and its inline code that starts with `bot `
    (a mention such as `bot inspect FILE`: its command and flags must exist, its arguments may be left out)."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.split("\n")[1:-1]:
            line = line.strip().removeprefix("$ ")
            if line.startswith("bot "):
                lines.append(line)
    mentions = [m.group(0).strip("`") for m in INLINE_CODE.finditer(FENCE.sub("", text)) if m.group(0).startswith("`bot ")]
    return lines, mentions


def parse_command_line(line: str, mention: bool = False) -> str | None:
    """None when `line` is a bot command with options click accepts, else why not (no command is run). A mention
    is only checked for its command and the names of its flags."""
    import shlex

    import click
    argv = shlex.split(line, comments=True)[1:]
    commands = bot_commands()
    if not argv or argv[0] not in commands:
        return f"{line}: no command {argv[:1]}"
    if mention:
        known = {o for p in commands[argv[0]].params for o in [*p.opts, *getattr(p, "secondary_opts", [])]}
        unknown = [a for a in argv[1:] if a.startswith("--") and a.split("=")[0] not in known | {"--help"}]
        return f"{line}: no option {unknown}" if unknown else None
    try:
        commands[argv[0]].make_context(argv[0], argv[1:])
    except click.exceptions.Exit:
        pass                                         # --help, --version
    except click.ClickException as e:
        return f"{line}: {e.format_message()}"
    return None


def test_every_bot_command_the_readme_shows_exists_with_those_options():
    lines, mentions = readme_command_lines(README.read_text())
    assert len(lines) >= 7 and mentions              # the five-command flow, the checkpoint's two lines, ...
    problems = [p for line in lines if (p := parse_command_line(line))]
    problems += [p for line in mentions if (p := parse_command_line(line, mention=True))]
    assert not problems, "\n".join(problems)


def test_every_bot_command_the_reference_pages_show_exists_with_those_options():
    # design.md draws the flow with `bot ... -> files`, paper.md quotes no command lines: the other pages are usage
    problems = []
    for page in pages():
        if page.name in ("design.md", "paper.md"):
            continue
        lines, mentions = readme_command_lines(page.read_text())
        problems += [f"docs/{page.name}: {p}" for line in lines if (p := parse_command_line(line))]
        problems += [f"docs/{page.name}: {p}" for line in mentions if (p := parse_command_line(line, mention=True))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line,why", [
    ("bot compare runs/ --baseline x --plot c.png   # a comment", None),
    ("bot finetune-detect --backbone r --epochs 3", None),
    ("bot pretrain --help", None),
    ("bot pretrian --data x", "no command ['pretrian']"),
    ("bot pretrain --dta x", "No such option '--dta'"),
    ("bot compare --bootstrap -1", "-1 is not in the range"),
    ("bot inspect", "Missing argument 'SOURCE'"),
])
def test_parse_command_line(line, why):
    found = parse_command_line(line)
    assert (found is None) if why is None else (why in found), found


@pytest.mark.parametrize("line,why", [
    ("bot inspect", None),
    ("bot finetune-seg\n--backbone", None),
    ("bot compare --paper", None),
    ("bot compare --papers", "no option ['--papers']"),
    ("bot comapre", "no command ['comapre']"),
])
def test_parse_a_mention(line, why):
    found = parse_command_line(line, mention=True)
    assert (found is None) if why is None else (why in found), found


def test_the_performance_table_is_rendered_from_the_committed_results():
    sys_path = str(ROOT / "benchmarks")
    import sys
    sys.path.insert(0, sys_path)
    try:
        results = _load("results", ROOT / "benchmarks" / "results.py")
    finally:
        sys.path.remove(sys_path)
    assert results.PERFORMANCE_PAGE == DOCS / "performance.md"
    assert results.table_in(results.PERFORMANCE_PAGE) == results.render([str(f) for f in results.COMMITTED_RESULTS]), \
        "run `python benchmarks/results.py`: docs/performance.md's table is not the committed results"
