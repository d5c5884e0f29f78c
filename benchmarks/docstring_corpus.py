"""An offline corpus for ``fd simulate --task causal-lm --data``: the docstrings of installed
packages' functions and classes (English prose about code, longer than 80 characters), about
400 per package, one jsonl row per docstring with its ``package`` (the domain) and ``path``.
Prints the rows per package and the characters in all::

    python benchmarks/docstring_corpus.py docstrings.jsonl
    fd simulate --task causal-lm --data docstrings.jsonl --domain-column package --rounds 2

With ``--pairs FOLDER``, a corpus for ``fd simulate --task seq2seq --data``: a folder of one
jsonl file per package (an institution each), up to 300 (source, target) pairs per package:
a function's source without its docstring, and the docstring's first line (as the built-in
seq2seq task, on the standard library)::

    python benchmarks/docstring_corpus.py --pairs pairs
    fd simulate --task seq2seq --data pairs --rounds 2
"""
import ast
import json
import sys
import sysconfig
from pathlib import Path

site = Path(sysconfig.get_paths()["purelib"])
PACKAGES = ("transformers", "torch", "numpy", "sklearn", "datasets")
if sys.argv[1] == "--pairs":
    from fdcli.stages.simulate_seq2seq import function_pairs

    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=False)
    counts = {}
    for package in PACKAGES:
        pairs = []
        for path in sorted((site / package).rglob("*.py")):
            pairs += function_pairs(path)
            if len(pairs) >= 300:
                break
        with open(out / f"{package}.jsonl", "w") as f:
            for r in pairs[:300]:
                f.write(json.dumps(r) + "\n")
        counts[package] = len(pairs[:300])
    print(counts)
    sys.exit(0)
rows = []
for package in PACKAGES:
    count = 0
    for path in sorted((site / package).rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    rows.append({"text": doc, "package": package,
                                 "path": str(path.relative_to(site))})
                    count += 1
        if count >= 400:
            break
with open(sys.argv[1], "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
print({p: sum(r["package"] == p for r in rows) for p in {r["package"] for r in rows}},
      sum(len(r["text"]) for r in rows))
