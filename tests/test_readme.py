"""The README's facts.

* Its Python API example, run verbatim as a plain script (``python example.py``): only the epoch
  count is changed (``train.epochs=6`` → ``train.epochs=1`` inside the snippet's own
  ``load_config`` call); the script runs in a temporary folder holding a copy of
  ``configs/demo.yaml``, as a user runs it from the repository root.
* Fast checks of the README and docs/ (below): commands and options, figures, links, commands.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from braintseg.demos.demo import HOLDOUT, sample_data_dir

REPO = Path(__file__).resolve().parents[1]
EPOCHS, SHORT = '"train.epochs=6"', '"train.epochs=1"'


def readme_snippet() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API\n"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no ```python block under '## Python API'"
    return match.group(1)


def test_snippet_holds_out_its_case_and_evaluates_only_it():
    code = readme_snippet()
    assert code.count(EPOCHS) == 1 and "if __name__" not in code
    assert "validation_fold(store, HOLDOUT)" in code and "cases=[HOLDOUT]" in code
    assert "cases / HOLDOUT" in code and "prepare(cfg, cases," in code
    compile(code, "README.md", "exec")


@pytest.mark.slow
def test_readme_snippet_runs_verbatim_as_a_script(tmp_path):
    code = readme_snippet()
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "demo.yaml", tmp_path / "configs" / "demo.yaml")
    (tmp_path / "example.py").write_text(code.replace(EPOCHS, SHORT))
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if "Dice" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{HOLDOUT} held-out Dice {{'wt': "), lines
    dice = re.findall(r"'(wt|tc|et)': (nan|[0-9.]+)", lines[0])
    assert [r for r, _ in dice] == ["wt", "tc", "et"]
    out = tmp_path / "braintseg-demo-api"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["case"] for r in rows] == [HOLDOUT] and rows[0]["status"] == "ok"
    run_json = json.loads((out / "run" / "run.json").read_text())
    assert run_json["val_cases"] == [HOLDOUT] and HOLDOUT not in run_json["train_cases"]
    assert len(run_json["train_cases"]) == 3
    assert sorted(p.name for p in (out / "predictions").glob("*.nii.gz")) == [f"{HOLDOUT}.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["braintseg-demo-api", "configs",
                                                          "example.py"]
    assert (sample_data_dir() / HOLDOUT).is_dir()  # the bundled data untouched


# --------------------------------------------------------------------------- README and docs facts
# Fast checks (no training): the commands and options the README shows exist in the CLI, every
# measured figure it quotes is also in docs/ (where its command, date and machine are), every
# relative link in README.md and docs/*.md resolves, and the test command is the one CI runs.

DOCS = REPO / "docs"
FENCE = re.compile(r"^[ \t]*```([^\n]*)\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PLACEHOLDER = re.compile(r"\{\{[A-Z_]+\}\}")
CALL = re.compile(r"(?<![\w./-])(?<!from )(?<!import )braintseg(?=[ \t])(.*)")
OPTION = re.compile(r"(?<![\w$/.=-])(--?[A-Za-z][\w-]*)")
# a number with a unit or a percentage: "4 min", "1,075 s", "7.4 %", "4.7×", "860 slices/s"
MEASURE = re.compile(
    r"(?<![\w.,])(\d[\d,]*(?:\.\d+)?)[ \u00a0]?"
    r"(%|×|ms|s|min|minutes?|seconds?|h|hours?|GPU-hours|[KMGT]i?B|mm|slices/s)(?![\w/])")
UNIT_ALIASES = {"minute": "min", "minutes": "min", "second": "s", "seconds": "s", "hour": "h",
                "hours": "h"}


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def code_blocks(text: str, shell_only: bool = False) -> list[str]:
    """The fenced code blocks' text; ``shell_only``: leave out ```python blocks."""
    return [body for lang, body in FENCE.findall(text)
            if not (shell_only and lang.strip() == "python")]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("\n", text)


def braintseg_calls(text: str) -> list[tuple[str, str]]:
    """``(command line after 'braintseg', where)`` for every call in code blocks and inline code.

    Continuation lines (a trailing backslash, or a usage line that goes on with ``[...]`` on the
    next line) are joined; comments and what follows ``&&``/``;`` are cut off.
    """
    calls: list[tuple[str, str]] = []
    for block in code_blocks(text, shell_only=True):
        block = re.sub(r"\\\n", " ", block)
        lines: list[str] = []
        for line in block.splitlines():
            goes_on = line[:1].isspace() and line.strip().startswith("[")
            if lines and goes_on and "braintseg" in lines[-1]:
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        for line in lines:
            for part in re.split(r"&&|;", re.split(r"\s#", line)[0]):
                calls += [(m.group(1), part.strip()) for m in CALL.finditer(part)]
    for span in INLINE.findall(prose(text)):
        calls += [(m.group(1), span) for m in CALL.finditer(span)]
    return calls


def click_options(command) -> set[str]:
    import click

    names = {"-h", "--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            names |= {*param.opts, *param.secondary_opts}
    return names


def test_readme_commands_and_options_exist_in_the_cli():
    from braintseg.cli import cli

    checked, problems = 0, []
    for rest, where in braintseg_calls((REPO / "README.md").read_text()):
        tokens = rest.split()
        globals_ = []
        while tokens and tokens[0].lstrip("[").startswith("-"):
            globals_.append(tokens.pop(0))
        for opt in OPTION.findall(" ".join(globals_)):
            opt = re.sub(r"^-([a-z])\1+$", r"-\1", opt)  # -vv is -v twice
            if opt not in click_options(cli):
                problems.append(f"{where!r}: no global option {opt}")
        if not tokens or not re.fullmatch(r"[a-z]+", tokens[0]):
            continue  # a placeholder such as COMMAND, or `braintseg -h`
        name = tokens[0]
        command = cli.commands.get(name)
        if command is None:
            problems.append(f"{where!r}: no command {name!r}")
            continue
        checked += 1
        options = click_options(command)
        problems += [f"{where!r}: {name} has no option {opt}"
                     for opt in OPTION.findall(" ".join(tokens[1:])) if opt not in options]
    assert not problems, "\n".join(problems)
    assert checked >= 20  # the parser still finds the README's calls


def test_the_cli_checker_catches_a_wrong_command_and_option():
    calls = braintseg_calls("```\nbraintseg predict -m RUN \\\n  --fold 0 --tta  # comment --nope\n"
                            "braintseg prepare -i X -o Y [--overwrite]\n"
                            "                  [--bogus]\n```\nSee `braintseg trian -i x`.\n"
                            "`python -c \"import braintseg; print(braintseg.sample_data_dir())\"`\n"
                            "```python\nfrom braintseg import prepare\nbraintseg -h\n```\n")
    assert [c.split()[0] for c, _ in calls] == ["predict", "prepare", "trian"]
    assert OPTION.findall(calls[0][0]) == ["-m", "--fold", "--tta"]
    assert OPTION.findall(calls[1][0]) == ["-i", "-o", "--overwrite", "--bogus"]
    assert OPTION.findall('-t "$SAMPLES/BraTS-GLI-00000-000" --set a.b=-1') == ["-t", "--set"]


def measures(text: str) -> set[tuple[str, str]]:
    return {(num, UNIT_ALIASES.get(unit, unit)) for num, unit in MEASURE.findall(text)}


def test_measure_pattern():
    found = measures("took 4 min 21 s, 1,075 s, +7.4 %, 4.7× (4.9× wall), 1,160 MB, 860 slices/s; "
                     "not 256×256, BraTS 2021, Python ≥ 3.10, 12 patients, exit 75, 10 minutes")
    assert found == {("4", "min"), ("21", "s"), ("1,075", "s"), ("7.4", "%"), ("4.7", "×"),
                     ("4.9", "×"), ("1,160", "MB"), ("860", "slices/s"), ("10", "min")}


def test_every_measured_figure_in_the_readme_is_also_in_docs():
    """A number with a unit or a percentage in README prose (not code, not a link target, not a
    placeholder the lead fills in) must occur in docs/, where its command, date and machine are."""
    text = PLACEHOLDER.sub(" ", prose((REPO / "README.md").read_text()))
    text = LINK.sub(" ", INLINE.sub(" ", text))
    docs = "\n".join(p.read_text(errors="replace") for p in sorted(DOCS.rglob("*"))
                     if p.is_file() and p.suffix in {".md", ".txt", ".json"})
    missing = sorted(measures(text) - measures(docs))
    assert not missing, f"README figures not found in docs/: {missing}"


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub makes for the headings of a Markdown file."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", prose(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 1
        while anchor in anchors:
            anchor, n = f"{slug}-{n}", n + 1
        anchors.add(anchor)
    return anchors


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_to_existing_files(page):
    problems = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            problems.append(f"{target}: {dest} does not exist")
        elif REPO not in (dest, *dest.parents):
            problems.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not problems, "\n".join(problems)


def test_github_anchors():
    page = REPO / "README.md"
    assert "hpc-slurm-and-singularityapptainer" in github_anchors(page)
    assert "traindistribution-what-data-parallel-training-does" in github_anchors(DOCS / "hpc.md")


def test_readme_is_a_short_guide_without_history():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for phrase in ("fixed since", "no longer", "before this change", "since then", "re-measured",
                   "previously", "12 patients: 409"):
        assert phrase not in text.lower(), phrase


def test_readme_api_example_writes_only_into_an_ignored_folder():
    code = readme_snippet()
    assert 'out = Path("braintseg-demo-api")' in code
    for literal in re.findall(r'"([^"]*)"', code):
        assert "/" not in literal or literal == "configs/demo.yaml", literal  # paths go via out
    assert "braintseg-demo-api/" in (REPO / ".gitignore").read_text().split()


def test_readme_sample_data_command_works():
    text = (REPO / "README.md").read_text()
    command = 'python -c "import braintseg; print(braintseg.sample_data_dir())"'
    assert command in text
    done = subprocess.run([sys.executable, "-c", command.split('"')[1]], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == sample_data_dir()
    assert (sample_data_dir() / HOLDOUT).is_dir()


def readme_install_commands() -> list[str]:
    return [line.strip() for block in code_blocks((REPO / "README.md").read_text())
            for line in block.splitlines() if "python3 -m venv" in line]


def test_readme_test_command_is_what_ci_runs():
    (demo, tests) = readme_install_commands()
    assert demo.endswith("&& braintseg demo") and tests.endswith("&& python -m pytest -q")
    if "constraints.txt" in tests and not (REPO / "constraints.txt").is_file():
        pytest.skip("constraints.txt is not in the repository yet (nor in .ci/run)")
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert tests in ci
