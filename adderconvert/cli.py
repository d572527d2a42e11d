"""Command line: ``adderconvert MODEL [options]``, ``adderconvert list``, ``adderconvert doctor``."""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import fields
from pathlib import Path

import click
import yaml

from adderconvert.pipeline import RunConfig


class _ModelGroup(click.Group):
    """A group whose unknown first word is a model name handed to the ``convert`` command."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["convert", *args]
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage("adderconvert", "MODEL [OPTIONS] | list | doctor")


@click.group(cls=_ModelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adderconvert")
def main() -> None:
    """Turn a torchvision CNN into an AdderNet, fine-tune it and export it to ONNX.

    \b
    adderconvert resnet18 --finetune          the main job on Fashion-MNIST
    adderconvert resnet50 --dry-run           the conversion report only
    adderconvert MODEL --help                 every option
    adderconvert list                         models that can be converted
    adderconvert doctor                       versions, build and a one-node check per provider
    """


def _load_config_file(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise click.BadParameter(f"cannot read {path}: {e}", param_hint="-c/--config") from e
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if not isinstance(data, dict) or unknown:
        raise click.BadParameter(f"unknown keys in {path}: {unknown}", param_hint="-c/--config")
    return data


@main.command("convert", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML file of options (command-line options win).",
)
@click.option("--dry-run", is_flag=True, help="Print the conversion report and stop.")
@click.option("--include", multiple=True, help="Convert only convs whose name matches this wildcard (repeatable).")
@click.option("--exclude", multiple=True, help="Keep convs whose name matches this wildcard (repeatable).")
@click.option("--keep-stem/--convert-stem", default=None, help="Keep the first conv multiplicative [keep].")
@click.option(
    "--keep-classifier/--convert-classifier", default=None, help="Keep a conv classifier multiplicative [keep]."
)
@click.option(
    "--init",
    type=click.Choice(["fresh", "rescale", "copy"]),
    default=None,
    help=f"Adder weight init [{RunConfig.init}].",
)
@click.option(
    "--dataset",
    type=click.Choice(["fashion-mnist", "cifar10", "imagefolder"]),
    default=None,
    help="Data set [fashion-mnist].",
)
@click.option(
    "--data", type=click.Path(file_okay=False), default=None, help="Data folder (default: Debian's Fashion-MNIST)."
)
@click.option(
    "--image-size",
    type=click.IntRange(16, 1024),
    default=None,
    help="Input size [28 Fashion-MNIST, 32 CIFAR, 224 ImageFolder].",
)
@click.option(
    "--weights",
    default=None,
    help="Teacher weights: DEFAULT (torchvision), a file, or 'none' [DEFAULT; none with --pretrain-epochs].",
)
@click.option(
    "--pretrain-epochs",
    type=click.IntRange(0),
    default=None,
    help="Train the CNN on the data set first [1 if its head was resized].",
)
@click.option("--finetune/--no-finetune", default=None, help="Fine-tune the adder model [finetune].")
@click.option("--epochs", type=click.IntRange(1), default=None, help=f"Fine-tuning epochs [{RunConfig.epochs}].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help=f"Global batch size [{RunConfig.batch_size}].")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help=f"Learning rate [{RunConfig.lr}].")
@click.option(
    "--eta",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help=f"Adaptive-LR eta for adder weights [{RunConfig.eta}].",
)
@click.option("--kd/--no-kd", default=None, help="Distil from the CNN teacher [kd].")
@click.option(
    "--feature-kd",
    type=click.FloatRange(0),
    default=None,
    help=f"Weight of feature distillation: each BatchNorm after an adder layer matched to the teacher's; "
    f"0 turns it off [{RunConfig.feature_kd}].",
)
@click.option("--sync-bn", is_flag=True, default=None, help="Synchronise BatchNorm over torchrun processes.")
@click.option("--export/--no-export", default=None, help="Export to ONNX and evaluate with ONNX Runtime [export].")
@click.option("--output", type=click.Path(file_okay=False), default=None, help="Output folder [runs/MODEL].")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False), default=None, help="Continue from a last.pt.")
@click.option("--device", default=None, help="cpu or cuda [cpu].")
@click.option("--seed", type=int, default=None, help="Random seed [0].")
@click.option("--workers", type=click.IntRange(0), default=None, help="DataLoader workers [0].")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop each epoch after this many batches.")
@click.option(
    "--max-drop",
    type=click.FloatRange(0),
    default=None,
    help="Exit non-zero when adder top-1 is more than this many points below the CNN.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def convert_command(model: str, config_file: str | None, dry_run: bool, quiet: bool, **options) -> None:
    """Convert MODEL (any torchvision classification model) to an AdderNet, fine-tune and export it."""
    import torchvision

    from adderconvert.data import DataError
    from adderconvert.models import WeightsError, list_cnn_models

    if model not in torchvision.models.list_models(module=torchvision.models):
        close = difflib.get_close_matches(model, list_cnn_models(), n=4, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise click.UsageError(f"unknown model {model!r}.{hint} `adderconvert list` shows all.")
    values = _load_config_file(config_file)
    for key in ("include", "exclude"):
        options[key] = list(options[key]) or None
    explicit = {k: v for k, v in options.items() if v is not None}
    values.update(explicit)
    values["model"] = model
    values.setdefault("output", f"runs/{model}")
    if "weights" not in values:
        values["weights"] = None if values.get("pretrain_epochs") else "DEFAULT"
    if str(values.get("weights")).lower() == "none":
        values["weights"] = None
    values["progress"] = not quiet
    config = RunConfig(**values)
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise click.UsageError("--device cuda: no CUDA GPU is available here")
    try:
        if dry_run:
            from adderconvert.pipeline import plan_only

            click.echo(plan_only(config).table())
            return
        from adderconvert.pipeline import run

        summary = run(config)
    except (DataError, WeightsError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    if config.max_drop is not None and summary["adder_top1"] < summary["cnn_top1"] - config.max_drop:
        raise click.ClickException(
            f"adder top-1 {summary['adder_top1']:.2f}% is more than {config.max_drop} points below the CNN's "
            f"{summary['cnn_top1']:.2f}%"
        )


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_command(as_json: bool) -> None:
    """List the torchvision classification CNNs that can be converted."""
    from adderconvert.models import list_cnn_models

    names = list_cnn_models()
    click.echo(json.dumps(names) if as_json else "\n".join(names))


@main.command("doctor")
def doctor_command() -> None:
    """Print versions and build configuration, and run a one-node AdderConv on every available provider."""
    from adderconvert.doctor import run_doctor

    sys.exit(run_doctor())


if __name__ == "__main__":
    main()
