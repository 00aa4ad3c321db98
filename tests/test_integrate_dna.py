"""DNA helpers and embed-dna with a tiny randomly initialised model built here (nothing downloaded)."""

import numpy as np
import pytest
import torch

from brainlm.cli import main
from brainlm.integrate import (
    average_strands,
    embed_dna,
    read_embedding_table,
    read_fasta,
    reverse_complement,
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tokenizers import Regex, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Split
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_dna_model")
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "A", "C", "G", "T", "N"])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Split(Regex("."), behavior="isolated")  # one token per nucleotide
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "seqs.fa"
    path.write_text(">sub-1|geneA some description\nACGTAC\nGGTN\n>sub-2|geneA\nTTTTGCA\n>sub-1|geneB\nacgt\n")
    return path


def test_reverse_complement():
    assert reverse_complement("ACGTN") == "NACGT"
    assert reverse_complement("aacG") == "Cgtt"
    assert reverse_complement(reverse_complement("GATTACA")) == "GATTACA"
    with pytest.raises(ValueError, match="not a DNA sequence"):
        reverse_complement("ACGX")


def test_average_strands():
    np.testing.assert_allclose(average_strands([[1.0, 2.0]], [[3.0, 4.0]]), [[2.0, 3.0]])
    with pytest.raises(ValueError, match="differ in shape"):
        average_strands(np.ones((2, 3)), np.ones((2, 4)))


def test_read_fasta(fasta, tmp_path):
    assert read_fasta(fasta) == [("sub-1|geneA", "ACGTACGGTN"), ("sub-2|geneA", "TTTTGCA"), ("sub-1|geneB", "acgt")]
    (tmp_path / "bad.fa").write_text("ACGT\n")
    with pytest.raises(ValueError, match="before the first '>'"):
        read_fasta(tmp_path / "bad.fa")


def test_embed_dna_is_strand_symmetric(tiny_model, tmp_path):
    (tmp_path / "pair.fa").write_text(">fwd\nGATTACAGG\n>rev\n" + reverse_complement("GATTACAGG") + "\n")
    ids, names, X = embed_dna(tiny_model, tmp_path / "pair.fa", batch_size=2, progress=False)
    assert X.shape == (2, 16) and X.dtype == np.float32 and np.isfinite(X).all()
    np.testing.assert_allclose(X[0], X[1], atol=1e-5)
    _, _, X1 = embed_dna(tiny_model, tmp_path / "pair.fa", reverse_complement_average=False, progress=False)
    assert not np.allclose(X1[0], X1[1], atol=1e-3)


def test_padding_does_not_change_embeddings(tiny_model, fasta):
    _, _, batched = embed_dna(tiny_model, fasta, batch_size=3, progress=False)
    _, _, single = embed_dna(tiny_model, fasta, batch_size=1, progress=False)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_embed_dna_cli_writes_a_subject_table(tiny_model, fasta, tmp_path):
    out = tmp_path / "dna.parquet"
    assert main(["embed-dna", "--model", str(tiny_model), "--fasta", str(fasta), "--out", str(out), "--id-sep", "|"]) == 0
    ids, X = read_embedding_table(out)  # the two sequences of sub-1 are averaged; "sub-" is dropped on reading
    assert ids.tolist() == ["1", "2"] and X.shape == (2, 16)


def test_missing_model_folder(tmp_path, fasta, capsys):
    with pytest.raises(FileNotFoundError, match="no Hugging Face model folder"):
        embed_dna(tmp_path / "nope", fasta)
    assert main(["embed-dna", "--model", str(tmp_path), "--fasta", str(fasta), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "config.json missing" in capsys.readouterr().err
