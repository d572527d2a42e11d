"""Command line: ``adderconvert MODEL [options]`` (the main job), and ``list``, ``doctor``, ``evaluate``,
``export``, ``report`` and ``import-official``.

Bad input ends with one ``Error:`` line and exit status 2, never a traceback; a run that fails after it
started (divergence) exits with 1.
"""

from __future__ import annotations

import difflib
import json
import os
import signal
import sys
from pathlib import Path

import click
import yaml

from adderconvert.app.config import ConfigError, RunConfig, validate_config
from adderconvert.conversion import (
    CEILING_BASES,
    DEFAULT_KEEP_CEILING,
    DEPLOYMENT_SIZE,
    GROUPED_BASES,
    INIT_CHOICES,
    KEEP_KINDS,
)
from adderconvert.data import DATASETS
from adderconvert.data_formats import FORMATS
from adderconvert.quantization import DEFAULT_METHOD, DEFAULT_PERCENTILE, METHODS
from adderconvert.train import MANY_BASES_LR, TrainConfig
from adderconvert.train.dense import DENSE_BASES, DETECTION, SEGMENTATION

# Each command imports what it needs when it runs, so that `--help`, `list` and bad input answer without
# loading onnx, onnxscript, matplotlib and the training stack (start-up time).


def _given(context: click.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (not its default)."""
    return context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def _switch(option: str, on: str, off: str) -> str:
    """The name of a ``--on/--off`` flag's default, read from :class:`RunConfig`'s ``option``."""
    return on if getattr(RunConfig, option) else off


class InputError(click.ClickException):
    """A bad input: ``Error: message`` and exit status 2."""

    exit_code = 2


class _ModelGroup(click.Group):
    """A group whose unknown first word is a model name handed to the ``convert`` command."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["convert", *args]
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage("adderconvert", "MODEL [OPTIONS] | list | doctor | evaluate | export | report | ...")


_HELP = {"help_option_names": ["-h", "--help"]}


@click.group(cls=_ModelGroup, context_settings=_HELP)
@click.version_option(package_name="adderconvert")
def main() -> None:
    """Turn a torchvision CNN into an AdderNet, fine-tune it and export it to ONNX.

    \b
    adderconvert resnet18 --finetune          the main job on Fashion-MNIST (writes runs/resnet18/)
    adderconvert resnet50 --dry-run           the conversion report only
    adderconvert MODEL --help                 every option
    adderconvert evaluate runs/resnet18/best.pt    top-1 of a checkpoint or an .onnx file
    adderconvert export runs/resnet18/best.pt      ONNX of a checkpoint
    adderconvert report runs/resnet18         cost report: operations, energy, latency (HTML + JSON)
    adderconvert import-official PATH --output DIR   a checkpoint of the official AdderNet code
    adderconvert list                         models that can be converted
    adderconvert doctor                       versions, build and a one-node check per provider
    """


def _input_errors():
    """The exception types that mean bad input."""
    from adderconvert.app.weights import WeightsError
    from adderconvert.checkpoint import CheckpointError
    from adderconvert.data import DataError

    return (CheckpointError, ConfigError, DataError, WeightsError, ValueError, FileNotFoundError)


def _load_config_file(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except UnicodeDecodeError:
        raise InputError(f"cannot read {path}: not a text file (-c takes a YAML file of options)") from None
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    data = {} if data is None else data
    try:
        validate_config(data)
    except ConfigError as e:
        raise InputError(f"{path}: {e}") from None
    return data


def _resumed(model: str, resume_from: str, values: dict) -> dict:
    """``values`` (flags and -c file) merged into the options of the run that ``--resume [PATH]`` names,
    which they must agree with (app/resume.py)."""
    from adderconvert.app.resume import ResumeError, resume_folder, resumed_options
    from adderconvert.checkpoint import CheckpointError

    try:
        if resume_from:
            folder = resume_folder(resume_from, values.get("output"), model)
        else:
            folder = Path(values.get("output", f"runs/{model}"))
        values = resumed_options(folder, model, values)
    except (ResumeError, CheckpointError) as e:
        raise InputError(str(e)) from None
    return {**values, "resume": True, "output": str(folder)}


def _interrupt_on_sigterm():
    """SIGTERM (a scheduler's or ``kill``'s stop) ends a run as Ctrl-C does: what a run has checkpointed
    is kept, a run with no checkpoint leaves no folder. Returns the previous handler."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (embedded use): leave SIGTERM alone
        return None


@main.command("convert", context_settings=_HELP)
@click.argument("model")
@click.option(
    "-c", "--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of options (flags win)."
)
@click.option("--dry-run", is_flag=True, help="Print the conversion report and stop.")
@click.option("--include", multiple=True, help="Convert only convs whose name matches this wildcard (repeatable).")
@click.option("--exclude", multiple=True, help="Keep convs whose name matches this wildcard (repeatable).")
@click.option(
    "--keep-stem/--convert-stem",
    default=None,
    help="Keep the first conv multiplicative, unless it alone passes --keep-ceiling "
    f"[{_switch('keep_stem', 'keep', 'convert')}].",
)
@click.option(
    "--keep-classifier/--convert-classifier",
    default=None,
    help="Keep a conv classifier and the prediction convs of segmentation and detection models multiplicative "
    f"[{_switch('keep_classifier', 'keep', 'convert')}].",
)
@click.option(
    "--keep",
    multiple=True,
    type=click.Choice((*KEEP_KINDS, "none")),
    help="Keep this kind of conv multiplicative (repeatable); none converts them all "
    f"[{' '.join(RunConfig().keep) or 'none'}].",
)
@click.option(
    "--keep-ceiling",
    type=float,
    default=None,
    help=f"Keep at most this share of the conv MACs (counted at {DEPLOYMENT_SIZE} px) multiplicative, the stem "
    f"included: the --keep kinds that binary weights fit best are converted beyond it, and a stem that alone passes "
    f"it [{DEFAULT_KEEP_CEILING:g}; detection models {DETECTION.keep_ceiling:g}: every conv of those kinds kept].",
)
@click.option(
    "--bases",
    type=int,
    default=None,
    help=f"Binary bases per adder layer, 1-4: each more adds the additions of one more adder filter per output for a "
    f"closer fit of the CNN [1; classifiers with grouped or depthwise convs {GROUPED_BASES}, {CEILING_BASES} where "
    f"the plan converts depthwise convs or a stem past the keep ceiling; segmentation and detection {DENSE_BASES}, "
    f"detectors with depthwise convs {CEILING_BASES}].",
)
@click.option(
    "--keep-mac-budget",
    type=float,
    default=None,
    help="Keep multiplicative the convs that binary weights fit worst, up to this share of the MACs, e.g. 0.05 "
    f"[{RunConfig.keep_mac_budget:g}].",
)
@click.option("--init", default=None, help=f"Adder weight init: {', '.join(INIT_CHOICES)} [{RunConfig.init}].")
@click.option(
    "--reconstruct",
    default=None,
    help="After the sign init, fit each adder layer to the CNN's output on calibration images: signs (binary "
    f"weights and norm), affine (the norm only) or none [{RunConfig.reconstruct}].",
)
@click.option(
    "--dataset",
    default=None,
    help=f"{', '.join(DATASETS)}; {' or '.join(FORMATS)} for detection or segmentation [{RunConfig.dataset}: for "
    "segmentation and detection its built-in scenes].",
)
@click.option("--data", default=None, help="Data folder (default: Debian's Fashion-MNIST).")
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Input size, 16-1024 [28 Fashion-MNIST, 32 CIFAR, 224; 128 for segmentation and detection].",
)
@click.option(
    "--weights",
    default=None,
    help="Teacher weights: DEFAULT (torchvision), a file, or 'none' [DEFAULT; none with --pretrain-epochs].",
)
@click.option("--pretrain-epochs", type=int, default=None, help="Train the CNN first [1 if its head was resized].")
@click.option(
    "--finetune/--no-finetune",
    default=None,
    help=f"Fine-tune the adder model [{_switch('finetune', 'finetune', 'no-finetune')}].",
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help=f"Fine-tuning epochs [{TrainConfig.epochs}].",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help=f"Global batch size [{TrainConfig.batch_size}; segmentation and detection {SEGMENTATION.batch_size}].",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help=f"Learning rate of the CNN's own layers; adder weights take {TrainConfig.adder_lr_scale:g} times it "
    f"(segmentation {SEGMENTATION.adder_lr_scale:g}, detection {DETECTION.adder_lr_scale:g}) [{TrainConfig.lr}; "
    f"{MANY_BASES_LR} where the adder layers have three or more bases, except detection models'].",
)
@click.option("--eta", type=float, default=None, help=f"Adaptive-LR eta for adder weights [{RunConfig.eta}].")
@click.option("--warmup-steps", type=int, default=None, help=f"Linear LR warm-up steps [{RunConfig.warmup_steps}].")
@click.option("--kd/--no-kd", default=None, help=f"Distil from the CNN teacher [{_switch('kd', 'kd', 'no-kd')}].")
@click.option(
    "--feature-kd",
    type=float,
    default=None,
    help=f"Weight of feature distillation: each BatchNorm after an adder layer matched to the teacher's (segmentation "
    f"and detection: the backbone's output maps, at a tenth of the weight); 0 turns it off [{RunConfig.feature_kd}].",
)
@click.option("--sync-bn", is_flag=True, default=None, help="Synchronise BatchNorm over torchrun processes.")
@click.option("--amp", is_flag=True, default=None, help="bfloat16 autocast (adder layers stay float32).")
@click.option(
    "--export/--no-export",
    default=None,
    help="Export to ONNX and evaluate with ONNX Runtime (--no-export: the cost report without latency) "
    f"[{_switch('export', 'export', 'no-export')}].",
)
@click.option(
    "--int8",
    is_flag=True,
    default=None,
    help="Also export, evaluate and report the INT8 adder model (QuantizedAdderConv).",
)
@click.option(
    "--calibration-batches",
    type=int,
    default=None,
    help=f"INT8 calibration batches of 64 training images [{RunConfig.calibration_batches}].",
)
@click.option(
    "--calibration-method",
    type=click.Choice(METHODS),
    default=None,
    help=f"INT8 calibration: each layer's input range (see export --help) [{RunConfig.calibration_method}].",
)
@click.option("--output", default=None, help="Run folder [runs/MODEL].")
@click.option(
    "--resume",
    "resume_from",
    is_flag=False,
    flag_value="",
    default=None,
    help="Continue the run in --output (or the run folder / last.pt given) with its own options (config.yaml).",
)
@click.option("--overwrite", is_flag=True, default=None, help="Replace the run already in --output.")
@click.option("--device", default=None, help=f"auto, cpu, cuda or cuda:N [{RunConfig.device}: cuda when there is one].")
@click.option(
    "--seed", type=int, default=None, help=f"Seed of initial weights, data order and init [{RunConfig.seed}]."
)
@click.option("--workers", type=int, default=None, help=f"DataLoader workers [{RunConfig.workers}].")
@click.option("--max-steps", type=int, default=None, help="Stop each epoch after this many batches.")
@click.option("--eval-max-batches", type=int, default=None, help="Evaluate on this many test batches of 256 only.")
@click.option(
    "--max-drop",
    type=float,
    default=None,
    help="Exit non-zero when adder top-1 is more than this many points below the CNN.",
)
@click.option("--quiet", is_flag=True, help="No progress bars (the per-epoch lines stay).")
def convert_command(
    model: str, config_file: str | None, dry_run: bool, quiet: bool, resume_from: str | None, **options
) -> None:
    """Convert MODEL (a torchvision CNN) to an AdderNet, fine-tune and export it.

    Segmentation and detection models go through the same stages, scored by mIoU or mAP, --int8 and the cost
    report (split into backbone, neck and head) included."""
    from adderconvert.architectures.registry import models_by_task, part_of

    known = [name for names in models_by_task().values() for name in names]
    if model not in known:
        close = difflib.get_close_matches(model, known, n=4, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise InputError(f"unknown model {model!r} (or not a CNN).{hint} `adderconvert list` shows all.")
    values = _load_config_file(config_file)
    for key in ("include", "exclude", "keep"):
        options[key] = list(options[key]) or None
    values.update({k: v for k, v in options.items() if v is not None})
    if "weights" in values and str(values["weights"]).lower() == "none":  # absent: the default below
        values["weights"] = None
    if resume_from is not None:
        values = _resumed(model, resume_from, values)
    values["model"] = model
    values.setdefault("output", f"runs/{model}")
    if "weights" not in values:
        values["weights"] = None if values.get("pretrain_epochs") else "DEFAULT"
    if str(values.get("weights")).lower() == "none":
        values["weights"] = None
    values["progress"] = not quiet
    if isinstance(values.get("data"), str):  # config.yaml keeps the folder for `export --int8` run from elsewhere
        values["data"] = os.path.abspath(values["data"])
    try:
        config = validate_config(values)
    except ConfigError as e:
        raise InputError(f"--{e.key.replace('_', '-')}: {str(e).partition(': ')[2]}") from None
    if config.resume and config.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    from adderconvert.app.pipeline import plan_only, run
    from adderconvert.train import TrainingDiverged

    try:
        if dry_run:
            report, note = plan_only(config)
            click.echo(report.table(part_of(model)))
            if note:
                click.echo(note)
            return
        previous = _interrupt_on_sigterm()
        try:
            summary = run(config)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    except TrainingDiverged as e:
        raise click.ClickException(str(e)) from None
    except _input_errors() as e:
        raise InputError(str(e)) from None
    except KeyboardInterrupt:
        from adderconvert.app.outputs import find_run
        from adderconvert.app.resume import resume_command

        command = resume_command(config)
        hint = f"continue with: {command}" if command else "no checkpoint had been written, so nothing was kept"
        if not command and config.overwrite and find_run(config.output) is not None:
            hint = f"no checkpoint had been written: the run it was replacing is back in {config.output} as it was"
        raise click.ClickException(f"interrupted; {hint}") from None
    metric = summary.get("metric", "top1")
    if config.max_drop is not None and summary[f"adder_{metric}"] < summary[f"cnn_{metric}"] - config.max_drop:
        from adderconvert.metrics import METRIC_NAMES

        name = METRIC_NAMES[metric]
        raise click.ClickException(
            f"adder {name} {summary[f'adder_{metric}']:.2f}% is more than {config.max_drop} points below the CNN's "
            f"{summary[f'cnn_{metric}']:.2f}%"
        )


@main.command("list", context_settings=_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object: task -> model names.")
def list_command(as_json: bool) -> None:
    """List the torchvision CNNs that can be converted, by task (classification, segmentation, detection)."""
    from adderconvert.architectures.registry import models_by_task

    tasks = models_by_task()
    if as_json:
        click.echo(json.dumps(tasks))
        return
    click.echo(
        "\n\n".join(f"{task} ({len(names)}):\n" + "\n".join(f"  {n}" for n in names) for task, names in tasks.items())
    )


@main.command("doctor", context_settings=_HELP)
def doctor_command() -> None:
    """Print versions and build configuration, and run a one-node AdderConv on every available provider."""
    from adderconvert.app.doctor import run_doctor

    sys.exit(run_doctor())


@main.command("evaluate", context_settings=_HELP)
@click.argument("target", type=click.Path(dir_okay=False))
@click.option("--dataset", default=None, help="Data set [the one the model was trained on].")
@click.option("--data", default=None, help="Data folder [Debian's Fashion-MNIST for fashion-mnist].")
@click.option("--image-size", type=click.IntRange(16, 1024), default=None, help="Input size, 16-1024 [the model's].")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Evaluation batch size.")
@click.option("--max-batches", type=int, default=None, help="Evaluate on this many batches only.")
@click.option("--device", default="auto", show_default=True, help="PyTorch device for a checkpoint.")
def evaluate_command(target, dataset, data, image_size, batch_size, max_batches, device) -> None:
    """Top-1 of TARGET on the test split: a checkpoint (.pt, PyTorch) or an ONNX file (ONNX Runtime); mIoU and pixel
    accuracy of a segmentation checkpoint, mAP@[.5:.95] and mAP@.5 of a detector's."""
    from adderconvert.app.saved_models import evaluate_file

    for name, value, low in (("--batch-size", batch_size, 1), ("--max-batches", max_batches, 1)):
        if value is not None and value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    try:
        result = evaluate_file(
            target,
            dataset=dataset,
            data=data,
            image_size=image_size,
            batch_size=batch_size,
            max_batches=max_batches,
            device=device,
        )
    except _input_errors() as e:
        raise InputError(str(e)) from None
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    from adderconvert.metrics import METRIC_NAMES

    scores = ", ".join(f"{METRIC_NAMES.get(k, k)} {v:.2f}%" for k, v in result["scores"].items())
    scenes = result["top1"] is None and result["dataset"] == "fashion-mnist"  # a dense model's built-in scenes
    what = "built-in test scenes" if scenes else f"{result['dataset']} test images"
    click.echo(f"{result['target']}: {scores} on {result['images']} {what} ({result['runtime']})")


@main.command("export", context_settings=_HELP)
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None, help="ONNX file [CHECKPOINT with .onnx].")
@click.option("--dynamic-hw", is_flag=True, help="Height and width as dynamic dimensions (batch always is).")
@click.option("--portable", is_flag=True, help="Standard ONNX ops only: runs without our library, slower.")
@click.option(
    "--int8", is_flag=True, help="The INT8 adder model, calibrated on training batches [MODEL_adder_int8.onnx]."
)
@click.option(
    "--calibration-batches",
    type=int,
    default=RunConfig.calibration_batches,
    show_default=True,
    help="With --int8: batches of 64 images.",
)
@click.option(
    "--calibration-method",
    type=click.Choice(METHODS),
    default=DEFAULT_METHOD,
    show_default=True,
    help=f"With --int8: each layer's input range from a percentile ({DEFAULT_PERCENTILE}) or the min/max of the "
    "calibration inputs, "
    "or the range whose layer output is closest to the float layer's (mse; slower).",
)
@click.option(
    "--data",
    default=None,
    help="With --int8: the training data's folder [Debian's Fashion-MNIST; a COCO or VOC run's own --data].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file (never CHECKPOINT itself).")
def export_command(
    checkpoint: str, output: str | None, dynamic_hw: bool, portable: bool, overwrite: bool, **int8_options
) -> None:
    """Export the model in CHECKPOINT to ONNX, with its input size, normalisation and classes as metadata."""
    context = click.get_current_context()
    given = [k for k in int8_options if k != "int8" and _given(context, k)]
    if given and not int8_options["int8"]:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise InputError(f"{flags} only apply with --int8 (the INT8 model's calibration)")
    if int8_options.pop("int8"):
        _export_int8(checkpoint, output, portable, dynamic_hw, overwrite=overwrite, **int8_options)
        return
    from adderconvert.app.saved_models import export_checkpoint

    try:
        path = export_checkpoint(checkpoint, output, dynamic_hw=dynamic_hw, portable=portable, overwrite=overwrite)
    except _input_errors() as e:
        raise InputError(str(e)) from None
    click.echo(f"wrote {path}")


def _export_int8(checkpoint, output, portable, dynamic_hw, *, overwrite, calibration_batches, calibration_method, data):
    from adderconvert.app.int8 import export_checkpoint_int8

    if portable:
        raise InputError("--int8 and --portable exclude each other: INT8 adder layers need the custom-op library")
    try:
        path = export_checkpoint_int8(
            checkpoint,
            output,
            batches=calibration_batches,
            method=calibration_method,
            data=data,
            dynamic_hw=dynamic_hw,
            overwrite=overwrite,
        )
    except _input_errors() as e:
        raise InputError(str(e)) from None
    click.echo(f"wrote {path}")


@main.command("report", context_settings=_HELP)
@click.argument("run_dir", type=click.Path(file_okay=False))
def report_command(run_dir: str) -> None:
    """Write RUN_DIR/report.html and report.json: operations, energy, size, accuracy and latency, CNN vs adder.

    RUN_DIR is a run folder: the --output of a training run or of import-official."""
    from adderconvert.app.outputs import check_is_run
    from adderconvert.app.report import write_report

    try:
        if Path(run_dir).is_dir():  # a missing folder: write_report names it
            check_is_run(run_dir, "report:")
        html, data = write_report(run_dir)
    except _input_errors() as e:
        raise InputError(str(e)) from None
    click.echo(f"wrote {html} and {data}")


@main.command("import-official", context_settings=_HELP)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--arch", default="resnet20", show_default=True, help="resnet20 (CIFAR-10) or resnet50 (ImageNet).")
@click.option("--output", required=True, help="Run folder to write (checkpoint, ONNX, report).")
@click.option("--overwrite", is_flag=True, help="Replace the run in --output (its own files only).")
def import_official_command(path: str, arch: str, output: str, overwrite: bool) -> None:
    """Import a checkpoint of the official AdderNet code (huawei-noah/AdderNet) as a run folder."""
    from adderconvert.app.official_run import import_official
    from adderconvert.architectures.official import ARCHS

    if arch not in ARCHS:
        raise InputError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    try:
        summary = import_official(path, arch, Path(output), overwrite=overwrite)
    except _input_errors() as e:
        raise InputError(str(e)) from None
    click.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
