"""Ingest against bad input and faults (issue 14): one clear reason per bad file, nothing partial taken
as whole, workers that die with their parent, only ingest's own files deleted, one ingest per folder."""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image
from test_ingest_volumes import ingest, skips_by_path, torso_phantom, write_volume
from test_ingest_xray import frontal_files, read_csv_gz, rewrite_compressed

from medscout_data.cli import cli
from medscout_data.layout import Layout
from medscout_data.locking import LockError
from medscout_data.recipe import IngestConfig, load_recipe
from medscout_data.sources import IngestError, ensure_catalogue, run_ingest

REPO = Path(__file__).resolve().parent.parent


def recipe_with(**ingest_settings):
    config = dataclasses.replace(IngestConfig(min_body_fraction=0.2, max_size=256), **ingest_settings)
    return dataclasses.replace(load_recipe("sample"), ingest=config)


def xray_ingest(root: Path, out: Path, **settings):
    layout = Layout.at(out)
    report = run_ingest(layout, recipe_with(**settings), "xray", root=root, progress=False)
    return report, pl.read_parquet(layout.catalogue("xray"))


@contextmanager
def read_only(folder: Path):
    """`folder` made unwritable, for root too (the immutable attribute), then restored."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        yield folder
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def patch_nifti(path: Path, edit) -> None:
    """Rewrite a gzipped NIfTI-1 file after `edit(bytearray)` changed its decompressed bytes."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    edit(raw)
    path.write_bytes(gzip.compress(bytes(raw), mtime=0))


# ------------------------------------------------------------------ metadata


def test_meta_csv_that_is_a_directory_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", torso_phantom())
    (tmp_path / "src" / "meta.csv").mkdir()
    report, catalogue, _ = ingest(tmp_path / "src", tmp_path / "out")
    assert skips_by_path(report) == {"meta.csv": "bad-meta"}
    assert "is a directory" in report.skips[0].message and catalogue.height > 0


def test_xray_metadata_that_is_a_directory_is_recorded(sample_sources, tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr"], root)
    (root / "cxr-record-list.csv.gz").unlink()
    (root / "cxr-record-list.csv.gz").mkdir()
    report, catalogue = xray_ingest(root, tmp_path / "out")
    message = next(s.message for s in report.skips if s.reason == "missing-metadata")
    assert "is not a file" in message and catalogue.height > 0


def test_metadata_rows_without_files_are_listed_by_id(sample_sources, tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr-jpg"], root)
    gone = frontal_files(root, ".jpg")[:2]
    for path in gone:
        path.unlink()
    report, _ = xray_ingest(root, tmp_path / "out")
    missing = {s.path: s.message for s in report.skips if s.reason == "missing-file"}
    assert set(missing) == {p.stem for p in gone}
    assert all("no file" in m and "subject" in m for m in missing.values())
    assert report.counts["metadata_rows_without_file"] == 2
    errors = pl.read_parquet(tmp_path / "out" / "catalogue" / "xray" / "errors.parquet")
    assert set(errors.filter(pl.col("reason") == "missing-file")["path"]) == {p.stem for p in gone}


def test_duplicate_metadata_rows_with_conflicting_views_are_a_conflict(sample_sources, tmp_path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr-jpg"], root)
    path = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    metadata = read_csv_gz(path)
    victim = metadata.filter(pl.col("ViewPosition") == "PA").row(0, named=True)
    twin = pl.DataFrame([{**victim, "ViewPosition": "LATERAL"}])
    same = pl.DataFrame([metadata.filter(pl.col("ViewPosition") == "AP").row(0, named=True)])
    buffer = io.BytesIO()
    pl.concat([metadata, twin, same]).write_csv(buffer)
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    report, catalogue = xray_ingest(root, tmp_path / "out")
    conflicts = [s for s in report.skips if s.reason == "metadata-conflict"]
    assert len(conflicts) == 1 and victim["dicom_id"] in conflicts[0].path
    assert "ViewPosition (PA, LATERAL)" in conflicts[0].message
    assert victim["dicom_id"] not in set(catalogue["image_id"])
    assert same["dicom_id"][0] in set(catalogue["image_id"]), "an identical duplicate row is no conflict"


# ---------------------------------------------------------------- X-ray pixels


def test_16_bit_png_saved_as_jpg_is_windowed_not_white(sample_sources, tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr-jpg"], root)
    victim = frontal_files(root, ".jpg")[0]
    eight = np.asarray(Image.open(victim), np.float32)
    sixteen = (eight / 255 * 3500 + 300).astype(np.uint16)  # 12-bit detector values in a 16-bit PNG
    Image.fromarray(sixteen).save(victim, format="PNG")
    report, catalogue = xray_ingest(root, tmp_path / "out")
    row = catalogue.filter(pl.col("image_id") == victim.stem).row(0, named=True)
    from medscout_data.cache import ImageCache

    image = ImageCache(tmp_path / "out" / "cache" / "xray").image(row).astype(np.float32)
    assert (image == 255).mean() < 0.05, "not clipped to white"
    reference = np.asarray(Image.open(sample_sources["mimic-cxr-jpg"] / victim.relative_to(root)))
    shrunk = np.asarray(Image.fromarray(reference).resize(image.shape[::-1]), np.float32)
    assert np.corrcoef(image.ravel(), shrunk.ravel())[0, 1] > 0.98
    assert report.counts["not_jpeg_content_png"] == 1


def test_tiny_xray_is_rejected_below_the_minimum_size(sample_sources, tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr-jpg"], root)
    victim = frontal_files(root, ".jpg")[0]
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16).save(victim, format="JPEG")
    report, catalogue = xray_ingest(root, tmp_path / "out", min_image_size=32)
    reasons = {s.path: s.reason for s in report.skips}
    assert reasons[victim.relative_to(root).as_posix()] == "too-small"
    assert catalogue.height > 0 and min(catalogue["height"].min(), catalogue["width"].min()) >= 32


# -------------------------------------------------------------------- DICOM


def test_pydicom_does_not_print_a_traceback_for_corrupt_compressed_pixels(sample_sources, tmp_path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr"], root)
    victim = frontal_files(root, ".dcm")[0]
    rewrite_compressed(victim, pydicom.uid.RLELossless)  # the built-in RLE decoder fails on it
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        report, _ = xray_ingest(root, tmp_path / "out")
    finally:
        logging.getLogger().removeHandler(handler)
    assert not [r for r in records if r.exc_info], "no log record carries a traceback"
    assert not [r for r in records if r.name.startswith("pydicom")]
    skip = next(s for s in report.skips if s.path == victim.relative_to(root).as_posix())
    assert skip.reason == "corrupt-pixel-data" and "\n" not in skip.message and " at 0x" not in skip.message
    assert "RLE" in skip.message or "segments" in skip.message
    assert logging.getLogger("pydicom").propagate, "pydicom's logger is restored"


def test_dicom_cut_inside_its_header_is_truncated_not_no_pixel_data(sample_sources, tmp_path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr"], root)
    victim = frontal_files(root, ".dcm")[0]
    data = victim.read_bytes()
    pixel_tag = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) PixelData, little endian
    assert pixel_tag > 300
    victim.write_bytes(data[: pixel_tag - 40])  # inside the elements before it
    report, _ = xray_ingest(root, tmp_path / "out")
    skip = next(s for s in report.skips if s.path == victim.relative_to(root).as_posix())
    assert skip.reason == "truncated", skip.message


# -------------------------------------------------------------------- NIfTI


def test_pixdim_zero_takes_the_sform_spacing_or_is_rejected(tmp_path: Path) -> None:
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", torso_phantom(), spacing=(0.8, 0.8, 2.5))
    write_volume(tmp_path / "src" / "s0001" / "ct.nii.gz", torso_phantom(), spacing=(0.8, 0.8, 2.5))
    patch_nifti(
        tmp_path / "src" / "s0000" / "ct.nii.gz", lambda raw: raw.__setitem__(slice(80, 92), bytes(12))
    )

    def no_sform(raw: bytearray) -> None:
        raw[80:92] = bytes(12)
        raw[254:256] = struct.pack("<h", 0)

    patch_nifti(tmp_path / "src" / "s0001" / "ct.nii.gz", no_sform)
    report, catalogue, _ = ingest(tmp_path / "src", tmp_path / "out", crop_to_body=False)
    assert skips_by_path(report)["s0001/ct.nii.gz"] == "bad-spacing"
    assert set(catalogue["source_id"]) == {"s0000"}
    assert catalogue["pixel_spacing_mm"][0] == pytest.approx(0.8, abs=1e-4)  # not 1 mm
    assert catalogue["slice_spacing_mm"][0] == pytest.approx(2.5, abs=1e-4)
    assert np.diff(sorted(catalogue["z_mm"])) == pytest.approx(2.5, abs=1e-4)


def test_header_declaring_4_gib_more_than_the_file_holds_is_truncated(tmp_path: Path) -> None:
    volume = np.zeros((128, 128, 128), np.int16)
    volume[40:90, 30:100, 20:110] = 40
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", volume)

    def declare(raw: bytearray) -> None:  # 2048 x 1024 x 1025 int16 = 2**32 + the real 2**22 bytes
        raw[40:56] = struct.pack("<8h", 3, 2048, 1024, 1025, 1, 1, 1, 1)

    patch_nifti(tmp_path / "src" / "s0000" / "ct.nii.gz", declare)
    report, _, _ = ingest(tmp_path / "src", tmp_path / "out")
    assert skips_by_path(report)["s0000/ct.nii.gz"] == "truncated"
    assert "4,299,161,952" in report.skips[-1].message


def test_valid_multi_member_and_uncompressed_gz_files_are_read(tmp_path: Path) -> None:
    phantom = torso_phantom()
    for subject in ("s0000", "s0001", "s0002"):
        write_volume(tmp_path / "src" / subject / "ct.nii.gz", phantom)
    raw = gzip.decompress((tmp_path / "src" / "s0001" / "ct.nii.gz").read_bytes())
    (tmp_path / "src" / "s0001" / "ct.nii.gz").write_bytes(
        gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])
    )
    (tmp_path / "src" / "s0002" / "ct.nii.gz").write_bytes(raw)  # not compressed at all
    report, catalogue, cache = ingest(tmp_path / "src", tmp_path / "out", drop_duplicates=False)
    assert report.counts["used"] == 3, report.skips
    rows = {(r["source_id"], r["slice_index"]): r for r in catalogue.iter_rows(named=True)}
    for subject in ("s0001", "s0002"):
        assert np.array_equal(cache.image(rows[(subject, 3)]), cache.image(rows[("s0000", 3)])), subject


def test_zero_dimension_has_its_own_reason(tmp_path: Path) -> None:
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", torso_phantom())
    patch_nifti(
        tmp_path / "src" / "s0000" / "ct.nii.gz", lambda raw: raw.__setitem__(slice(46, 48), bytes(2))
    )
    report, _, _ = ingest(tmp_path / "src", tmp_path / "out")
    assert skips_by_path(report)["s0000/ct.nii.gz"] == "zero-dimension"


# ------------------------------------------------------------------ faults


def test_read_only_output_folder_is_a_clear_error(sample_sources, tmp_path: Path) -> None:
    args = ["ingest", "--modality", "ct", "--root", str(sample_sources["totalseg-ct"]), "--quiet"]
    with read_only(tmp_path / "locked"):
        result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "locked")])
    assert result.exit_code == 1
    assert "cannot write here" in result.output and "writable output folder" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def dev_full(path: Path) -> None:
    """Make writes to `path` fail as on a full disk: it becomes a link to /dev/full."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to("/dev/full")


@pytest.mark.parametrize("workers", [1, 2])
def test_full_disk_is_one_clear_error_and_no_catalogue_passes_as_whole(
    sample_sources, tmp_path, workers
) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["totalseg-ct"], root)
    layout, recipe = Layout.at(tmp_path / "out"), recipe_with()
    run_ingest(layout, recipe, "ct", root, workers=workers, progress=False)
    os.utime(root / "s0003" / "ct.nii.gz", ns=(1, 1))  # s0003 must be redone
    target = layout.cache_dir("ct") / "s0003.soft-tissue.stack.tmp"
    dev_full(target)
    with pytest.raises(IngestError, match="No space left on device") as caught:
        run_ingest(layout, recipe, "ct", root, workers=workers, progress=False)
    assert "free some space" in str(caught.value) and "s0003" in str(caught.value)
    assert not layout.catalogue("ct").exists(), "the old catalogue no longer matches the cache"
    report = (layout.catalogue_dir("ct") / "report.json").read_text()
    assert "No space left on device" in report
    target.unlink(missing_ok=True)
    again = run_ingest(layout, recipe, "ct", root, workers=workers, progress=False)
    assert again.counts["units_run"] == 1 and again.counts["units_reused"] == 5
    assert ensure_catalogue(layout, recipe, "ct", root) == layout.catalogue("ct")


def worker_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_exit_when_the_main_process_is_killed(tmp_path: Path) -> None:
    from medscout_data.sample import write_samples

    source = write_samples(
        tmp_path / "src", subjects=8, size=160, slices=60, seed=1, sources=("totalseg-ct",)
    )
    args = [sys.executable, "-m", "medscout_data.cli", "ingest", "--modality", "ct", "--quiet"]
    args += ["--root", str(source["totalseg-ct"]), "--out", str(tmp_path / "out"), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    main = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and main.poll() is None:
        workers = [p for p in worker_pids(main.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
        if len(workers) >= 2:
            break
        time.sleep(0.05)
    assert len(workers) >= 2, "the pool's workers started"
    os.kill(main.pid, signal.SIGKILL)
    main.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if alive(p)], "orphaned workers"


def test_pruning_deletes_only_files_ingest_wrote(sample_sources, tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["totalseg-ct"], root)
    layout, recipe = Layout.at(tmp_path / "out"), recipe_with()
    run_ingest(layout, recipe, "ct", root, progress=False)
    cache, parts = layout.cache_dir("ct"), layout.catalogue_dir("ct") / "parts"
    mine = {cache / "user.npy": b"user data", cache / "notes.txt": b"n", cache / "s9999.mask.stack": b"x"}
    mine[parts / "user.parquet"] = b"not ingest's"
    for path, data in mine.items():
        path.write_bytes(data)
    shutil.rmtree(root / "s0002")  # a unit that is gone: its part and cache files go
    report = run_ingest(layout, recipe, "ct", root, progress=False)
    assert all(path.read_bytes() == data for path, data in mine.items()), "user files untouched"
    assert not list(cache.glob("s0002.*")) and not (parts / "s0002.parquet").exists()
    assert report.counts["parts_removed"] == 1 and report.counts["cache_files_removed"] == 2
    assert (cache / "s0001.soft-tissue.stack").is_file()


def test_a_second_ingest_on_the_same_out_fails_clearly(sample_sources, tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from medscout_data.locking import stage_lock\n"
            "with stage_lock(sys.argv[1], 'ingest', 'medscout-data ingest --modality ct (first)'):\n"
            "    print('held', flush=True); time.sleep(60)\n",
            str(Layout.at(out).catalogue_dir("ct")),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=r"\(first\).*is already writing here"):
            run_ingest(Layout.at(out), recipe_with(), "ct", sample_sources["totalseg-ct"], progress=False)
        assert not Layout.at(out).catalogue("ct").exists()
    finally:
        holder.kill()
        holder.wait()
    run_ingest(Layout.at(out), recipe_with(), "ct", sample_sources["totalseg-ct"], progress=False)
    assert Layout.at(out).catalogue("ct").is_file()
