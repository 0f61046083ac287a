"""The documentation works as written: every ```python snippet of README.md, checkpoints/README.md and docs/*.md runs
(from the repository root, in a fresh namespace), and every relative link names a file of the repository.

A snippet that needs something the repository cannot hold (an official checkpoint, a GPU) opts out with a visible
first line `# not run by tests/test_docs.py: <why>`.
"""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", REPO / "checkpoints" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SNIPPET = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
OPT_OUT = "# not run by tests/test_docs.py:"


def _snippets():
    for path in DOC_FILES:
        text = path.read_text()
        for match in SNIPPET.finditer(text):
            line = text.count("\n", 0, match.start()) + 2  # first line of the code
            name = f"{path.relative_to(REPO)}:{line}"
            yield pytest.param(name, match.group(1), id=name)


@pytest.mark.parametrize("name, code", list(_snippets()))
def test_python_snippet_runs(name, code, monkeypatch):
    if code.startswith(OPT_OUT):
        pytest.skip(code.splitlines()[0])
    assert OPT_OUT not in code, f"{name}: the opt-out marker must be the snippet's first line"
    monkeypatch.chdir(REPO)
    exec(compile(code, name, "exec"), {"__name__": "__doc_snippet__"})


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_name_files_of_the_repository(path):
    text = path.read_text()
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):  # a URL or an anchor of the same page
            continue
        file = (path.parent / target.split("#")[0]).resolve()
        assert file.is_relative_to(REPO) and file.exists(), f"{path.name} links {target}, not a file of the repository"
    absolute = re.findall(r"`(/[^`\s]+)`", text)
    assert not absolute, f"{path.name} names absolute paths of some machine: {absolute}"


def test_import_vision2d_gives_the_checkpoint_module():
    import vision2d

    assert callable(vision2d.checkpoint.create_model_from_weights)
