"""The command-line reference: every command and option of the `invmm` app as Markdown, written by typer's own
documentation generator (the one behind `typer ... utils docs`) from the app `invmm` runs, so it cannot drift from
`--help`. This module is also a MkDocs hook (mkdocs.yml, `hooks`): at every build it puts the reference in place of
MARKER in docs/reference/cli.md. (mkdocs-click does not fit: it recognises options by click's own classes, and
typer 0.29 builds them on its vendored copy of click, so every option table came out empty.)"""

from __future__ import annotations

MARKER = "<!-- the generated command-line reference -->"


def cli_markdown() -> str:
    """The reference, its headings one level below a page title."""
    import typer
    import typer.cli

    from invmm.cli import app

    command = typer.main.get_command(app)
    text = typer.cli.get_docs_for_click(obj=command, ctx=typer.Context(command), name="invmm", title="invmm")
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines()) + "\n"


def on_page_markdown(markdown: str, **_) -> str:
    """MkDocs hook: the generated reference in place of its marker."""
    return markdown.replace(MARKER, cli_markdown()) if MARKER in markdown else markdown
