"""What the four analyses share: their options, opening the model, the store and the networks,
the windows of a recording, and writing ``report.md``, ``results.json``, tables and figures.

Every analysis claims ``--out`` first (a lock, and no earlier output replaced without
``--overwrite``), checks its inputs (the networks, the grouping, the regions) before any heavy
work, computes everything in memory, and only then writes, each file atomically and
``report.md`` last; a refused or failed run leaves no new folder behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainlm.data import open_store
from brainlm.data.maps import atlas_space, surface_figure, write_region_map
from brainlm.distributed import DeviceOptions, resolve_device, resolve_precision
from brainlm.downstream import check_regions, load_initial, load_model, open_recordings
from brainlm.errors import UserError
from brainlm.report import Report as _Writer
from brainlm.io import output_folder
from brainlm.options import ModelOptions, at_least, option, positive

from .networks import BUNDLED_NETWORKS, Networks, resolve_networks

__all__ = ["AnalysisOptions", "Analysis", "open_analysis", "Report", "check_column"]


@dataclass(kw_only=True)
class AnalysisOptions(DeviceOptions, ModelOptions):
    """What every analysis takes: a model, a store, the networks of its regions, an output folder."""

    checkpoint: str = option(help="model folder (ours, original BrainLM, ViT-MAE, a training run) or hub id",
                             positional=True)
    store: str = option(help="store folder (brainlm prepare)", positional=True)
    out: str = option(help="output folder: report.md, results.json, tables and figures")
    networks: str | None = option(
        None, "networks of the regions: a table (region index or name -> network), a network label image "
        f"(.nii/.nii.gz) on the store's atlas grid, or {', '.join(BUNDLED_NETWORKS)} (the 94 AAL2 demo regions in "
        "anatomical systems); surface stores: yeo7, yeo17, cole-anticevic-networks or a .dlabel.nii / .label.gii "
        "network map (majority per parcel); 'atlas': from region names such as 7Networks_LH_Vis_1; default: from "
        "such names, else estimated from the training split's connectivity", group="networks")
    network_names: tuple[str, ...] = option((), "names of a label image's networks, in label order", group="networks")
    atlas_image: str | None = option(None, "label image of the store's atlas, for a --networks label image when "
                                     "the store does not name one", group="networks")
    num_networks: int = option(7, "networks to estimate without --networks (the most: fewer when k-means leaves a "
                               "one-region network)", check=at_least(2), group="networks")
    split: str | None = option(None, "store split to analyse: train, validation or test (default: every recording)")
    batch_size: int = option(32, "windows per forward pass", check=positive)
    bootstrap: int = option(1000, "resamples (of subjects, or of regions) for the 95% intervals", check=at_least(0))
    seed: int = option(0, "seed of permutations, resamples, folds and clustering")
    overwrite: bool = option(False, "replace the outputs of an earlier run in --out")
    figures: bool = option(True, "draw the figures (--no-figures: the report and tables only)")
    progress: bool = option(True, "progress bars", cli=False)
    echo: bool = option(True, "print the headline lines at the end", cli=False)


@dataclass
class Analysis:
    """An opened analysis: the model, the store, its recordings and networks, the output folder."""

    options: AnalysisOptions
    model: object
    store: object
    recordings: object
    networks: Networks
    out: Path
    initial: object = None  # brainlm.downstream.Initial: the same model before any training step
    started: float = field(default_factory=time.perf_counter)

    @property
    def window(self) -> int:
        return int(self.model.window_length)

    @property
    def dtype(self):
        return resolve_precision(self.options.precision, next(self.model.parameters()).device)

    def report(self, title: str) -> "Report":
        o = self.options
        header = [f"Model `{o.checkpoint}` on the store `{o.store}` "
                  f"({'every recording' if o.split is None else f'the {o.split} split'}: {len(self.recordings)} "
                  f"recordings of {len({m['subject_id'] for m in self.recordings.meta})} subjects, "
                  f"{self.store.num_regions} regions), windows of {self.window} timepoints.",
                  self.networks.note()]
        if self.initial is not None:
            header.append(f"Beside the model, the same model at initialisation (no training step), so that what "
                          f"training added is told from what initialisation gave: {self.initial.description}.")
        return Report(title, header, self)


@contextmanager
def open_analysis(options: AnalysisOptions, outputs: list[str], *,
                  check: Callable[[object, Networks], None] | None = None) -> Iterator[Analysis]:
    """Claim ``--out``, resolve the networks, run ``check(store, networks)``, load the model.

    Args:
        outputs: the files the analysis writes (besides ``report.md``, ``results.json``, ``networks.tsv``).
        check: the analysis's own input checks, run before the model is loaded.
    """

    store = open_store(options.store)
    recordings = open_recordings(store, options.split)
    if not len(recordings):
        raise UserError(f"{store.path}: no recordings in split {options.split!r} (--split)")
    with output_folder(options.out, [*outputs, "report.md", "results.json", "networks.tsv"],
                       overwrite=options.overwrite) as out:
        networks = resolve_networks(options.networks, store, atlas_image=options.atlas_image,
                                    network_names=options.network_names, num_networks=options.num_networks,
                                    seed=options.seed, progress=options.progress)
        if check is not None:
            check(store, networks)
        model = load_model(options.checkpoint, map_location=resolve_device(options.device),
                           trust_unverified=options.trust_unverified).eval()
        check_regions(model, store.num_regions, str(store.path))
        initial = load_initial(options.checkpoint, model, seed=options.seed)
        yield Analysis(options, model, store, recordings, networks, out, initial)


def check_column(store, column: str, flag: str) -> None:
    """Refuse a phenotype column the store does not have."""
    if column not in store.recordings.columns or column in ("split", "shard", "row"):
        raise UserError(f"{flag} {column!r}: {store.path} has no such phenotype column "
                        f"(it has {', '.join(store.phenotype_columns) or 'none'})")


class Report(_Writer):
    """``report.md``, ``report.html`` and ``results.json`` of one analysis (:class:`brainlm.report.Report`),
    with its tables and figures, written last."""

    def __init__(self, title: str, header: list[str], analysis: Analysis):
        super().__init__(title, header, {
            "analysis": title, "options": analysis.options.to_dict(),
            "networks": {"source": analysis.networks.source, "data_derived": analysis.networks.data_derived,
                         "names": list(analysis.networks.names)},
            "initialisation": analysis.initial.to_dict() if analysis.initial is not None else None})
        self.tables["networks.tsv"] = analysis.networks.table(analysis.store.region_names)
        self.maps: dict[str, dict] = {}  # stem -> the region maps written beside the report
        self.analysis = analysis

    def figure(self, name: str, caption: str, draw: Callable[[], object], *, tight: bool = True) -> None:
        """Add the figure ``draw()`` makes, unless figures are off (``tight=False`` for glass brains,
        whose axes tight_layout cannot place)."""
        if self.analysis.options.figures:
            fig = draw()
            if fig is not None:  # None: nothing to draw (a surface figure on a mesh we do not know)
                super().figure(name, caption, fig, tight=tight, dpi=80)

    def region_map(self, stem: str, maps: dict, caption: str, *, diverging: bool = False) -> None:
        """Per-region values (name -> ``(R,)``) as an image in the store's atlas space, named in the report and
        in ``results.json["region_maps"]``; on a surface store also drawn on the surface (:mod:`brainlm.data.maps`)."""

        space, why = atlas_space(self.analysis.store)
        values = {name: [float(v) for v in np.asarray(m, float)] for name, m in maps.items()}
        if space is None:
            self.paragraph(f"Map: none written; {why}.")
            self.results.setdefault("region_maps", {})[stem] = {"file": None, "note": why, "maps": values}
            return
        name = f"{stem}{space.suffix}"
        kind = "CIFTI dense scalar" if space.kind == "surface" else "NIfTI"
        self.maps[stem] = {"space": space, "maps": maps}
        self.paragraph(f"Map: `{name}` ({kind}, {', '.join(maps)}; every "
                       f"{'grayordinate' if space.kind == 'surface' else 'voxel'} of a region takes its value).")
        self.results.setdefault("region_maps", {})[stem] = {"file": name, "format": kind, "atlas": space.source,
                                                            "maps": values}
        if space.kind == "surface":
            first = next(iter(maps))
            self.figure(f"{stem}_surface.png", f"{caption} on the surface",
                        lambda: surface_figure(space, np.asarray(maps[first], float), f"{first}", diverging=diverging),
                        tight=False)

    def finish(self) -> dict:
        """Write everything, print the headline lines (unless ``echo`` is off); returns ``results.json``'s content."""
        self.write()
        if self.analysis.options.echo:
            for line in self.printed:
                print(line)
        return self.results

    def write(self, out=None, name: str = "report") -> Path:
        """Tables, figures and ``results.json``, then ``report.md`` and ``report.html`` (each atomically)."""
        seconds = time.perf_counter() - self.analysis.started
        self.results["seconds"] = round(seconds, 1)
        out = self.analysis.out if out is None else Path(out)
        for stem, entry in self.maps.items():
            write_region_map(entry["space"], entry["maps"], out / stem)
        self.results["headline"] = self.printed
        self.paragraph(f"Wall time: {seconds:.1f} s.")
        return super().write(out, name)
