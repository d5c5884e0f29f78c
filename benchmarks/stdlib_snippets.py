"""Write an offline text-classification dataset: which standard-library package does this
snippet of Python source come from?

Every package's .py files are cut into snippets of ``--lines`` non-blank lines; each class is
capped at ``--per-class`` snippets (taken evenly through the package). The CSV has columns
``text`` and ``label`` and goes straight into ``fd simulate --data``::

    python benchmarks/stdlib_snippets.py --out snippets.csv
    fd simulate --data snippets.csv --num-clients 10 --alpha 1.0 --out sim-text

Prints a JSON summary (classes, examples, characters).
"""

from __future__ import annotations

import argparse
import csv
import json
import sysconfig
from pathlib import Path

PACKAGES = ("asyncio", "email", "xml", "multiprocessing", "json", "http", "unittest",
            "logging", "concurrent", "importlib")


def snippets(package: Path, lines: int) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        if "test" in path.parts[-2:-1]:
            continue
        body = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace")
                .splitlines() if ln.strip()]
        out += [" ".join(body[i:i + lines]) for i in range(0, len(body) - lines + 1, lines)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("stdlib-snippets.csv"))
    parser.add_argument("--lines", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=300)
    args = parser.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for name in PACKAGES:
        found = snippets(root / name, args.lines)
        step = max(1, len(found) // args.per_class)
        rows += [(text, name) for text in found[::step][:args.per_class]]
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(json.dumps({"out": str(args.out), "classes": len(PACKAGES), "examples": len(rows),
                      "per_class": {p: sum(1 for _, n in rows if n == p) for p in PACKAGES},
                      "characters": sum(len(t) for t, _ in rows)}))


if __name__ == "__main__":
    main()
