import pytest


@pytest.fixture(scope="session")
def lm_tokenizer(tmp_path_factory):
    """A 300-piece SentencePiece BPE trained on the grammar corpus of _lm_data (HF folder)."""
    from ._lm_data import train_tokenizer

    return train_tokenizer(tmp_path_factory.mktemp("lm_tok"))
