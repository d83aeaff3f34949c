"""The design lives in the repository (``docs/``).

* No tracked source, documentation or config file cites a design document that is not in the repository.
* Every ``docs/<page>.md`` the code mentions exists, and a ``docs/<page>.md §<section>`` pointer (also the
  ``(<page>.md) §<section>`` links between the pages) names a heading of that page.
* ``docs/README.md`` indexes every page.

Files come from ``git ls-files`` (tracked plus untracked-but-not-ignored); without git, from a walk of the
repository folders.
"""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SUFFIXES = (".py", ".md", ".toml")
EXCLUDED = ("tests/fixtures/", "experiments/results/")
_WALK_ROOTS = ("scan_kernels", "ssm", "layers", "experiments", "checkpoints", "tests", "docs", ".ci")

# Citations of documents outside the repository, spelled in pieces so that neither this test nor a plain
# `git grep` for those names matches this file.
_FORBIDDEN = [
    "DESIG" + r"N\.md",
    "DESIG" + r"N §",
    "STYL" + r"E\.md",
    "anchor" + r"s_(ssm|linear)",
    "anchor" + r"s §",
    "jax_" + r"stack",
    r"\.\./" + "shared",
    "share" + r"d/reference",
]
FORBIDDEN = re.compile("|".join(f"(?:{p})" for p in _FORBIDDEN))

DOC_POINTER = re.compile(r"docs/([A-Za-z0-9_\-]+)\.md(?:\s*§([^\n]*))?")
DOC_LINK = re.compile(r"\]\(([A-Za-z0-9_\-]+)\.md\)\s*§([^\n]*)")  # [page.md](page.md) §Section, inside docs/


def _git_files():
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n for n in out.decode().split("\0") if n]
    return names or None


def _walked_files():
    names = [p.name for p in ROOT.iterdir() if p.is_file()]
    for top in _WALK_ROOTS:
        for p in (ROOT / top).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts:
                names.append(p.relative_to(ROOT).as_posix())
    return names


def repo_files():
    """Repository-relative paths of the .py/.md/.toml files to check (fixtures and results JSON excluded)."""
    names = _git_files() or _walked_files()
    files = [n for n in names if n.endswith(SUFFIXES) and not n.startswith(EXCLUDED) and (ROOT / n).is_file()]
    assert files, f"found no files to check under {ROOT}"
    return sorted(files)


def headings(page: str) -> list:
    """The section names of ``docs/<page>.md``: its Markdown headings without the leading #'s."""
    text = (DOCS / f"{page}.md").read_text(encoding="utf-8")
    return [m.group(1).strip() for m in re.finditer(r"^#+\s+(.+)$", text, flags=re.MULTILINE)]


def _lines(name):
    return (ROOT / name).read_text(encoding="utf-8", errors="replace").splitlines()


def _check_section(page, section, where, problems):
    if not (DOCS / f"{page}.md").is_file():
        problems.append(f"{where}: docs/{page}.md does not exist")
        return
    if section is None or not section.strip():
        return
    section = section.strip()
    if not any(section.startswith(h) for h in headings(page)):
        problems.append(f"{where}: docs/{page}.md has no section matching '§{section}' (sections: {headings(page)})")


def test_nothing_cites_documents_outside_the_repository():
    hits = []
    for name in repo_files():
        for i, line in enumerate(_lines(name), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{name}:{i}: {line.strip()}")
    assert not hits, (
        "these lines cite design notes outside the repository; point to docs/<page>.md §<section> "
        "or to the paper instead:\n" + "\n".join(hits)
    )


def test_docs_pointers_name_existing_pages_and_sections():
    problems, seen = [], 0
    for name in repo_files():
        for i, line in enumerate(_lines(name), 1):
            where = f"{name}:{i}"
            for m in DOC_POINTER.finditer(line):
                seen += 1
                _check_section(m.group(1), m.group(2), where, problems)
            if name.startswith("docs/"):
                for m in DOC_LINK.finditer(line):
                    seen += 1
                    _check_section(m.group(1), m.group(2), where, problems)
    assert seen > 20, f"expected the code to point into docs/ (found {seen} pointers)"
    assert not problems, "broken pointers into docs/:\n" + "\n".join(problems)


def test_docs_index_lists_every_page():
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    assert pages, "docs/ has no pages"
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    missing = [p for p in pages if f"({p})" not in index]
    assert not missing, f"docs/README.md does not link {missing}"


def test_checker_sees_violations():
    """The patterns above catch what they must and leave ordinary text alone (guards against a vacuous test)."""
    bad = [
        "see DESIG" + "N.md §2",
        "(DESIG" + "N §5)",
        "anchor" + "s_ssm §4",
        "(anchor" + "s §2.6)",
        "jax_" + "stack §3",
        "../shar" + "ed/x.md",
        "share" + "d/reference/a.md",
        "STYL" + "E.md",
    ]
    good = ["docs/shapes.md", "design notes", "shared memory", "anchors in the text", "a shared encoder"]
    assert all(FORBIDDEN.search(s) for s in bad)
    assert not any(FORBIDDEN.search(s) for s in good)
    assert headings("ops")[:1] == ["Ops of `scan_kernels`"]
    problems = []
    _check_section("ops", "No such section", "x", problems)
    _check_section("no_such_page", None, "y", problems)
    _check_section("ops", "linear_scan", "z", problems)
    assert [p.split(":")[0] for p in problems] == ["x", "y"]
