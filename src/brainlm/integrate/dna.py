"""DNA embeddings from a local Hugging Face model folder.

:func:`embed_dna` reads FASTA records, runs each sequence and its reverse complement
through the model, mean-pools the last hidden state over real (non-padding) tokens and
averages the two strands, so the embedding does not depend on which strand the FASTA
happens to list. Only local folders are read (``local_files_only=True``); nothing is
downloaded. Models that need their own code (``trust_remote_code``) are loaded only when
asked to.

Record names map to subject IDs: the first whitespace-separated word of the header,
cut at ``id_sep`` when given (``>sub-01|APOE`` with ``id_sep="|"`` -> ``sub-01``);
the table gets a ``sequence_id`` column with the full word, so several sequences of one
subject are averaged by :func:`~brainlm.integrate.io.read_embedding_table`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainlm.errors import MissingInputError, UserError
from brainlm.io import Embeddings, OutputLock, claim_file, write_embeddings
from brainlm.options import Options, at_least, option, positive

_COMPLEMENT = str.maketrans("ACGTUNacgtun", "TGCAANtgcaan")


def reverse_complement(seq: str) -> str:
    """Reverse complement of a DNA sequence (A<->T, C<->G, N kept, case kept).

    Raises:
        ValueError: characters other than ACGTUN (either case).
    """
    bad = set(seq) - set("ACGTUNacgtun")
    if bad:
        raise UserError(f"not a DNA sequence: unexpected characters {sorted(bad)[:5]}")
    return seq.translate(_COMPLEMENT)[::-1]


def average_strands(forward, reverse) -> np.ndarray:
    """Average forward and reverse-complement embeddings.

    Args:
        forward, reverse: (N, D) embeddings of the same N sequences on each strand.

    Returns:
        (N, D) float32 mean.
    """
    forward, reverse = np.asarray(forward, dtype=np.float64), np.asarray(reverse, dtype=np.float64)
    if forward.shape != reverse.shape:
        raise UserError(
            f"forward and reverse-complement embeddings differ in shape: {forward.shape} vs {reverse.shape}"
        )
    return ((forward + reverse) / 2).astype(np.float32)


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """Read a FASTA file into ``[(name, sequence), ...]`` (name = first word of the header)."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"FASTA file not found: {path}")
    records, name, chunks = [], None, []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if name is not None:
                records.append((name, "".join(chunks)))
            words = line[1:].split()
            if not words:
                raise UserError(f"{path}: FASTA header without a name")
            name, chunks = words[0], []
        else:
            if name is None:
                raise UserError(f"{path}: sequence line before the first '>' header")
            chunks.append(line)
    if name is not None:
        records.append((name, "".join(chunks)))
    if not records:
        raise UserError(f"{path}: no FASTA records")
    return records


def _mean_pool(model, tokenizer, seqs: list[str], max_length: int | None, device) -> np.ndarray:
    import torch

    enc = tokenizer(seqs, return_tensors="pt", padding=True, truncation=max_length is not None, max_length=max_length)
    enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        out = model(**enc)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, L, D)
    mask = enc.get("attention_mask", torch.ones(hidden.shape[:2], device=device)).unsqueeze(-1).to(hidden.dtype)
    return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy()  # (B, D)


def embed_dna(
    model_dir: str | Path,
    fasta: str | Path,
    batch_size: int = 8,
    max_length: int | None = None,
    reverse_complement_average: bool = True,
    id_sep: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    progress: bool = True,
):
    """Embed every FASTA record with a local Hugging Face model.

    Args:
        model_dir: folder with the model's config, weights and tokenizer.
        fasta: FASTA file; see the module docstring for how names become subject IDs.
        batch_size: sequences per forward pass.
        max_length: truncate tokenised sequences to this many tokens (None: no truncation).
        reverse_complement_average: average with the reverse-complement strand.
        id_sep: cut record names at this separator to get the subject ID.
        device: torch device string.
        trust_remote_code: allow the model folder's own Python code (e.g. Caduceus).
        progress: show a tqdm progress bar.

    Returns:
        subject_ids: (N,) str; sequence_ids: (N,) str; X: (N, D) float32.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise MissingInputError(f"no Hugging Face model folder at {model_dir} (config.json missing)")
    records = read_fasta(fasta)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        raise UserError(f"the tokenizer in {model_dir} has no padding token; batching needs one")
    dev = torch.device(device)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True, trust_remote_code=trust_remote_code)
    model = model.to(dev).eval()

    chunks = []
    for start in tqdm(range(0, len(records), batch_size), desc="embed-dna", unit="batch", disable=not progress):
        seqs = [s.upper() for _, s in records[start : start + batch_size]]
        fwd = _mean_pool(model, tokenizer, seqs, max_length, dev)
        if reverse_complement_average:
            rev = _mean_pool(model, tokenizer, [reverse_complement(s) for s in seqs], max_length, dev)
            fwd = average_strands(fwd, rev)
        chunks.append(fwd)
    names = np.array([n for n, _ in records], dtype=str)
    subjects = np.array([n.split(id_sep)[0] if id_sep else n for n in names], dtype=str)
    return subjects, names, np.concatenate(chunks).astype(np.float32)


def write_dna_table(path: str | Path, subject_ids, sequence_ids, X, id_col: str = "subject_id",
                    overwrite: bool = False) -> Path:
    """Write :func:`embed_dna` output as an embedding table (:func:`brainlm.io.write_embeddings`)
    keyed by ``subject_id`` and ``sequence_id``: Parquet, CSV/TSV or ``.npy``."""
    import pandas as pd

    index = pd.DataFrame({id_col: np.asarray(subject_ids, dtype=str), "sequence_id": np.asarray(sequence_ids, dtype=str)})
    write_embeddings(Embeddings(np.asarray(X, dtype=np.float32), index, pooling="dna"), path, overwrite=overwrite)
    return Path(path)


@dataclass(kw_only=True)
class EmbedDNAOptions(Options):
    """Embed FASTA sequences with a local Hugging Face DNA model folder, one row per record."""

    model: str = option(help="local model folder (config, weights, tokenizer)")
    fasta: str = option(help="FASTA file; record names are subject IDs")
    out: str = option(help="output table (.parquet/.csv/.tsv/.npy)")
    overwrite: bool = option(False, "replace an existing --out")
    batch_size: int = option(8, "sequences per forward pass", check=positive)
    max_length: int | None = option(None, "truncate to this many tokens", check=at_least(1, optional=True))
    id_sep: str | None = option(None, "cut record names at this separator to get subject IDs")
    reverse_complement_average: bool = option(True, "do not average with the reverse complement", flag="--no-rc")
    device: str = option("cpu", "torch device")
    trust_remote_code: bool = option(False, "allow the model folder's own code")


def embed_dna_to_table(options: EmbedDNAOptions) -> Path:
    """:func:`embed_dna` followed by :func:`write_dna_table` (the ``brainlm embed-dna`` command)."""
    o = options
    claim_file(o.out, overwrite=o.overwrite)
    with OutputLock(o.out, what="embedding table"):
        path = write_dna_table(o.out, *embed_dna(o.model, o.fasta, batch_size=o.batch_size, max_length=o.max_length,
                                                 reverse_complement_average=o.reverse_complement_average,
                                                 id_sep=o.id_sep, device=o.device,
                                                 trust_remote_code=o.trust_remote_code), overwrite=o.overwrite)
    print(f"wrote {path}")
    return path
