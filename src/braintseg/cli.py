"""The ``braintseg`` command line.

Command bodies only parse options, load the config and call one ``run_*`` function.  Nothing
here imports Keras or TensorFlow at module level, so ``braintseg --help`` is instant; heavy
modules are imported inside the commands.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from braintseg import __version__
from braintseg.errors import BraintsegError, Interrupted
from braintseg.sources.registry import FORMATS

F = TypeVar("F", bound=Callable[..., Any])

#: exit code of ``train`` after a SIGTERM/SIGUSR1 checkpoint: "requeue me and resume"
REQUEUE_EXIT_CODE = 75


class _State:
    debug = False


@contextlib.contextmanager
def user_errors(resume: Callable[[], tuple[str, str]] | None = None) -> Iterator[None]:
    """Turn BraintsegError into a one-line message and exit 1 (re-raise with --debug).

    ``resume`` (train) returns what is saved and the command that continues the run; the
    command is added to the message of a stop (exit 75), both to that of Ctrl-C (exit 130).
    """
    try:
        yield
    except Interrupted as exc:
        hint = f"; continue with: {resume()[1]}" if resume else ""
        click.echo(f"braintseg: {exc}{hint}", err=True)
        sys.exit(REQUEUE_EXIT_CODE)
    except BraintsegError as exc:
        if _State.debug:
            raise
        raise click.ClickException(str(exc)) from None
    except (KeyboardInterrupt, SystemError) as exc:
        # Ctrl-C inside a C extension (TensorFlow's import machinery, tf.data) can surface as
        # "SystemError: ... returned a result with an exception set" caused by the
        # KeyboardInterrupt: the same interruption, so the same one line
        if _State.debug or not _caused_by_ctrl_c(exc):
            raise
        saved, command = resume() if resume else ("", "")
        hint = f"; {saved}; continue with: {command}" if resume else ""
        click.echo(f"braintseg: interrupted{hint}", err=True)
        sys.exit(130)


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    """True if ``exc`` is a KeyboardInterrupt or was raised because of one."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _train_resume(store: Path, fold: int, run_dir: Path, config_path: Path | None,
                  overrides: tuple[str, ...]) -> Callable[[], tuple[str, str]]:
    """For a stopped ``train``: (what its checkpoint holds, the exact --resume command)."""

    def resume() -> tuple[str, str]:
        from braintseg.training.checkpoint import describe
        from braintseg.training.runs import RunPaths

        args = ["braintseg", "train", "-i", str(store), "--fold", str(fold), "-o", str(run_dir)]
        args += ["-c", str(config_path)] if config_path else []
        args += [a for kv in overrides for a in ("--set", kv)]
        return describe(RunPaths(run_dir)), shlex.join([*args, "--resume"])

    return resume


def config_options(fn: F) -> F:
    """``-c/--config FILE`` and repeatable ``--set KEY=VALUE``."""
    fn = click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help="Override a config value, e.g. --set train.epochs=1 (repeatable).",
    )(fn)
    return click.option(
        "-c", "--config", "config_path", metavar="FILE",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="YAML config (see configs/default.yaml); defaults are the original method's.",
    )(fn)


def _load(config_path: Path | None, overrides: tuple[str, ...]) -> Any:
    from braintseg.config import load_config

    return load_config(config_path, overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="braintseg")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks for user errors too.")
def cli(verbose: int, quiet: bool, debug: bool) -> None:
    """braintseg: attention-guided 2D U-Net brain tumour segmentation for BraTS MRI.

    \b
    Typical use:
      braintseg prepare  -i BRATS_DIR -o store.h5
      braintseg train    -i store.h5 --fold 0 -o runs/axial_f0
      braintseg predict  -m runs/axial_f0 -m runs/sagittal_f0 -i CASES_DIR -o preds/
      braintseg evaluate -p preds/ -t CASES_DIR -o metrics.csv
    """
    from braintseg.log import quiet_native_logs, setup_logging

    quiet_native_logs(verbose)  # TensorFlow's C++ start-up lines (absl, oneDNN) only with -vv
    _State.debug = debug
    setup_logging(-1 if quiet else verbose)


@cli.command()
def info() -> None:
    """Print versions, the Keras backend, visible GPUs and HDF5/Blosc versions."""
    from braintseg.info import collect_info

    with user_errors():
        for key, value in collect_info().items():
            click.echo(f"{key:<22} {value}")


@cli.command()
@config_options
@click.option("-i", "--input", "input_dir", required=True,
              type=click.Path(path_type=Path),
              help="BraTS root, LGG root (patient folders) or a folder of figshare .mat slices.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The HDF5 store to write (folds.json is written beside it).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes reading cases [default: all cores].")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing store (without it, a store made from the same input "
                   "files and config is kept and any other is refused).")
@click.option("--skip-invalid", is_flag=True,
              help="Skip bad cases with a warning (listed in <store>.skipped.txt) "
                   "instead of failing.")
@click.option("--no-labels", is_flag=True, help="Allow cases without a seg file (inference-only).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Force the input reader [default: detected from the folder's layout].")
@click.option("--folds-from", type=click.Path(path_type=Path), default=None,
              help="figshare: the data set's official split cvind.mat (patient-level folds).")
@click.option("--validation-cases", type=click.Path(path_type=Path), default=None,
              help="2D data sets: file of patient ids (one a line) = fold 0's validation set.")
def prepare(
    config_path: Path | None, overrides: tuple[str, ...], input_dir: Path, output: Path,
    workers: int | None, overwrite: bool, skip_invalid: bool, no_labels: bool, fmt: str | None,
    folds_from: Path | None, validation_cases: Path | None,
) -> None:
    """Normalise and pack BraTS NIfTI cases (cropped volumes) or 2D slice data sets (LGG
    kaggle_3m TIFF folders, figshare .mat slices) into one PyTables store with patient-level
    folds."""
    with user_errors():
        cfg = _load(config_path, overrides)
        from braintseg.preparation.prepare import run_prepare

        path = run_prepare(cfg, input_dir, output, workers=workers, overwrite=overwrite,
                           skip_invalid=skip_invalid, require_labels=not no_labels,
                           fmt=fmt, folds_from=folds_from, validation_cases=validation_cases)
        click.echo(f"wrote {path}")


@cli.command()
@config_options
@click.option("-i", "--input", "store", required=True, type=click.Path(path_type=Path),
              help="Store written by `braintseg prepare`.")
@click.option("--fold", type=click.IntRange(min=0), required=True,
              help="Cross-validation fold used for validation.")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder (config, logs, checkpoints, model.keras).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from its checkpoint (an unfinished epoch is "
                   "run again from its first batch).")
@click.option("--overwrite", is_flag=True, help="Start afresh in a folder that holds a run.")
@click.option("--coordinator", metavar="HOST:PORT", default=None,
              help="Several processes, one model (JAX, train.distribution=data_parallel): "
                   "address of process 0 [KERAS_DISTRIBUTION_JOB_ADDRESSES; under srun: "
                   "found by JAX].")
@click.option("--num-processes", type=click.IntRange(min=1), default=None,
              help="Processes of the training [KERAS_DISTRIBUTION_NUM_PROCESSES].")
@click.option("--process-id", type=click.IntRange(min=0), default=None,
              help="This process, 0..N-1; 0 writes the run folder "
                   "[KERAS_DISTRIBUTION_PROCESS_ID].")
def train(
    config_path: Path | None, overrides: tuple[str, ...], store: Path, fold: int,
    run_dir: Path, resume: bool, overwrite: bool, coordinator: str | None,
    num_processes: int | None, process_id: int | None,
) -> None:
    """Train one cross-validation fold.

    On SIGTERM or SIGUSR1 (Slurm's warning before walltime) training finishes the current step,
    saves a checkpoint and exits with code 75; `--resume` then continues from it: the
    unfinished epoch is run again from its first batch, with the weights reached so far.
    A folder whose run stopped before its first checkpoint is simply started again.

    \b
    Several devices: --set train.distribution=data_parallel uses every GPU (JAX: also several
    processes and nodes; TensorFlow: MirroredStrategy on one node).  train.batch_size is the
    global batch: it must divide by the number of devices, and the learning rate is not
    rescaled.  A signal to any process stops all of them at the same step (exit 75 each).
    """
    from braintseg.stop import record_early, stop_recording

    early = record_early()  # a stop signal from now on ends the run with exit 75
    try:
        with user_errors(_train_resume(store, fold, run_dir, config_path, overrides)):
            cfg = _load(config_path, overrides)
            from braintseg.training.distribute import Launch
            from braintseg.training.train import run_train

            launch = Launch.from_options(coordinator, num_processes, process_id)
            run_train(cfg, store, fold, run_dir, resume=resume, overwrite=overwrite,
                      launch=launch)
            click.echo(f"finished {run_dir}")
    finally:
        stop_recording(early)


@cli.command()
@click.option("-m", "--model", "run_dirs", required=True, multiple=True,
              type=click.Path(path_type=Path),
              help="Run folder, or its model.keras (repeat to ensemble folds and views).")
@click.option("-i", "--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="Folder of case folders, one case folder, or a store (runs trained on 2D "
                   "slices: an LGG/figshare folder or a slice store).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for <case>.nii.gz (predict.output_pattern), predictions.csv and "
                   "predict_config.yaml; created if needed, removed again if nothing was "
                   "predicted.")
@click.option("--probabilities", is_flag=True,
              help="Also write class probabilities (<case>_prob.nii.gz, float32).")
@click.option("--tta", is_flag=True, help="Average over flips (test-time augmentation).")
@click.option("--cases", default=None, help="Comma-separated case ids to predict (default: all).")
@click.option("--fold", type=click.IntRange(min=0), default=None,
              help="Predict this fold's validation cases (store input).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override predict.* keys, e.g. --set predict.min_component_size=50.")
@click.option("--shard", default=None, metavar="K/N",
              help="Predict only cases K, K+N, ... of the selection (0 <= K < N), e.g. "
                   "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; the shards' files "
                   "together equal an unsharded run's.")
def predict(
    run_dirs: tuple[Path, ...], input_path: Path, out_dir: Path, probabilities: bool, tta: bool,
    cases: str | None, fold: int | None, overrides: tuple[str, ...], shard: str | None,
) -> None:
    """Predict 3D label volumes in the original geometry (NIfTI, source affine and header)."""
    with user_errors():
        from braintseg.inference.predict import run_predict
        from braintseg.training.distribute import parse_shard

        written = run_predict(
            list(run_dirs), input_path, out_dir, overrides=overrides,
            probabilities=probabilities, tta=tta,
            cases=[c for c in cases.split(",") if c] if cases else None, fold=fold,
            shard=parse_shard(shard),
        )
        click.echo(f"wrote {len(written)} predictions to {out_dir}")


@cli.command()
@click.option("-p", "--predictions", "pred_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of predicted <case>.nii.gz label files (the -o of predict).")
@click.option("-t", "--truth", required=True, type=click.Path(path_type=Path),
              help="Folder of BraTS case folders or <case>.nii.gz label files, or a store; "
                   "or an LGG/figshare folder or slice store for 2D predictions.")
@click.option("-o", "--output", default=None, type=click.Path(path_type=Path),
              help="Per-case CSV [default: PRED_DIR/metrics.csv]; summary written beside it.")
@click.option("--shard", default=None, metavar="K/N",
              help="Score only truth cases K, K+N, ... (sorted ids) into "
                   "<output stem>.shard-K-of-N.csv/.json (a Slurm array task); then --merge.")
@click.option("--merge", is_flag=True,
              help="Join the --shard results beside OUTPUT into OUTPUT and its summary.")
def evaluate(pred_dir: Path, truth: Path, output: Path | None, shard: str | None,
             merge: bool) -> None:
    """Score predictions: Dice, HD95, sensitivity, specificity for WT, TC and ET."""
    with user_errors():
        from braintseg.scoring.evaluate import format_summary, merge_shards, run_evaluate
        from braintseg.training.distribute import parse_shard

        if merge:
            if shard is not None:
                raise click.UsageError("--merge joins the shards' results; drop --shard")
            summary = merge_shards(output or pred_dir / "metrics.csv")
        else:
            summary = run_evaluate(pred_dir, truth, output, shard=parse_shard(shard))
        click.echo(format_summary(summary))


@cli.command()
@click.option("-o", "--output", "out_dir", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="Output folder, new or empty unless --overwrite [default: braintseg-demo, "
                   "or braintseg-demo-lgg with --dataset lgg].")
@click.option("--overwrite", is_flag=True, help="Replace the demo's outputs in a non-empty folder.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs [default: 6 on a CPU; 100 when a GPU is visible].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of the demo's config (configs/demo.yaml), e.g. "
                   "--set model.start_channels=16 (repeatable).")
@click.option("--dataset", type=click.Choice(["brats", "lgg"]), default="brats",
              help="brats: 4 bundled BraTS volumes; lgg: 2 bundled LGG kaggle_3m patients "
                   "(2D TIFF slices).")
def demo(out_dir: Path | None, overwrite: bool, epochs: int | None,
         overrides: tuple[str, ...], dataset: str) -> None:
    """Run the whole pipeline on 4 bundled real BraTS cases (a few minutes on a CPU).

    Trains on three cases and predicts and evaluates the fourth, the BraTS 2023 case, held out
    (never trained on, nothing chosen on it); draws pictures, and prints what was written where
    and the held-out Dice per region beside the range a correct install reaches.
    """
    with user_errors():
        from braintseg.demos.demo import format_result, run_demo

        result = run_demo(out_dir, dataset=dataset, overwrite=overwrite, epochs=epochs,
                          overrides=overrides)  # out_dir None: the data set's default folder
        click.echo(format_result(result, dataset))


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-t", "--truth", default=None, type=click.Path(path_type=Path),
              help="For a prediction folder: the BraTS case folders (images and segs).")
@click.option("-o", "--output", "out_dir", default=None, type=click.Path(path_type=Path),
              help="Folder for the PNGs [default: FOLDER].")
def report(folder: Path, truth: Path | None, out_dir: Path | None) -> None:
    """Draw training curves (RUN_DIR) or per-case overlay montages (PRED_DIR -t CASES_DIR)."""
    with user_errors():
        from braintseg.reporting.report import run_report

        for path in run_report(folder, truth, out_dir):
            click.echo(f"wrote {path}")


@cli.command()
@click.argument("case_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", default=None, type=click.Path(path_type=Path),
              help="PNG file [default: <case>_show.png in the current folder].")
def show(case_dir: Path, output: Path | None) -> None:
    """Quick look at one raw case: FLAIR, T1, T1ce, T2 and the seg if present."""
    with user_errors():
        from braintseg.reporting.report import show_case

        click.echo(f"wrote {show_case(case_dir, output)}")


def main() -> None:  # pragma: no cover - console entry alias
    cli()
