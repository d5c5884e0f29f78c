"""Loading local datasets in every supported form, and resolving columns and labels."""

from __future__ import annotations

import json

import pytest

from fdcli.data import DataError, fingerprint, label_ids, load_local, resolve

ROWS = [{"sentence": "good day", "target": "pos"}, {"sentence": "bad day", "target": "neg"},
        {"sentence": "fine day", "target": "pos"}]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_tabular_formats(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix in (".csv", ".tsv"):
        sep = "," if suffix == ".csv" else "\t"
        path.write_text("sentence" + sep + "target\n" + "".join(
            f"{r['sentence']}{sep}{r['target']}\n" for r in ROWS))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    else:
        import datasets

        datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    ds = load_local(path)
    spec = resolve(ds, str(path))
    assert (spec.kind, spec.input_column, spec.label_column) == ("text", "sentence", "target")
    assert spec.label_names == ["neg", "pos"]
    assert label_ids(ds, spec) == [1, 0, 1]


def test_text_file_has_no_labels(tmp_path):
    path = tmp_path / "proxy.txt"
    path.write_text("one line\nanother line\n")
    ds = load_local(path)
    spec = resolve(ds, str(path), need_labels=False)
    assert spec.input_column == "text" and spec.label_column is None
    with pytest.raises(DataError, match="no label column found"):
        resolve(ds, str(path))


def test_imagefolder_and_fingerprint(tmp_path):
    from PIL import Image

    for label, colour in (("cat", 10), ("dog", 200)):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (4, 4), (colour + i, 0, 0)).save(tmp_path / "imgs" / label /
                                                               f"{i}.png")
    ds = load_local(tmp_path / "imgs")
    spec = resolve(ds, "imgs")
    assert spec.kind == "image" and spec.label_names == ["cat", "dog"]
    fp = fingerprint(ds, spec)
    assert fp == fingerprint(load_local(tmp_path / "imgs"), spec) and fp.startswith("sha256:")
    ds.save_to_disk(str(tmp_path / "saved"))
    again = load_local(tmp_path / "saved")
    assert resolve(again, "saved").label_names == ["cat", "dog"]


def test_fingerprint_depends_on_inputs_and_order_not_labels(tmp_path):
    import datasets

    a = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]})
    b = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [1, 1]})
    c = datasets.Dataset.from_dict({"text": ["y", "x"], "label": [0, 1]})
    spec = resolve(a, "a")
    assert fingerprint(a, spec) == fingerprint(b, spec) != fingerprint(c, spec)


def test_unknown_file_type_and_missing_path(tmp_path):
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        load_local(tmp_path / "data.xlsx")
    with pytest.raises(DataError, match="no such file or folder"):
        load_local(tmp_path / "nope.csv")
