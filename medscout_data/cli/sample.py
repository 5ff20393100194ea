"""`medscout-data sample`: procedural sample sources in the real layouts."""

from __future__ import annotations

from pathlib import Path

import click

from medscout_data.cli.options import force_option

SOURCE_NAMES = ("totalseg-ct", "totalseg-mri", "mimic-cxr-jpg", "mimic-cxr")


@click.command(short_help="Write procedural sample sources (synthetic).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write into.")
@click.option(
    "--subjects", type=click.IntRange(min=2), default=10, show_default=True, help="Subjects per source."
)
@click.option(
    "--size",
    type=click.IntRange(min=32),
    default=128,
    show_default=True,
    help="Image width in pixels (512 is realistic).",
)
@click.option(
    "--slices",
    type=click.IntRange(min=4),
    default=40,
    show_default=True,
    help="Slices per CT/MRI volume (300 is realistic).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, identical files.")
@click.option(
    "--source",
    "sources",
    type=click.Choice(SOURCE_NAMES),
    multiple=True,
    help="Write only these trees (repeatable). Default: all four.",
)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@force_option
def sample(
    out: str,
    subjects: int,
    size: int,
    slices: int,
    seed: int,
    sources: tuple[str, ...],
    workers: int,
    force: bool,
) -> None:
    """Write SYNTHETIC sample sources in the on-disk layouts of TotalSegmentator
    (CT and MRI NIfTI + meta.csv), MIMIC-CXR-JPG and MIMIC-CXR DICOM.

    The anatomy is a labelled phantom, not patient data; it is structured so
    that crops, jigsaws and cut-paste are meaningful, and scales to realistic
    sizes (--size 512 --slices 300) for benchmarks. Each X-ray subject has 1-3
    studies with a frontal view each (half with a lateral too): about two
    frontal images per subject, so `--source mimic-cxr-jpg --subjects 6000
    --size 512` feeds the paper's 12,000 X-ray items per cell. Same seed,
    identical files, for any --workers. A folder or file in OUT that sample did
    not write is never replaced (--force deletes it, naming it).
    """
    from medscout_data.errors import StageError
    from medscout_data.owned import OwnedFolder
    from medscout_data.sample import write_samples

    try:
        with OwnedFolder(Path(out), "sample", force) as folder:
            folder.claim("README.txt")
            for name in sources or SOURCE_NAMES:
                folder.claim_tree(name)
            written = write_samples(Path(out), subjects, size, slices, seed, sources or SOURCE_NAMES, workers)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    for name, folder in written.items():
        click.echo(f"{name}: {folder}")
