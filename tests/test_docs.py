"""The documentation holds together: every relative link resolves (file and #anchor), the README stays
short, and its set-up / test commands are the ones CI runs (.ci/run). No model is trained."""
import glob
import os
import re

import pytest

from conftest import REPO

DOCS = ["README.md", "CONTRIBUTING.md", os.path.join("benchmarks", "results", "README.md")] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _text(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def links(markdown):
    """Targets of the inline links and images outside code blocks and code spans."""
    prose = _INLINE_CODE.sub("", _FENCE.sub("", markdown))
    return _LINK.findall(prose)


def anchors(markdown):
    """GitHub's heading anchors: lower case, punctuation dropped (but - and _), spaces to -, repeats -1, -2..."""
    seen, out = {}, set()
    for line in _FENCE.sub("", markdown).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_link_parsing_and_anchors():
    md = "# Set up (Python >= 3.10)\n## A `code` heading: x\n```\n[no](in-code.md)\n```\nsee [a](b.md#c) and `[x](y)`, ![p](q.png)\n"
    assert links(md) == ["b.md#c", "q.png"]
    assert anchors(md) == {"set-up-python--310", "a-code-heading-x"}


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    text = _text(doc)
    broken = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), path)) if path else os.path.join(REPO, doc)
        if not os.path.exists(full):
            broken.append(f"{target}: no such file")
        elif anchor and full.endswith(".md") and anchor not in anchors(_text(os.path.relpath(full, REPO))):
            broken.append(f"{target}: no heading for #{anchor}")
    assert not broken, f"{doc}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme = set(links(_text("README.md")))
    assert [d for d in DOCS if d.startswith("docs" + os.sep) and d.replace(os.sep, "/") not in readme] == []


def test_every_report_is_in_the_results_index():
    index = set(links(_text(os.path.join("benchmarks", "results", "README.md"))))
    results = os.path.join(REPO, "benchmarks", "results")
    reports = [os.path.relpath(p, results).replace(os.sep, "/")
               for p in glob.glob(os.path.join(results, "**", "*.md"), recursive=True)]
    reports = [r for r in reports if r != "README.md" and "work" not in r.split("/")]  # work/: git-ignored
    assert reports and sorted(r for r in reports if r not in index) == []


def test_readme_is_short():
    assert len(_text("README.md").splitlines()) <= 250


def test_readme_set_up_and_test_commands_are_what_ci_runs():
    ci = _text(os.path.join(".ci", "run"))
    readme = _text("README.md")
    for command in ('pip install torch==2.13.0 && pip install -e ".[test]"', "python -m pytest -q"):
        assert command in readme and command in ci.splitlines(), command
    assert "python3 -m venv .venv && . .venv/bin/activate" in readme
