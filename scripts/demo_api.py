"""The braintseg demo, step by step, through the Python API (what ``braintseg demo`` does).

Usage:
    python scripts/demo_api.py [OUT_DIR] [--epochs N] [--set section.key=value ...]

Each step is one function of ``braintseg`` taking the same ``Config`` object as the CLI: prepare
the four bundled real BraTS cases into a store (one fold each), train on the three BraTS 2018
cases (the BraTS 2023 case's fold is the validation fold, only as a learning curve:
``train.monitor: last``), predict the held-out case from its NIfTI files, evaluate it alone
against its ground truth, print its Dice and draw the pictures.  Paste the body of ``main`` into
a notebook cell to run it there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from braintseg import evaluate, load_config, predict, prepare, sample_data_dir, train
from braintseg.demos.demo import HOLDOUT, draw_pictures, validation_fold
from braintseg.scoring.evaluate import format_summary

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def main(out: Path, epochs: int | None, overrides: list[str]) -> None:
    """Run the demo's steps into ``out`` (replacing earlier outputs there)."""
    cfg = load_config(CONFIG, overrides + ([f"train.epochs={epochs}"] if epochs else []))
    cases = sample_data_dir()  # <case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz, 4 real cases
    out.mkdir(parents=True, exist_ok=True)

    store = prepare(cfg, cases, out / "store.h5", workers=None, overwrite=True,
                    skip_invalid=False, require_labels=True)
    fold = validation_fold(store, HOLDOUT)  # train on the other three cases
    train(cfg, store, fold, out / "run", resume=False, overwrite=True)
    predictions = predict([out / "run"], cases / HOLDOUT, out / "predictions", overrides=(),
                          probabilities=False, tta=False, cases=None, fold=None)
    metrics = out / "predictions" / "metrics.csv"  # where the overlays look for Dice
    summary = evaluate(out / "predictions", cases, metrics, cases=[HOLDOUT])
    pictures = draw_pictures(out / "run", out / "predictions", cases, out / "pictures")

    print(format_summary(summary))
    dice = {r: round(summary["cases"][0][f"{r}_dice"], 3) for r in ("wt", "tc", "et")}
    print("held-out case", HOLDOUT, "Dice", dice)
    for path in [store, *predictions, metrics, *pictures]:
        print("wrote", path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("braintseg-demo-api"))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    main(args.out, args.epochs, args.overrides)
