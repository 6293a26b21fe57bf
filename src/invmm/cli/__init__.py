"""The `invmm` command: one module per command, the shared options declared once (options.py), every command a
thin layer over the library."""

from __future__ import annotations

import typer

from invmm.cli import assess, audit, demo, estimate, evaluate, measure, merge, mitigation_eval, results, track, zoo

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="How strongly has a diffusion model memorized an image? (InvMM, Ma et al., ICCV 2025)")
app.command("measure")(measure.command)
app.command("audit")(audit.command)
app.command("estimate")(estimate.command)
app.command("export")(results.export)
app.command("report")(results.report)
app.command("compare")(results.compare)
app.command("evaluate")(evaluate.command)
app.command("demo")(demo.command)
app.command("dataset-test")(results.dataset_test)
app.command("merge")(merge.command)
app.command("assess")(assess.command)
app.command("track")(track.command)
app.command("mitigation-eval")(mitigation_eval.command)

zoo_app = typer.Typer(no_args_is_help=True, help="Toy models with planted memorization.")
zoo_app.command("train-digits")(zoo.train_digits_command)
zoo_app.command("train-digits-t2i")(zoo.train_digits_t2i_command)
zoo_app.command("train-digits-dit")(zoo.train_digits_dit_command)
zoo_app.command("train-digits-template")(zoo.train_digits_template_command)
zoo_app.command("train-lora")(zoo.train_lora_command)
zoo_app.command("export-digits")(zoo.export_digits_command)
app.add_typer(zoo_app, name="zoo")


def main():  # pragma: no cover
    app()
