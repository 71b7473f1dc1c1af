"""`bot`: the command line. It parses, builds a config and calls one stage; no training logic lives here."""
from __future__ import annotations

import sys

import click

from engine.errors import BotError, one_line


class BotGroup(click.Group):
    """Turns a BotError (bad input) into one line on stderr and exit code 2, wherever it was raised."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BotError as e:
            click.echo(f"error: {one_line(e)}", err=True)
            sys.exit(2)


@click.group(cls=BotGroup)
@click.version_option(package_name="bot")
def main():
    """Bag of Tricks for image classification: pretrain backbones, fine-tune them for detection and
    segmentation, and compare what each training choice is worth downstream."""


# ---- pretrain -------------------------------------------------------------------------------------------------
@main.command()
@click.option("--data", type=click.Path(), help="ImageFolder root with train/ and val/ (default: the synthetic shapes set).")
@click.option("--recipe", default="resnet50d", show_default=True, help="Recipe name (see `bot recipes`) or a YAML file.")
@click.option("--arch", help="resnet{18,26,34,50,101,152}{a,b,c,d}; b is timm's plain resnetN.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int, help="Global batch size (split over processes).")
@click.option("--lr", type=float, help="Peak learning rate (default: linear scaling, base_lr * batch / 256).")
@click.option("--image-size", type=int)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]))
@click.option("--device", help="cpu, cuda, cuda:N (default: cuda if available).")
@click.option("--workers", type=int, help="DataLoader workers per process.")
@click.option("--seed", type=int)
@click.option("--teacher", type=click.Path(), help="Distillation teacher: a pretrain run dir or a safetensors file.")
@click.option("--init", "init_weights", type=click.Path(), help="Start from these local safetensors weights.")
@click.option("--out", type=click.Path(), help="Run directory (default: runs/pretrain-<recipe>).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--nproc", type=int, default=1, show_default=True, help="Launch this many processes on this machine (torchrun).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other recipe key; repeatable.")
def pretrain(nproc, **options):
    """Train a classification backbone with the paper's recipe."""
    from engine.launch import relaunch_with_torchrun
    if nproc > 1:
        sys.exit(relaunch_with_torchrun(nproc))
    from pretrain.train import run_from_cli
    run_from_cli(**options)


@main.command()
def recipes():
    """List the shipped pretrain recipes."""
    from pretrain.recipes import describe_recipes
    click.echo(describe_recipes())


# ---- compare --------------------------------------------------------------------------------------------------
@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--baseline", help="Row to diff against: a run name, recipe, run path or sha256 prefix (default: the first).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table", show_default=True)
@click.option("--csv", "csv_file", type=click.Path(), help="Also write the comparison as CSV here.")
@click.option("--json", "json_file", type=click.Path(), help="Also write it as JSON here.")
@click.option("--markdown", "markdown_file", type=click.Path(), help="Also write it as a Markdown table here.")
@click.option("--plot", "plot_file", type=click.Path(), help="Write the plots here (.png, .svg or .pdf).")
def compare(paths, **options):
    """Compare backbones: join pretrain runs under PATHS (default: runs/) with their fine-tune runs by weights sha256."""
    from compare.command import run_compare
    run_compare(list(paths), **options)


if __name__ == "__main__":
    main()
