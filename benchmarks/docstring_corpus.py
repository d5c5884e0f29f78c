"""An offline corpus for ``fd simulate --task causal-lm --data``: the docstrings of installed
packages' functions and classes (English prose about code, longer than 80 characters), about
400 per package, one jsonl row per docstring with its ``package`` (the domain) and ``path``.
Prints the rows per package and the characters in all::

    python benchmarks/docstring_corpus.py docstrings.jsonl
    fd simulate --task causal-lm --data docstrings.jsonl --domain-column package --rounds 2
"""
import ast
import json
import sys
import sysconfig
from pathlib import Path

site = Path(sysconfig.get_paths()["purelib"])
rows = []
for package in ("transformers", "torch", "numpy", "sklearn", "datasets"):
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
