"""fd.json is read like a manifest: bounded, JSON only, every field fd uses checked by type,
every problem named at once; what fd writes always reads back."""

from __future__ import annotations

import json
import os

import pytest

from fdcli.meta import FD_META, MAX_META_BYTES, FdMeta, MetaError, read_fd_meta, write_fd_meta

from .helpers import fd


def test_what_fd_writes_reads_back_with_its_schema_version(tmp_path):
    meta = {"stage": "train-specialist", "client_id": "hospital-a", "task": "classification",
            "label_names": ["a", "b"], "label_histogram": {"a": 3, "b": 0}, "round": 2,
            "metrics": {"train_loss": 0.1}, "config": {"seed": 0}, "note": "kept as is"}
    write_fd_meta(tmp_path, meta)
    assert read_fd_meta(tmp_path) == {"schema_version": 1, **meta}
    assert FdMeta.read(tmp_path).task == "classification"
    assert read_fd_meta(tmp_path / "elsewhere") == {}  # a folder fd did not write


def test_fd_refuses_to_write_a_bad_fd_json(tmp_path):
    with pytest.raises(MetaError, match="field 'client_id': expected a non-empty string"):
        write_fd_meta(tmp_path, {"client_id": ""})
    assert not (tmp_path / FD_META).exists()


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, found list"),
    (json.dumps({"task": "regression"}), "field 'task': expected a task fd knows"),
    (json.dumps({"label_names": "abc", "round": 0, "train_examples": -1}),
     "field 'label_names': expected a list of strings, found 'abc'; field 'train_examples': "
     "expected a count, found -1; field 'round': expected a round number (1 or more), found 0"),
    (json.dumps({"client_id": "x" * 5000}), "field 'client_id': expected a non-empty string"),
    (json.dumps({"schema_version": 9}), "field 'schema_version': expected one of [1], found 9"),
    (json.dumps({"label_histogram": {"a": "many"}}), "field 'label_histogram': expected an "
                                                     "object of label name -> count"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
])
def test_a_hostile_fd_json_is_refused_by_field(tmp_path, content, message):
    (tmp_path / FD_META).write_text(content)
    with pytest.raises(MetaError) as info:
        read_fd_meta(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / FD_META}: ")
    assert message in str(info.value)


def test_size_and_file_type_are_checked_before_parsing(tmp_path):
    (tmp_path / FD_META).write_bytes(b" " * (MAX_META_BYTES + 1))
    with pytest.raises(MetaError, match="more than the 4,194,304 an fd.json may have"):
        read_fd_meta(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / "target.json").write_text("{}")
    os.symlink(tmp_path / "target.json", other / FD_META)
    with pytest.raises(MetaError, match="not a regular file"):
        read_fd_meta(other)


def test_the_command_line_reports_a_hostile_fd_json_as_one_message(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / FD_META).write_text(json.dumps({"task": "\x1b[31mevil", "client_id": 7}))
    (tmp_path / "proxy.csv").write_text("text\nhello\n")
    result = fd("emit-logits", model, tmp_path / "proxy.csv", "--out", tmp_path / "b")
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert message.startswith(f"error: {model / FD_META}: field 'client_id': expected a "
                              "non-empty string, found 7; field 'task': expected a task fd "
                              "knows (fdcli.tasks.TASKS), found '\\x1b[31mevil'")
    assert "\x1b" not in result.output and not (tmp_path / "b").exists()
