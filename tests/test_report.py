"""report/show: PNGs from synthetic runs, predictions and cases; orientation; bad folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from braintseg.cli import cli
from braintseg.reporting.figures import (
    EDGES,
    LABEL_COLOURS,
    VIEWS,
    montage,
    source_slices,
    to_display,
    tumour_centre,
)
from braintseg.sources.synthetic import write_case

SHAPE = (40, 44, 28)


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def _colour_pixels(png: np.ndarray, colour: str, tol: float = 0.06) -> int:
    """Pixels showing ``colour`` at alpha 0.5 over a grey level g: pixel = 0.5*c + 0.5*g, so
    pixel - 0.5*c is grey (equal channels) in [0, 0.5].  Plain grey pixels and the legend's
    opaque patches fail this test for a coloured c."""
    r = png[..., :3] - 0.5 * np.array(to_rgb(colour))
    ok = (np.ptp(r, axis=-1) < tol) & (r.min(-1) > -tol) & (r.max(-1) < 0.5 + tol)
    return int(ok.sum())


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report_cases")
    write_case(root, "Brats18_R_1", shape=SHAPE, seed=4)
    write_case(root, "BraTS-GLI-00007-000", shape=SHAPE, seed=5, convention="brats2023",
               affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    return root


def test_training_curves_png(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lines = ["epoch,dice_et,dice_tc,dice_wt,loss,val_dice_et,val_dice_tc,val_dice_wt,val_loss"]
    for e in range(6):
        d = 0.1 + 0.12 * e
        lines.append(f"{e},{d:.3f},{d + .05:.3f},{d + .1:.3f},{1.5 - .2 * e:.3f},"
                     f"{d - .05:.3f},{d:.3f},{d + .05:.3f},{1.6 - .18 * e:.3f}")
    (run / "history.csv").write_text("\n".join(lines) + "\n")
    result = _invoke("report", str(run))
    assert result.exit_code == 0, result.output
    png = imread(run / "training_curves.png")
    assert png.shape[:2] == (420, 1100)
    # the WT curve colour (tab blue) and the ET curve colour (orange) are drawn
    for colour in ("#1f77b4", "#ff7f0e"):
        near = np.abs(png[..., :3] - np.array(to_rgb(colour))).max(-1) < 0.05
        assert near.sum() > 50


def test_history_without_epochs_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "history.csv").write_text("epoch,loss\n")
    result = _invoke("report", str(tmp_path))
    assert result.exit_code == 1 and "no epochs yet" in result.output
    assert "Traceback" not in result.output


def test_prediction_overlays_png(cases: Path, tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    preds.mkdir()
    for seg in sorted(cases.rglob("*seg.nii.gz")):
        img = nib.load(seg)
        lab = np.asarray(img.dataobj).astype(np.uint8)
        lab[lab == 2] = 0  # prediction misses the edema: overlay shows no green there
        nib.save(nib.Nifti1Image(lab, img.affine), preds / f"{seg.parent.name}.nii.gz")
    (preds / "orphan.nii.gz").write_bytes((preds / "Brats18_R_1.nii.gz").read_bytes())
    result = _invoke("report", str(preds), "-t", str(cases), "-o", str(tmp_path / "pics"))
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "pics").glob("*.png"))
    assert written == ["BraTS-GLI-00007-000_overlay.png", "Brats18_R_1_overlay.png"]
    png = imread(tmp_path / "pics" / "Brats18_R_1_overlay.png")
    assert png.shape[0] > 500 and png.shape[1] > 800  # 3 rows x 4 columns
    # red, green and yellow overlays are present; green only in the ground-truth column
    counts = {name: _colour_pixels(png, colour) for name, colour in LABEL_COLOURS.values()}
    assert all(n > 20 for n in counts.values()), counts
    half = int(png.shape[1] * 0.755)  # the prediction column: from 0.04 + 3 * 0.95 / 4
    green = LABEL_COLOURS[2][1]
    assert _colour_pixels(png[:, half:], green) < 0.1 * _colour_pixels(png[:, :half], green)


def test_prediction_folder_needs_truth_and_matching_cases(cases: Path, tmp_path: Path) -> None:
    (tmp_path / "x.nii.gz").write_bytes(next(cases.rglob("*_seg.nii.gz")).read_bytes())
    result = _invoke("report", str(tmp_path))
    assert result.exit_code == 1 and "give -t" in result.output
    result = _invoke("report", str(tmp_path), "-t", str(cases))
    assert result.exit_code == 1 and "none of the 1 predictions" in result.output
    assert "Traceback" not in result.output


def test_report_on_other_folder_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    result = _invoke("report", str(tmp_path))
    assert result.exit_code == 1
    assert "neither a training run" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _invoke("report", str(tmp_path / "missing")).exit_code == 1


def test_show_case_png(cases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _invoke("show", str(cases / "Brats18_R_1"))
    assert result.exit_code == 0, result.output
    with_seg = imread(tmp_path / "Brats18_R_1_show.png")
    bare = tmp_path / "bare"
    shutil.copytree(cases / "Brats18_R_1", bare / "Brats18_R_1")
    (bare / "Brats18_R_1" / "Brats18_R_1_seg.nii.gz").unlink()
    result = _invoke("show", str(bare / "Brats18_R_1"), "-o", str(tmp_path / "b.png"))
    assert result.exit_code == 0, result.output
    without = imread(tmp_path / "b.png")
    assert with_seg.shape[1] == 1300 and without.shape[1] == 1040  # 5 vs 4 columns of 260 px
    assert _colour_pixels(with_seg, LABEL_COLOURS[3][1]) > 20
    assert _colour_pixels(without, LABEL_COLOURS[3][1]) == 0


def test_show_missing_modality_names_it(cases: Path, tmp_path: Path) -> None:
    shutil.copytree(cases / "BraTS-GLI-00007-000", tmp_path / "c")
    (tmp_path / "c" / "BraTS-GLI-00007-000-t1c.nii.gz").unlink()
    result = _invoke("show", str(tmp_path / "c"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "missing modality 't1ce'" in result.output
    result = _invoke("show", str(tmp_path / "nothing"))
    assert result.exit_code == 1 and "does not exist" in result.output


def test_to_display_undoes_the_voxel_order() -> None:
    # the same world image stored L-P-S (BraTS) and R-A-S: both display identically,
    # with spacing permuted alongside when the axes are permuted
    rng = np.random.default_rng(0)
    ras = rng.random((4, 5, 6))
    lps = ras[::-1, ::-1, :]
    a = to_display([ras], np.diag([1.0, 1.0, 1.0, 1.0]), (1, 1, 1))[0][0]
    b = to_display([lps], np.diag([-1.0, -1.0, 1.0, 1.0]), (1, 1, 1))[0][0]
    np.testing.assert_array_equal(a, b)
    permuted = np.array([[0, 0, 2.0, 0], [1.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])
    vol, spacing = to_display([np.zeros((4, 5, 6))], permuted, (1.0, 3.0, 2.0))
    # voxel axes 0, 1, 2 point along world y, z, x → display axes (x, y, z) = voxel (2, 0, 1)
    assert vol[0].shape == (6, 4, 5)
    assert spacing == (2.0, 1.0, 3.0)


def test_tumour_centre_is_the_slice_with_most_voxels() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[2:5, 6, 1:9] = True  # x: 3 slices of 8, y: slice 6, z: 8 slices of 3
    mask[7, 1, 4] = True  # one more voxel: z=4 now holds 4 voxels, the most; x=7, y=1 hold 1
    assert tumour_centre(mask, mask.shape) == (2, 6, 4)
    assert tumour_centre(None, (10, 12, 8)) == (5, 6, 4)


# --------------------------------------------------------------------------- orientation letters


def _spy_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures handed to save_png (which still writes them) by report (curves, show) and
    its volume pictures (overlays)."""
    import braintseg.reporting.report as report
    import braintseg.reporting.volumes as volumes

    figures: list = []
    real = report.save_png

    def spy(fig, path):
        figures.append(fig)
        return real(fig, path)

    monkeypatch.setattr(report, "save_png", spy)
    monkeypatch.setattr(volumes, "save_png", spy)
    return figures


def _check_letters_and_slices(fig, n_columns: int) -> list[str]:
    """Every image panel has its view's four letters; every row names view and slice."""
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 * n_columns
    ylabels = []
    for r, view in enumerate(VIEWS):
        row = panels[r * n_columns:(r + 1) * n_columns]
        for ax in row:
            assert sorted(t.get_text() for t in ax.texts) == sorted(EDGES[view]), view
        ylabels.append(row[0].get_ylabel())
        assert ylabels[-1].startswith(f"{view}\n") and " = " in ylabels[-1]
    return ylabels


def test_overlay_and_show_panels_carry_orientation_letters_and_slice_index(
        cases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _spy_figures(monkeypatch)
    preds = tmp_path / "preds"
    preds.mkdir()
    seg = next(cases.rglob("Brats18_R_1_seg.nii.gz"))
    (preds / "Brats18_R_1.nii.gz").write_bytes(seg.read_bytes())
    assert _invoke("report", str(preds), "-t", str(cases)).exit_code == 0
    assert _invoke("show", str(cases / "Brats18_R_1"), "-o", str(tmp_path / "s.png")
                   ).exit_code == 0
    overlay, show = figures
    labels = _check_letters_and_slices(overlay, 4)
    assert _check_letters_and_slices(show, 5) == labels  # same case, same tumour slices
    # the slice index is the seg's own voxel index with the most tumour voxels
    lab = np.asarray(nib.load(seg).dataobj) > 0
    z = int(np.argmax(lab.sum(axis=(0, 1))))
    assert labels[0] == f"axial\nz = {z}"


def test_source_slices_name_the_source_voxel_for_flipped_and_permuted_axes() -> None:
    shape, voxel = (6, 7, 8), (1, 5, 2)
    permuted = np.array([[0, 0, 2.0, 0], [1.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])
    for affine in (np.eye(4), np.diag([-1.0, -1.0, 1.0, 1.0]), permuted):
        vol = np.zeros(shape, bool)
        vol[voxel] = True
        shown = to_display([vol], affine, (1, 1, 1))[0][0]
        centre = tuple(int(v) for v in np.argwhere(shown)[0])
        names = source_slices(affine, shape, centre)
        for view in VIEWS:
            letter, index = names[view].split(" = ")
            assert int(index) == voxel["xyz".index(letter)], (affine, view, names)
    # permuted: the axial (superior) display axis is voxel axis 1 (world z)
    assert source_slices(permuted, shape, (0, 0, 0))["axial"].startswith("y = ")


def test_letters_match_where_the_patients_left_and_front_are_drawn() -> None:
    # RAS voxel order (identity affine): low x = patient's left, high y = anterior,
    # high z = superior; a bright block there must appear at the L/A, L/S and A/S edges
    vol = np.full((40, 40, 40), 0.2, np.float32)
    vol[:8, 30:, 30:] = 1.0
    (shown,), spacing = to_display([vol], np.eye(4), (1.0, 1.0, 1.0))
    centre = tuple(int(v) for v in np.argwhere(shown == 1.0).mean(0))
    fig = montage([("img", shown, None)], spacing, centre, "t")
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., 0].astype(float) / 255
    height = buf.shape[0]
    for ax, view in zip([a for a in fig.axes if a.images], VIEWS, strict=True):
        box = ax.get_window_extent()
        x0, x1 = int(box.x0) + 2, int(box.x1) - 2
        top, bottom = height - int(box.y1) + 2, height - int(box.y0) - 2
        panel = buf[top:bottom, x0:x1]
        rows, cols = np.nonzero(panel > 0.9)
        _, right, _, top_letter = EDGES[view]
        side = {"axial": "L", "coronal": "L", "sagittal": "A"}[view]  # the block's side
        assert (cols.mean() > panel.shape[1] / 2) == (side == right), view
        assert rows.mean() < panel.shape[0] / 2 and top_letter in ("A", "S"), view


def test_report_takes_a_runs_model_keras_as_its_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch,loss,val_loss\n1,1.0,1.1\n2,0.9,1.0\n")
    (run / "model.keras").write_bytes(b"PK")
    result = _invoke("report", str(run / "model.keras"))
    assert result.exit_code == 0, result.output
    assert (run / "training_curves.png").is_file()
    (run / "last.keras").write_bytes(b"PK")
    result = _invoke("report", str(run / "last.keras"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"run {run / 'last.keras'} is a file; expected a run folder" in result.output


def test_training_curves_title_names_the_run_folders_path(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _spy_figures(monkeypatch)
    run = tmp_path / "cv1" / "run"
    run.mkdir(parents=True)
    (run / "history.csv").write_text("epoch,loss,val_loss\n1,1.0,1.1\n2,0.9,1.0\n")
    assert _invoke("report", str(run)).exit_code == 0
    title = figures[0]._suptitle.get_text()
    assert title.startswith(f"training run {run.resolve()}: 2 epochs"), title
    assert "run run" not in title


def test_training_curves_draw_the_slice_runs_tumour_dice(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An LGG/figshare history has ``dice_tumour``, not WT/TC/ET: its Dice panel is drawn."""
    figures = _spy_figures(monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch,dice_tumour,loss,val_dice_tumour,val_loss\n"
                                     "1,0.2,1.0,0.1,1.1\n2,0.5,0.9,0.4,1.0\n")
    assert _invoke("report", str(run)).exit_code == 0
    dice_axes = figures[0].axes[1]
    labels = [line.get_label() for line in dice_axes.get_lines()]
    assert labels == ["TUMOUR train", "TUMOUR validation"]
    np.testing.assert_allclose(dice_axes.get_lines()[1].get_ydata(), [0.1, 0.4])
