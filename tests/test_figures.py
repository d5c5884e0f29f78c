"""Every measured figure that README.md and docs/ quote comes from a stored results file.

The convention: a measured figure is written as a link to the file it comes from,
``[0.958](benchmarks/results/rounds/sweep.json)`` (``../benchmarks/...`` from docs/), so
that a reader can click through to it and this test can check it; flags, versions and
hardware ("2 cores") are plain text. A figure matches when some number in the file (any
numeric value in a JSON file, any number in a text file) rounds to it at the precision it is
written with, in its unit (KB, MB, MiB, GB, k, M, x, %, s, "N min M s").

``python -m tests.test_figures`` prints every figure with its file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[([^\]\n]*\d[^\]\n]*)\]\(((?:\.\./)?benchmarks/results/[^)\s#]+)\)")
NUMBER = re.compile(r"(?P<min>\d+) min (?P<sec>\d+) s|"
                    r"(?P<num>\d[\d,]*(?:\.\d+)?)\s?(?P<unit>KB|MB|GB|MiB|GiB|KiB|k|M|x|%|s)?")
SCALES = {None: (1,), "s": (1,), "x": (1,), "%": (1, 0.01), "k": (1e3,), "M": (1e6,),
          "KB": (1e3, 1024, 1), "KiB": (1024, 1), "MB": (1e6, 2**20, 1), "MiB": (2**20, 1),
          "GB": (1e9, 2**30, 1), "GiB": (2**30, 1)}


def figures():
    """``(markdown file, link text, results file)`` for every marked figure."""
    for doc in DOCS:
        for text, target in LINK.findall(doc.read_text()):
            yield doc, text, (doc.parent / target).resolve()


def shown(text: str):
    """The numbers in a figure's text: ``(value, half of its last shown digit, unit)``."""
    for m in NUMBER.finditer(text):
        if m["min"]:
            yield int(m["min"]) * 60 + int(m["sec"]), 0.5, "s"
            continue
        raw = m["num"].replace(",", "")
        if "." in raw:
            half = 0.5 * 10 ** -len(raw.split(".")[1])
        else:  # 4,100 or 698,000: the trailing zeros are rounding
            digits = raw.rstrip("0")
            half = 0.5 * 10 ** (len(raw) - len(digits)) if digits and "," in m["num"] else 0.5
        yield float(raw), half, m["unit"]


def values(path: Path) -> list[float]:
    text = path.read_text()
    if path.suffix != ".json":
        return [float(v.replace(",", "")) for v in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)]
    out = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            out.append(float(x))

    walk(json.loads(text))
    return out


def matches(number: float, half: float, unit: str | None, found: list[float]) -> bool:
    return any(abs(abs(v) / scale - number) <= half * (1 + 1e-9) + 1e-12
               for v in found for scale in SCALES[unit])


def test_the_readme_marks_its_measured_figures():
    marked = [f for f in figures() if f[0].name == "README.md"]
    assert len(marked) >= 15, marked


@pytest.mark.parametrize("doc, text, target", list(figures()),
                         ids=lambda x: x if isinstance(x, str) else None)
def test_a_marked_figure_is_in_its_results_file(doc, text, target):
    assert target.is_file(), f"{doc.name}: [{text}] links to {target}, which does not exist"
    found = values(target)
    for number, half, unit in shown(text):
        assert matches(number, half, unit, found), (
            f"{doc.name}: the figure {text!r} is not in {target.relative_to(ROOT)}")


def test_the_matcher_respects_precision_and_units(tmp_path):
    assert list(shown("4 min 1 s")) == [(241, 0.5, "s")]
    assert list(shown("321 KB")) == [(321.0, 0.5, "KB")]
    assert [v[:2] for v in shown("4,100 and 1.18M")] == [(4100.0, 50.0), (1.18, 0.005)]
    assert matches(321, 0.5, "KB", [321_472]) and not matches(321, 0.5, "KB", [323_000])
    assert matches(0.958, 0.0005, None, [0.9582]) and not matches(0.958, 0.0005, None, [0.96])
    assert matches(1.18, 0.005, "M", [1_178_518]) and matches(24, 0.5, "%", [0.24])


if __name__ == "__main__":
    for doc, text, target in figures():
        print(f"{doc.relative_to(ROOT)}\t{text}\t{target.relative_to(ROOT)}")
