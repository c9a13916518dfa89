"""The documentation's links: every relative link and image of README.md, config/README.md, docs/*.md and the
READMEs of benchmarks/results/ points at a file that exists, every #anchor at a heading of its target (GitHub's
slugs), and the README and the guides stay within their sizes. Fast: reads text only, runs nothing."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", ROOT / "config" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = [*GUIDES, *sorted((ROOT / "benchmarks" / "results").glob("**/README.md"))]

# Words the main engineer replaces before a release (the reference run's folder, machine, commit and time, the
# measured tables). A link that holds one cannot be checked yet: test_links_resolve skips it, and
# test_no_placeholder_is_left fails as long as any of them is left, so that it shows until they are filled.
PLACEHOLDERS = ("MACHINE", "COMMIT", "FOLDER", "DEFAULT_RUN_TIME", "COMMUNICATION_TABLE", "PERFORMANCE_RESULTS")
PLACEHOLDER = re.compile(r"\b(" + "|".join(PLACEHOLDERS) + r")\b")
# Files that a build step makes from a committed reference run and that the README shows (`make readme-figure`);
# until they exist, test_no_placeholder_is_left fails for them instead of test_links_resolve.
GENERATED = {ROOT / "docs" / "images" / "headline.png"}

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")


def prose_lines(path, keep_code_spans=False):
    """The lines of a Markdown file outside fenced and indented code blocks, inline code spans removed unless kept
    (a heading's `code` is part of its anchor)."""
    out, fenced, indented, blank = [], False, False, True
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        indented = line.startswith("    ") and (blank or indented)
        blank = not line.strip()
        if not indented:
            out.append(line if keep_code_spans else re.sub(r"`[^`]*`", "", line))
    return out


def slug(heading):
    """GitHub's anchor of a heading: its text without Markdown, lowercased, every character but letters, digits,
    spaces, hyphens and underscores dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[*`]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    """Every anchor of a file's headings, with GitHub's -1, -2 ... for repeated ones."""
    seen, out = {}, set()
    for line in prose_lines(path, keep_code_spans=True):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            out.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return out


def links(path):
    """(line number, target) of every link and image outside code."""
    return [(number, match.group(1)) for number, line in enumerate(prose_lines(path), 1)
            for match in LINK.finditer(line)]


def relative(target):
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto: ...


def test_links_resolve():
    problems, checked = [], 0
    for path in LINKED:
        name = path.relative_to(ROOT)
        for number, target in links(path):
            if not relative(target) or PLACEHOLDER.search(target):
                continue
            checked += 1
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if dest in GENERATED:
                continue
            if not dest.exists():
                problems.append(f"{name}:{number}: {target}: no such file {dest.relative_to(ROOT)}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{name}:{number}: {target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
            elif anchor and dest.is_dir():
                problems.append(f"{name}:{number}: {target}: an anchor on a folder")
    assert checked > 50, f"only {checked} links found: is the link pattern still right?"
    assert not problems, "\n".join(problems)


def test_no_placeholder_is_left():
    """Fails until the main engineer has filled every placeholder (and made every generated file the README shows)."""
    left = [f"{path.relative_to(ROOT)}:{number}: {match.group(1)}"
            for path in GUIDES for number, line in enumerate(path.read_text().splitlines(), 1)
            for match in PLACEHOLDER.finditer(line)]
    left += [f"{path.relative_to(ROOT)}: not made yet" for path in sorted(GENERATED) if not path.exists()]
    assert not left, "placeholders left:\n" + "\n".join(left)


def test_readme_and_guides_stay_short():
    readme = (ROOT / "README.md").stat().st_size
    guides = sum(path.stat().st_size for path in (ROOT / "docs").glob("*.md"))
    assert readme <= 6_000, f"README.md is {readme} bytes, more than 6,000"
    assert guides <= 55_000, f"docs/*.md are {guides} bytes together, more than 55,000"


@pytest.mark.parametrize("heading, anchor", [
    ("How often should the ranks talk: measured", "how-often-should-the-ranks-talk-measured"),
    ("Kernels chosen from the CPU's flags", "kernels-chosen-from-the-cpus-flags"),
    ("`summary.csv`", "summarycsv"),
    ("GFLOP/s", "gflops"),
    ("Local SGD and post-local SGD", "local-sgd-and-post-local-sgd"),
    ("The [audit](x.md) itself", "the-audit-itself"),
    ("snake_case_words", "snake_case_words"),
])
def test_slug_follows_githubs_rules(heading, anchor):
    assert slug(heading) == anchor


def test_a_broken_link_or_anchor_is_found(tmp_path):
    """The checks can fail: a missing file, a missing heading, and a link inside code that is not a link."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Title\n\n## A section\n\n## A section\n")
    page.write_text("[ok](other.md#a-section-1) [gone](missing.md) [bad](other.md#nowhere)\n\n"
                    "    [code](not-a-link.md)\n\n`[inline](not-a-link-either.md)`\n")
    found = [target for _, target in links(page)]
    assert found == ["other.md#a-section-1", "missing.md", "other.md#nowhere"]
    assert "a-section-1" in anchors(tmp_path / "other.md") and "nowhere" not in anchors(tmp_path / "other.md")


def test_the_headline_figure_was_drawn_from_the_committed_reference_run():
    """docs/images/headline.png embeds the SHA-256 of the tables it was drawn from (plots.save): they must be the
    files of the reference run that the README's caption names and `make readme-figure` reads (REFERENCE)."""
    import json

    from mpi_ensemble import audit, provenance

    caption = re.search(r"^\*Made by `make readme-figure`.*?\*$", (ROOT / "README.md").read_text(), re.M | re.S)
    folders = set(re.findall(r"benchmarks/results/([\w.-]+)/README\.md", caption.group(0) if caption else ""))
    made_from = re.search(r"^REFERENCE \?= benchmarks/results/(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert made_from and folders == {made_from.group(1)}, (folders, made_from)
    folder = ROOT / "benchmarks" / "results" / made_from.group(1)
    embedded = json.loads(audit.png_text(ROOT / "docs" / "images" / "headline.png")[provenance.INPUTS_KEY])
    assert embedded == {name: provenance.file_sha256(folder / name) for name in ("summary_stats.csv", "rank_times.csv")}
