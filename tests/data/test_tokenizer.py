"""Loading and training tokenizers; special ids; bad tokenizer files."""

import pytest

from rafale.data.tokenizer import load_tokenizer, train_tokenizer
from rafale.errors import DataError
from tests.data.conftest import sentences


@pytest.mark.parametrize("type, specials", [("bpe", ["<|endoftext|>", "<|pad|>"]),
                                            ("wordpiece", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
                                            ("unigram", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])])
def test_train_each_type_is_deterministic_and_loads(tmp_path, type, specials):
    docs = sentences(200)
    a = train_tokenizer(docs, type, 300, 1, specials)
    b = train_tokenizer(docs, type, 300, 1, specials)
    if type == "bpe":  # the WordPiece and Unigram trainers break ties in hash order (see tokenizer.py)
        assert a.to_str() == b.to_str()
    assert a.get_vocab_size() == b.get_vocab_size()
    a.save(str(tmp_path / "tokenizer.json"))
    info = load_tokenizer(tmp_path)  # a directory holding tokenizer.json
    assert info.tokenizer.id_to_token(info.eos_id) in ("<|endoftext|>", "[SEP]")
    assert info.tokenizer.id_to_token(info.pad_id) in ("<|pad|>", "[PAD]")
    assert set(info.special_ids()) == {info.tokenizer.token_to_id(t) for t in specials}
    assert "eos" in info.describe()


def test_invalid_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_missing_path_and_offline_hub_id(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "nope" / "tokenizer.json")
    with pytest.raises(DataError, match=r"hub id 'someone/tok'.*huggingface-cli download"):
        load_tokenizer("someone/tok")
