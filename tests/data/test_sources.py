"""Every source type, read from files the test writes, and how splits are made."""

import json

import pytest

from rafale.data import sources
from rafale.errors import DataError
from tests.data.conftest import data_cfg, sentences, write_jsonl


def load(**kw):
    cfg = data_cfg(**kw)
    return sources.load_splits(cfg, [cfg.text_field])


def test_txt_paragraphs_and_whole_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\nstill one\n\ntwo\n\n\nthree\n")
    s = load(source=str(tmp_path / "a.txt"), eval_split=0)
    assert s["train"]["text"] == ["one\nstill one", "two", "three"]
    s = load(source=str(tmp_path / "a.txt"), eval_split=0, txt_document="file")
    assert s["train"]["text"] == ["one\nstill one\n\ntwo\n\n\nthree\n"]


def test_list_glob_and_folder(tmp_path):
    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text(f"doc {i}\n")
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    files = [str(tmp_path / "d0.txt"), str(tmp_path / "d2.txt")]
    assert load(source=files, eval_split=0)["train"]["text"] == ["doc 0", "doc 2"]
    assert load(source=str(tmp_path / "d*.txt"), eval_split=0)["train"]["text"] == ["doc 0", "doc 1", "doc 2"]
    assert load(source=str(tmp_path), eval_split=0)["train"]["text"] == ["doc 0", "doc 1", "doc 2"]


def test_jsonl_json_parquet_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rows = [{"body": t, "n": i} for i, t in enumerate(["alpha", "beta", "gamma"])]
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "a.parquet")
    pcsv.write_csv(table, tmp_path / "a.csv")
    for suffix in ("jsonl", "json", "parquet", "csv"):
        got = load(source=str(tmp_path / f"a.{suffix}"), text_field="body", eval_split=0)
        assert got["train"]["body"] == ["alpha", "beta", "gamma"], suffix


def test_save_to_disk_dataset_dict_keeps_its_splits(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "c d", "e f"]}),
                               "validation": datasets.Dataset.from_dict({"text": ["g h"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    s = load(source=str(tmp_path / "dd"))
    assert s["train"]["text"] == ["a b", "c d", "e f"] and s["eval"]["text"] == ["g h"]
    datasets.Dataset.from_dict({"text": ["x y"] * 10}).save_to_disk(str(tmp_path / "one"))
    s = load(source=str(tmp_path / "one"), eval_split=0.2)
    assert len(s["train"]["text"]) == 8 and len(s["eval"]["text"]) == 2
    with pytest.raises(DataError, match="data.eval_split_name: 'dev' is not a split.*train, validation"):
        load(source=str(tmp_path / "dd"), eval_split_name="dev")


def test_local_files_named_after_splits(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "t1"}, {"text": "t2"}])
    write_jsonl(tmp_path / "validation.jsonl", [{"text": "v1"}])
    s = load(source=str(tmp_path))
    assert s["train"]["text"] == ["t1", "t2"] and s["eval"]["text"] == ["v1"]


def test_seeded_split_and_shuffle(tmp_path):
    docs = sentences(40)
    (tmp_path / "a.txt").write_text("\n\n".join(docs))
    a = load(source=str(tmp_path / "a.txt"), eval_split=0.1, seed=1)
    assert a == load(source=str(tmp_path / "a.txt"), eval_split=0.1, seed=1)
    assert len(a["eval"]["text"]) == 4 and sorted(a["train"]["text"] + a["eval"]["text"]) == sorted(docs)
    assert a != load(source=str(tmp_path / "a.txt"), eval_split=0.1, seed=2)
    sh = load(source=str(tmp_path / "a.txt"), eval_split=0, shuffle=True, seed=3)
    assert sh["train"]["text"] != docs and sorted(sh["train"]["text"]) == sorted(docs)


def test_synthetic():
    s = load(source="synthetic:stories", max_documents=20, eval_split=0.1)
    assert len(s["train"]["text"]) == 18 and len(s["eval"]["text"]) == 2


def test_hub_offline_names_the_id_and_the_local_way():
    with pytest.raises(DataError, match=r"no local path 'someone/stories'.*hub dataset.*save_to_disk"):
        load(source="someone/stories")


@pytest.mark.parametrize("make, pattern", [
    (lambda p: str(p / "missing.txt"), r"'.*missing.txt' does not exist"),
    (lambda p: str(p / "*.nothing"), r"glob .* matches no"),
    (lambda p: (p / "empty.txt").write_text("\n\n") and str(p / "empty.txt"), "holds no text"),
    (lambda p: (p / "x.bin").write_text("a") and str(p / "x.bin"), "suffix '.bin'"),
])
def test_bad_sources(tmp_path, make, pattern):
    with pytest.raises(DataError, match=pattern):
        load(source=make(tmp_path))


def test_missing_field_names_the_fields_that_exist(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"body": "x", "id": 1}])
    with pytest.raises(DataError, match=r"a.jsonl: line 1: no field 'text'.*found: body, id"):
        load(source=str(tmp_path / "a.jsonl"))


def test_non_utf8_names_file_and_byte(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello\n\nw\xffrld\n")
    with pytest.raises(DataError, match=r"a.txt: not UTF-8 at byte 8"):
        load(source=str(tmp_path / "a.txt"))


def test_fingerprint_stat_and_content(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("abc\n")
    stat = sources.fingerprint(data_cfg(source=str(f)))
    content = sources.fingerprint(data_cfg(source=str(f), fingerprint="content"))
    import os

    os.utime(f, ns=(1, 1))  # same bytes, new mtime
    assert sources.fingerprint(data_cfg(source=str(f))) != stat
    assert sources.fingerprint(data_cfg(source=str(f), fingerprint="content")) == content
    assert sources.fingerprint(data_cfg(source="a/b")) != sources.fingerprint(
        data_cfg(source="a/b", hub_revision="v2"))
