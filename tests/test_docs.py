"""The documentation cannot drift from the program: the generated command-line reference (docs/reference/cli.md,
written by typer's documentation generator from the same app at every build) lists every command and option that
`invmm --help` lists, and no page of the docs is titled by an issue number. (The site itself is built with
`mkdocs build --strict` in .ci/run.)"""

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from invmm.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs"
runner = CliRunner()


def _commands(group, path=()):
    """Every command path of the click tree: ("measure",), ("zoo", "train-digits"), ..."""
    for name, cmd in group.commands.items():
        yield (*path, name)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))


def _options(command) -> set[str]:
    """The options `--help` lists for a command: every visible option's spellings (click's own record of them)."""
    return {o for p in command.params if isinstance(p, typer.core.TyperOption) and not p.hidden
            for o in (*p.opts, *p.secondary_opts) if o.startswith("--")} - {"--help"}


def _help_text(path) -> str:
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert res.exit_code == 0, res.output
    return res.stdout


def test_the_generated_cli_reference_lists_every_command_and_option_of_the_help():
    from invmm.cli.reference import MARKER, cli_markdown, on_page_markdown

    page = (DOCS / "reference" / "cli.md").read_text()
    assert MARKER in page  # the build puts the reference there (mkdocs.yml hooks)
    rendered = on_page_markdown(page)
    assert rendered == page.replace(MARKER, cli_markdown()) and MARKER not in rendered
    command = typer.main.get_command(app)
    paths = list(_commands(command))
    assert {p[0] for p in paths} >= {"measure", "audit", "estimate", "evaluate", "report", "export", "compare",
                                     "merge", "dataset-test", "demo", "zoo"}
    sections = dict(re.findall(r"^#+ `invmm ([^`]+)`\n(.*?)(?=^#+ `invmm |\Z)", rendered, re.M | re.S))
    for path in paths:
        assert " ".join(path) in sections, f"command {' '.join(path)} missing from the reference"
        tokens = set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", sections[" ".join(path)]))
        sub = command
        for name in path:
            sub = sub.commands[name]
        if hasattr(sub, "commands"):
            continue
        listed = _options(sub)
        assert listed <= set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", _help_text(path))), path  # as --help
        missing = listed - tokens
        assert not missing, f"invmm {' '.join(path)}: {sorted(missing)} in --help but not in the reference"
    # Deprecated spellings are hidden from both.
    assert "--rank-by" not in rendered and "--rank-by" not in runner.invoke(app, ["report", "--help"]).stdout


def test_no_page_or_heading_of_the_docs_names_an_issue_number():
    pages = sorted(DOCS.rglob("*.md"))
    assert len(pages) > 20
    for page in pages:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("#"):
                assert not re.search(r"\bissues? \d+", line, re.I), f"{page}:{n}: {line}"
    readme = (DOCS.parent / "README.md").read_text().splitlines()
    assert len(readme) <= 160, f"the README is the short front page ({len(readme)} lines)"


def test_the_documented_settings_are_the_presets():
    """The numbers the concepts page gives for the loop are the `ddpm` preset's (read from the table, not copied)."""
    from invmm.config import preset

    cfg = preset("ddpm")
    rows = [line.split("|")[1:-1] for line in (DOCS / "concepts" / "score.md").read_text().splitlines()
            if line.startswith("| ") and "`" in line]
    checked = 0
    for _, value, where in rows:
        name = re.search(r"InvMMConfig\.(\w+)|`--([a-z-]+)`", where)
        try:
            number = float(value.strip().replace(",", ""))
        except ValueError:
            continue  # a sampler or a threshold described in words
        attr = name.group(1) or name.group(2).replace("-", "_")
        assert getattr(cfg, attr) == pytest.approx(number), f"docs/concepts/score.md: {attr} is {getattr(cfg, attr)}"
        checked += 1
    assert checked >= 8
