"""The text a language-model federation runs on (``fd simulate --task causal-lm``): the
standard library's source by default, or the user's own corpus (``--data FILE``; seq2seq's
pairs are split the same way, :func:`split_user_data`).

Standard library: each institution holds the files of one package (asyncio, email, xml, ...),
a domain of its own, every fifth file held out as that domain's test text; the proxy is the
standard library's top-level modules, which no institution holds.

The user's corpus (:func:`write_user_corpus`): a local text dataset (jsonl/json, csv,
parquet, txt, a save_to_disk folder) with a text column, split into institutions by a column
that names each document's domain or institution (``domain_column``), or by a Dirichlet
split over a label column (``label_column``, ``alpha``); or a folder of one dataset per
institution (a file each, or a sub-folder of files each). Every institution gives
``proxy_fraction`` of its documents to the shared proxy (domains that no institution holds
give all of theirs), and every fifth of the rest is its held-out test text.

Either way one byte-level BPE tokenizer is trained on the proxy and shared by all.
"""

from __future__ import annotations

import json
import random
import re
import sysconfig
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data import FILE_BUILDERS, TEXT_COLUMNS, DataError, load_local, pick_column

#: tiny random-init causal LMs; ``n_positions``/``max_position_embeddings`` and the vocabulary
#: come from the simulation's settings.
LM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4},
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
}
#: packages tried first as domains, in order (others follow by size)
PREFERRED = ("asyncio", "email", "xml", "multiprocessing", "unittest", "importlib", "http",
             "logging", "tkinter", "urllib", "json", "concurrent", "sqlite3", "ctypes",
             "curses", "html", "wsgiref", "zoneinfo", "collections", "dbm")
SKIP = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "ensurepip",
        "turtledemo", "encodings", "pydoc_data", "distutils"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _read(paths: Sequence[Path], limit: int) -> list[str]:
    texts, total = [], 0
    for p in paths:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text[: max(limit - total, 0)])
        total += len(texts[-1])
        if total >= limit:
            break
    return [t for t in texts if t]


def stdlib_domains(count: int, root: Path | None = None) -> dict[str, list[Path]]:
    """``count`` standard-library packages and their .py files (sorted), preferred ones first."""
    root = root or stdlib_root()
    found = {}
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name not in SKIP and (d / "__init__.py").exists():
            files = sorted(p for p in d.rglob("*.py") if not SKIP & set(p.relative_to(root).parts))
            if len(files) >= 2:
                found[d.name] = files
    order = [p for p in PREFERRED if p in found]
    order += sorted((p for p in found if p not in order),
                    key=lambda p: -sum(f.stat().st_size for f in found[p]))
    if count > len(order):
        raise ValueError(f"the standard library at {root} has {len(order)} usable packages; "
                         f"expected at least {count} (one per client)")
    return {p: found[p] for p in order[:count]}


def write_rows(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    """``rows`` as a jsonl file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_texts(path: Path, texts: Sequence[str]) -> Path:
    """``texts`` as a jsonl file of ``{"text": ...}`` rows at ``path``."""
    return write_rows(path, [{"text": t} for t in texts])


@dataclass
class TokenCorpus:
    """The files a language-model federation runs on (:func:`write_stdlib_corpus`,
    :func:`write_user_corpus`)."""

    clients: list[Path]        # data/client-<i>.jsonl: one institution's private text each
    tests: dict[str, Path]     # domain -> data/test-<domain>.jsonl (its held-out text)
    proxy: Path                # data/proxy.jsonl: text no institution holds
    tokenizer: Path            # tokenizer/: byte-level BPE trained on the proxy
    configs: dict[str, Path]   # architecture -> configs/<name>.json
    domains: dict[str, dict[str, Any]]  # domain -> its client and what it holds
    validation: dict[str, Path] = field(default_factory=dict)  # domain -> data/val-*.jsonl


def write_stdlib_corpus(root: Path, domains: dict[str, list[Path]], *,
                        client_chars: int = 300_000, proxy_chars: int = 600_000,
                        test_chars: int = 40_000, vocab_size: int = 2048,
                        max_length: int = 64, validation_fraction: float = 0.0
                        ) -> TokenCorpus:
    """Write the language-model federation's files under ``root``: every fifth file of each
    package (``domains``, from :func:`stdlib_domains`) is its held-out test text,
    ``validation_fraction`` of the others its validation text (:func:`stdlib_files`), the
    rest its client's private text; the proxy is the standard library's top-level modules;
    one shared tokenizer; and a config per architecture of :data:`LM_ARCHITECTURES` reading
    ``max_length`` positions."""
    data = root / "data"
    clients, tests, vals, info = [], {}, {}, {}
    for i, (pkg, files) in enumerate(domains.items()):
        private, val, held = stdlib_files(files, validation_fraction)
        clients.append(write_texts(data / f"client-{i}.jsonl", _read(private, client_chars)))
        tests[pkg] = write_texts(data / f"test-{pkg}.jsonl", _read(held, test_chars))
        info[pkg] = {"client": f"client-{i}", "files": len(files)}
        if val:
            vals[pkg] = write_texts(data / f"val-{pkg}.jsonl", _read(val, test_chars))
            info[pkg]["validation_files"] = len(val)
    top = sorted(stdlib_root().glob("*.py"))
    proxy = write_texts(data / "proxy.jsonl", _read(top, proxy_chars))
    return TokenCorpus(clients, tests, proxy, *_tokenizer_and_configs(root, proxy, vocab_size,
                                                                      max_length),
                       info, vals)


def stdlib_files(files: Sequence[Path], validation_fraction: float
                 ) -> tuple[list[Path], list[Path], list[Path]]:
    """A package's files as (private, validation, test): every fifth file is test text,
    ``validation_fraction`` of the others validation text (:func:`every_nth`)."""
    test = list(files[::TEST_EVERY])
    rest = [f for f in files if f not in set(test)]
    val = every_nth(rest, validation_fraction)
    return [f for f in rest if f not in set(val)], val, test


def _tokenizer_and_configs(root: Path, proxy: Path, vocab_size: int, max_length: int
                           ) -> tuple[Path, dict[str, Path]]:
    """One byte-level BPE tokenizer trained on the proxy, and a config per architecture of
    :data:`LM_ARCHITECTURES` reading ``max_length`` positions."""
    from ..lm import train_bpe_tokenizer

    tok = train_bpe_tokenizer(read_texts(proxy), root / "tokenizer", vocab_size=vocab_size)
    configs = {}
    (root / "configs").mkdir(parents=True, exist_ok=True)
    for name, cfg in LM_ARCHITECTURES.items():
        pos = "n_positions" if name == "gpt2" else "max_position_embeddings"
        configs[name] = root / "configs" / f"{name}.json"
        configs[name].write_text(json.dumps({**cfg, pos: max_length}))
    return tok, configs



def read_texts(path: Path) -> list[str]:
    """The texts of a jsonl file :func:`write_texts` wrote."""
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


#: columns taken as the domain (institution) of each document when none is named
DOMAIN_COLUMNS = ("domain", "institution", "client")
#: every ``TEST_EVERY``-th document an institution keeps is its held-out test text
TEST_EVERY = 5


def every_nth(items: Sequence[Any], fraction: float) -> list[Any]:
    """About ``fraction`` of ``items``: every n-th from the second on, n = round(1 /
    fraction) (none for 0): how a validation share is taken from what an institution keeps."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    return list(items[1::max(1, round(1 / fraction))]) if fraction > 0 else []


def split_documents(domains: Sequence[Any], num_clients: int, *, proxy_fraction: float,
                    seed: int, where: str, what: str, validation_fraction: float = 0.0
                    ) -> tuple[list[str], list[list[int]], list[list[int]], list[list[int]],
                               list[int]]:
    """Split documents among ``num_clients`` institutions by their domain (``domains[i]``: the
    domain of document i): the ``num_clients`` largest domains (ties by name) are the
    institutions, every other domain goes to the proxy whole. Each institution's documents,
    shuffled with ``seed``, give ``proxy_fraction`` of themselves to the proxy, every
    :data:`TEST_EVERY`-th of the rest is held out as its test text, and
    ``validation_fraction`` of what is left (:func:`every_nth`) as its validation text.
    Returns (institution names, each one's private document indices, test indices,
    validation indices, the proxy's)."""
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(domains):
        if d is None or str(d) == "":
            raise DataError(f"{where}: document {i} has no {what}; expected every document "
                            f"to name one")
        by_domain[str(d)].append(i)
    if len(by_domain) < num_clients:
        raise DataError(f"{where}: {len(by_domain)} {what}(s) ({', '.join(sorted(by_domain))})"
                        f" for {num_clients} institutions; expected at least --num-clients "
                        f"{num_clients} distinct values, or fewer --num-clients")
    order = sorted(by_domain, key=lambda d: (-len(by_domain[d]), d))
    names, rng = order[:num_clients], random.Random(seed)
    private, tests, vals = [], [], []
    proxy = [i for d in order[num_clients:] for i in by_domain[d]]
    for name in names:
        docs = list(by_domain[name])
        rng.shuffle(docs)
        shared = round(len(docs) * proxy_fraction)
        kept = docs[shared:]
        test = kept[::TEST_EVERY]
        rest = [i for i in kept if i not in set(test)]
        val = every_nth(rest, validation_fraction)
        own = [i for i in rest if i not in set(val)]
        if not own or not test:
            raise DataError(f"{where}: {what} {name!r} has {len(docs)} document(s), "
                            f"{len(kept)} after giving {proxy_fraction:g} of them to the proxy;"
                            f" expected at least 2 there, for private and held-out test text")
        proxy += docs[:shared]
        private.append(sorted(own))
        tests.append(sorted(test))
        vals.append(sorted(val))
    if not proxy:
        raise DataError(f"{where}: no document is left for the proxy; expected a "
                        f"--proxy-fraction above 0 or a {what} that no institution holds")
    return names, private, tests, vals, sorted(proxy)


def dirichlet_domains(labels: Sequence[Any], num_clients: int, alpha: float, seed: int
                      ) -> list[str]:
    """A domain (``share-<i>``) for every document: each label's documents are dealt to the
    institutions in proportions drawn from Dirichlet(``alpha``), as classification's
    partition does."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_label[str(y)].append(i)
    out = [""] * len(labels)
    for label in sorted(by_label):
        docs = by_label[label]
        shares = rng.dirichlet([alpha] * num_clients)
        cuts = (np.cumsum(shares)[:-1] * len(docs)).round().astype(int)
        for client, part in enumerate(np.split(np.array(docs), cuts)):
            for i in part.tolist():
                out[i] = f"share-{client}"
    return out


@dataclass
class UserSplit:
    """The user's corpus split into institutions (:func:`split_user_data`)."""

    columns: dict[str, list[str]]  # role ("text", or "source"/"target") -> every document's
    names: list[str]               # the institutions' domains (file or folder names)
    private: list[list[int]]       # each institution's document indices
    tests: list[list[int]]         # each institution's held-out test indices
    validation: list[list[int]]    # each institution's validation indices
    proxy: list[int]               # the proxy's indices

    def rows(self, indices: Sequence[int]) -> list[dict[str, str]]:
        return [{role: values[j] for role, values in self.columns.items()} for j in indices]

    def write(self, root: Path) -> UserFiles:
        """``data/client-<i>.jsonl``, ``data/test-<i>-<domain>.jsonl``,
        ``data/val-<i>-<domain>.jsonl`` (when there is validation) and ``data/proxy.jsonl``
        under ``root``, one ``{role: text}`` row per document."""
        out = root / "data"
        clients = [write_rows(out / f"client-{i}.jsonl", self.rows(own))
                   for i, own in enumerate(self.private)]

        def per_domain(kind: str, parts: list[list[int]]) -> dict[str, Path]:
            return {name: write_rows(out / f"{kind}-{i}-{_safe(name)}.jsonl", self.rows(part))
                    for i, (name, part) in enumerate(zip(self.names, parts)) if part}

        domains = {name: {"client": f"client-{i}", "documents": len(self.private[i]),
                          "test_documents": len(self.tests[i]),
                          **({"validation_documents": len(self.validation[i])}
                             if self.validation[i] else {})}
                   for i, name in enumerate(self.names)}
        return UserFiles(clients, per_domain("test", self.tests),
                         per_domain("val", self.validation),
                         write_rows(out / "proxy.jsonl", self.rows(self.proxy)), domains)


@dataclass
class UserFiles:
    """The files :meth:`UserSplit.write` wrote."""

    clients: list[Path]
    tests: dict[str, Path]
    validation: dict[str, Path]
    proxy: Path
    domains: dict[str, dict[str, Any]]  # domain -> its client and its documents


def institution_files(path: Path) -> dict[str, list[Path]] | None:
    """A folder of one dataset per institution: each file directly in ``path`` (its name
    without suffix names the institution) or each sub-folder (its name; every data file
    under it). None when ``path`` is a file or a ``save_to_disk`` folder."""
    path = Path(path)
    if not path.is_dir() or any((path / n).exists() for n in ("dataset_info.json",
                                                               "dataset_dict.json")):
        return None
    found: dict[str, list[Path]] = {}
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files = sorted(f for f in entry.rglob("*") if f.is_file() and _is_data(f))
        else:
            files = [entry] if _is_data(entry) else []
        if files:
            name = entry.name if entry.is_dir() else entry.stem
            found.setdefault(name, []).extend(files)
    if not found:
        raise DataError(f"{path}: a folder with no data files; expected one file ("
                        f"{', '.join(sorted(FILE_BUILDERS))}) or one sub-folder of them per "
                        f"institution, or a save_to_disk folder")
    return found


def _is_data(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in FILE_BUILDERS


def _paragraphs(path: Path) -> dict[str, list[str]]:
    """A text file in a folder of institutions: a document per blank-line-separated
    paragraph."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return {"text": [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]}


Pick = Callable[[Sequence[str], str], dict[str, str]]


def split_user_data(data: str | Path, pick: Pick, *, num_clients: int,
                    domain_column: str | None = None, label_column: str | None = None,
                    alpha: float = 1.0, proxy_fraction: float = 0.2,
                    split: str | None = None, seed: int = 0,
                    validation_fraction: float = 0.0,
                    whole_text_files: bool = True) -> UserSplit:
    """Split the user's corpus ``data`` into institutions, proxy, test and validation
    documents.
    ``pick(columns, where)`` names the column of each role (``{"text": "body"}``) or raises.

    ``data`` is one dataset whose ``domain_column`` (default: domain, institution or client)
    names each document's institution, or whose ``label_column`` is split by
    Dirichlet(``alpha``); or a folder of one dataset per institution
    (:func:`institution_files`; a .txt file there holds a document per paragraph). Then
    :func:`split_documents`."""
    if not 0 <= proxy_fraction < 1:
        raise ValueError(f"proxy_fraction must be in [0, 1), got {proxy_fraction}")
    where = str(data)
    per_file = institution_files(Path(data))
    if per_file is not None:
        if domain_column is not None or label_column is not None:
            raise DataError(f"{where}: a folder of one dataset per institution; "
                            "--domain-column and --label-column do not apply (each file or "
                            "sub-folder is an institution)")
        columns: dict[str, list[str]] = {}
        domains: list[Any] = []
        for name, files in per_file.items():
            for f in files:
                if f.suffix.lower() == ".txt":
                    table: Any = _paragraphs(f)
                    got = _picked(table, ["text"], pick, str(f))
                else:
                    table = load_local(f, split)
                    got = _picked(table, list(table.column_names), pick, str(f))
                for role, values in got.items():
                    columns.setdefault(role, []).extend(values)
                domains += [name] * len(next(iter(got.values())))
        what = "institution"
    else:
        ds = load_local(data, split, whole_text_files=whole_text_files)
        columns = _picked(ds, list(ds.column_names), pick, where)
        names = list(ds.column_names)
        if label_column is not None:
            pick_column(names, label_column, (), "label", where, "--label-column")
            domains, what = dirichlet_domains(ds[label_column], num_clients, alpha, seed), \
                "share"
        else:
            column = pick_column(names, domain_column, DOMAIN_COLUMNS, "domain", where,
                                 "--domain-column")
            if column is None:
                raise DataError(f"{where}: nothing says which institution holds each "
                                f"document; expected a domain column (one of "
                                f"{list(DOMAIN_COLUMNS)}, or --domain-column NAME), "
                                f"--label-column NAME for a Dirichlet split by label, or a "
                                f"folder of one file per institution; found columns {names}")
            domains, what = ds[column], f"{column!r} value"
    return UserSplit(columns, *split_documents(
        domains, num_clients, proxy_fraction=proxy_fraction, seed=seed, where=where, what=what,
        validation_fraction=validation_fraction))


def _picked(table: Any, columns: list[str], pick: Pick, where: str) -> dict[str, list[str]]:
    """The columns of ``table`` that ``pick`` names, as strings (None as "")."""
    return {role: ["" if t is None else str(t) for t in table[column]]
            for role, column in pick(columns, where).items()}


def text_column_of(text_column: str | None) -> Pick:
    """The ``pick`` of a causal-LM corpus: its text column."""
    def pick(columns: Sequence[str], where: str) -> dict[str, str]:
        text = pick_column(columns, text_column, TEXT_COLUMNS, "text", where, "--text-column")
        if text is None:
            raise DataError(f"{where}: no text column found; expected one of "
                            f"{list(TEXT_COLUMNS)}, found {list(columns)}; set --text-column")
        return {"text": text}
    return pick


def write_user_corpus(root: Path, data: str | Path, *, num_clients: int,
                      text_column: str | None = None, domain_column: str | None = None,
                      label_column: str | None = None, alpha: float = 1.0,
                      proxy_fraction: float = 0.2, split: str | None = None,
                      vocab_size: int = 2048, max_length: int = 64,
                      validation_fraction: float = 0.0, seed: int = 0) -> TokenCorpus:
    """Write the federation's files under ``root`` from the user's corpus ``data`` (see the
    module docstring and :func:`split_user_data`): ``data/client-<i>.jsonl``,
    ``data/test-<i>-<domain>.jsonl``, ``data/proxy.jsonl``, the tokenizer and the configs."""
    docs = split_user_data(data, text_column_of(text_column), num_clients=num_clients,
                           domain_column=domain_column, label_column=label_column, alpha=alpha,
                           proxy_fraction=proxy_fraction, split=split, seed=seed,
                           validation_fraction=validation_fraction)
    f = docs.write(root)
    return TokenCorpus(f.clients, f.tests, f.proxy,
                       *_tokenizer_and_configs(root, f.proxy, vocab_size, max_length),
                       f.domains, f.validation)


def _safe(name: str) -> str:
    """A domain's name as part of a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "domain"
