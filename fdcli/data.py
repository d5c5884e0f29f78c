"""Local datasets: loading, column and label resolution, and the proxy fingerprint.

fd reads what `datasets` reads from local paths: csv, json/jsonl, parquet and text files, an
imagefolder directory, or a folder written by ``save_to_disk``. Nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import FdError

FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json",
                 ".parquet": "parquet", ".txt": "text"}
TEXT_COLUMNS = ("text", "sentence", "content", "document")
IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "target", "class")


class DataError(FdError):
    """A dataset that fd cannot use as given: missing file or column, unknown label, empty."""


@dataclass
class DataSpec:
    """What a dataset holds for a classification task."""

    kind: str                      # "text" or "image"
    input_column: str
    label_column: str | None       # None when the dataset has no labels (a proxy set may not)
    label_names: list[str] | None  # the label space, in id order

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "input_column": self.input_column,
                "label_column": self.label_column, "label_names": self.label_names}


def load_local(path: str | os.PathLike, split: str | None = None, *,
               whole_text_files: bool = False):
    """A ``datasets.Dataset`` from a local file or folder (see the module docstring).
    A .txt file gives one example per line, or one per file with ``whole_text_files``."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; expected a csv, json/jsonl, parquet "
                        "or text file, an imagefolder, or a save_to_disk folder")
    datasets.disable_progress_bars()
    try:
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
                ds = datasets.load_from_disk(str(path))
            else:
                ds = datasets.load_dataset("imagefolder", data_dir=str(path))
        else:
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{path}: unknown file type {path.suffix!r}; expected one of "
                                f"{sorted(FILE_BUILDERS)}, an imagefolder or a save_to_disk folder")
            kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            if builder == "text" and whole_text_files:
                kwargs = {"sample_by": "document"}
            ds = datasets.load_dataset(builder, data_files=str(path), **kwargs)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types for unreadable input
        if "corresponds to no data" in str(exc):  # a file with a header and no rows
            raise DataError(f"{path}: the dataset is empty; expected at least one example") \
                from None
        raise DataError(f"{path}: could not be read as a dataset ({type(exc).__name__}: "
                        f"{exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        choice = split or ("train" if "train" in ds else names[0] if len(names) == 1 else None)
        if choice not in ds:
            raise DataError(f"{path}: holds splits {names}; choose one with --split")
        ds = ds[choice]
    if len(ds) == 0:
        raise DataError(f"{path}: the dataset is empty; expected at least one example")
    return ds


def pick_column(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str,
          where: str, option: str) -> str | None:
    if given is not None:
        if given not in columns:
            raise DataError(f"{where}: {what} column {given!r} not found; the dataset has "
                            f"columns {list(columns)} (set {option})")
        return given
    return next((c for c in candidates if c in columns), None)


def resolve(ds, where: str, *, text_column: str | None = None,
            image_column: str | None = None, label_column: str | None = None,
            label_names: Sequence[str] | None = None, need_labels: bool = True) -> DataSpec:
    """Find the input and label columns and the label space of ``ds``.

    ``label_names``, when given (from a model or a bundle), is the label space the data must
    fit: string labels are looked up in it and integer labels must index it.
    """
    import datasets

    cols = list(ds.column_names)
    image = pick_column(cols, image_column, IMAGE_COLUMNS, "image", where, "--image-column")
    if image is None and text_column is None:
        image = next((c for c in cols if isinstance(ds.features[c], datasets.Image)), None)
    text = None if image else pick_column(cols, text_column, TEXT_COLUMNS, "text", where,
                                    "--text-column")
    if image is None and text is None:
        raise DataError(f"{where}: no input column found; expected a text column (one of "
                        f"{list(TEXT_COLUMNS)}) or an image column (one of "
                        f"{list(IMAGE_COLUMNS)}), found {cols}; set --text-column or "
                        "--image-column")
    label = pick_column(cols, label_column, LABEL_COLUMNS, "label", where, "--label-column")
    if label is None and need_labels:
        raise DataError(f"{where}: no label column found; expected one of "
                        f"{list(LABEL_COLUMNS)}, found {cols}; set --label-column")
    names = list(label_names) if label_names is not None else None
    if label is not None:
        feature = ds.features[label]
        if isinstance(feature, datasets.ClassLabel):
            own = list(feature.names)
            if names is not None and own != names:
                raise DataError(f"{where}: label space {own} differs from the expected "
                                f"{names}")
            names = own
        else:
            values = ds[label]
            if names is None:
                if all(isinstance(v, str) for v in values):
                    names = sorted(set(values))
                elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                    names = [str(i) for i in range(max(values) + 1)]
                else:
                    raise DataError(f"{where}: column {label!r} must hold strings or integers")
            known = set(names)

            def fits(v) -> bool:
                if isinstance(v, str):
                    return v in known
                return isinstance(v, int) and 0 <= v < len(names)

            bad = sorted({str(v) for v in values if not fits(v)})
            if bad:
                raise DataError(f"{where}: column {label!r} has label(s) {bad[:5]} not in the "
                                f"label space {names}")
    return DataSpec("image" if image else "text", image or text, label, names)


def label_ids(ds, spec: DataSpec) -> list[int]:
    """The label of every example as an index into ``spec.label_names``."""
    values = ds[spec.label_column]
    index = {n: i for i, n in enumerate(spec.label_names)}
    return [index[v] if isinstance(v, str) else int(v) for v in values]


def fingerprint(ds, spec: DataSpec) -> str:
    """sha256 over the inputs in order (texts, or image bytes), independent of labels: two
    institutions holding the same proxy set get the same fingerprint."""
    h = hashlib.sha256(f"{spec.kind}:{len(ds)}".encode())
    column = ds.select_columns([spec.input_column])
    if spec.kind == "image":
        import datasets

        column = column.cast_column(spec.input_column, datasets.Image(decode=False))
    for row in column:
        value = row[spec.input_column]
        if spec.kind == "image":
            data = value.get("bytes") or Path(value["path"]).read_bytes()
            h.update(len(data).to_bytes(8, "little") + data)
        else:
            data = str(value).encode()
            h.update(len(data).to_bytes(8, "little") + data)
    return "sha256:" + h.hexdigest()


def to_rgb(image) -> Any:
    """A PIL image in RGB, from a PIL image or a datasets image dict."""
    from PIL import Image

    if isinstance(image, dict):
        image = Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else \
            Image.open(image["path"])
    return image.convert("RGB")
