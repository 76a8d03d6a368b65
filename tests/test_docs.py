"""The docs cannot drift from the program: the README's links into docs/ resolve, and the
tutorial page's console blocks run and print what the page shows.

Convention of docs/tutorial.md's ```console blocks (stated on the page too):
- a line starting `$ ` is a command, run by bash in one temporary folder, block after block;
- the lines up to the next command are its expected output (stdout and stderr together);
- `…` in a line matches any text within the line; a line of `…` alone, any number of lines;
- timestamped progress lines (printed off a terminal) are dropped from the real output.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
NDINGEST = BIN / "ndingest"
PROGRESS = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S.*: \d+/\d+ (blocks|voxels) \(")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slugify(text: str) -> str:
    """Python-Markdown's toc slugify (mkdocs' default), applied to a heading's plain text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def outside_fences(text: str):
    fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            yield line


def anchors(page: Path) -> set[str]:
    """Every heading's id as mkdocs makes it (a repeated slug gets _1, _2, …)."""
    seen: set[str] = set()
    for line in outside_fences(page.read_text()):
        if m := re.match(r"#{1,6} (.+?)\s*#*\s*$", line):
            slug = base = slugify(m.group(1))
            n = 0
            while slug in seen or not slug:
                n += 1
                slug = f"{base}_{n}"
            seen.add(slug)
    return seen


def fenced_blocks(text: str, language: str) -> list[list[str]]:
    blocks, block = [], None
    for line in text.splitlines():
        if block is None:
            if line.strip() == f"```{language}":
                block = []
        elif line.startswith("```"):
            blocks.append(block)
            block = None
        else:
            block.append(line)
    return blocks


def steps(block: list[str]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for line in block:
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            assert out, f"output before any command: {line!r}"
            out[-1][1].append(line)
    return out


def matches(expected: list[str], actual: list[str]) -> bool:
    pattern = ""
    for line in expected:
        if line == "…":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += "[^\n]*".join(map(re.escape, line.split("…"))) + r"\n"
    return re.fullmatch(pattern, "".join(line + "\n" for line in actual)) is not None


def test_the_matcher_and_its_placeholders():
    assert matches(["a …/store b"], ["a /tmp/x/store b"])
    assert not matches(["a …/store b"], ["a /tmp/x/store c"])
    assert matches(["x", "…"], ["x", "1", "2"]) and matches(["x", "…"], ["x"])
    assert not matches(["x"], ["x", "y"])
    assert slugify("Before an ingest: `ndingest plan`") == "before-an-ingest-ndingest-plan"
    assert slugify("Speed: `benchmarks/ingest.py` (1 GiB)") == "speed-benchmarksingestpy-1-gib"


def test_readme_links_into_docs_resolve():
    readme = (REPO / "README.md").read_text()
    targets = [t for t in LINK.findall(readme) if t.startswith("docs/")]
    assert len(targets) >= 8, "the README links into every docs page"
    for target in targets:
        path, _, anchor = target.partition("#")
        assert (REPO / path).is_file(), f"README links to {target}: no such file"
        if anchor:
            assert anchor in anchors(REPO / path), f"README links to {target}: no heading with that anchor"
    linked = {t.partition("#")[0] for t in targets}
    missing = {f"docs/{p.name}" for p in DOCS.glob("*.md")} - linked
    assert not missing, f"docs pages the README does not link: {sorted(missing)}"


def test_readme_stays_short_and_keeps_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme


def test_readme_console_blocks_agree_with_the_tutorial():
    """The README's excerpts are the tutorial's commands and lines (which the test above runs)."""
    tutorial = (DOCS / "tutorial.md").read_text()
    lines = [line for block in fenced_blocks(tutorial, "console") + fenced_blocks(tutorial, "text")
             for line in block]
    def bare(command: str) -> str:
        return re.sub(r"\s+# .*$", "", command)

    commands = {bare(line[2:]) for line in lines if line.startswith("$ ")}
    for block in fenced_blocks((REPO / "README.md").read_text(), "console"):
        for command, expected in steps(block):
            assert bare(command) in commands, f"README: $ {command}: not on docs/tutorial.md"
            for line in expected:
                assert line == "…" or any(matches([shown], [line]) for shown in lines), \
                    f"README: {line!r}: not on docs/tutorial.md"


def test_exit_codes_agree_between_readme_and_docs():
    def table(text: str) -> list[str]:
        rows = [line for line in outside_fences(text) if re.match(r"\| \d+ \|", line)]
        assert rows, "no exit code table"
        return rows

    assert table((REPO / "README.md").read_text()) == table((DOCS / "ingest.md").read_text())


def test_tutorial_spec_is_the_shipped_config():
    (shown,) = fenced_blocks((DOCS / "tutorial.md").read_text(), "toml")[:1]
    shipped = [line for line in (REPO / "configs/kasthuri11_scale3.toml").read_text().splitlines()
               if not line.startswith("#")]
    assert shown == shipped


def test_tutorial_console_blocks_run_as_shown(tmp_path):
    assert NDINGEST.is_file(), f"{NDINGEST}: install the project into this venv (make venv)"
    (tmp_path / "configs").symlink_to(REPO / "configs")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    blocks = fenced_blocks((DOCS / "tutorial.md").read_text(), "console")
    ran = []
    for block in blocks:
        for command, expected in steps(block):
            proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=180)
            actual = [line for line in (proc.stdout + proc.stderr).splitlines() if not PROGRESS.match(line)]
            failed = any("error:" in line for line in expected)
            assert (proc.returncode != 0) == failed, f"$ {command}\nexit {proc.returncode}\n{proc.stderr}"
            assert matches(expected, actual), ("$ " + command + "\n--- the page shows:\n" + "\n".join(expected)
                                               + "\n--- it printed:\n" + "\n".join(actual))
            ran += re.findall(r"ndingest (\w+)", command)
    first_seen = list(dict.fromkeys(ran))
    assert first_seen == ["sample", "inspect", "plan", "ingest", "status", "verify", "slice"]


def test_mkdocs_build_is_strict_clean(tmp_path):
    mkdocs = BIN / "mkdocs"
    if not mkdocs.is_file():
        pytest.skip("mkdocs is not installed (the test extra has it)")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the anchors the README test computes are the ids mkdocs gives the headings
    for page in DOCS.glob("*.md"):
        html = tmp_path / "site" / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        ids = set(re.findall(r'<h[1-6] id="([^"]+)"', html.read_text()))
        assert ids == anchors(page), page.name
