"""fd simulate --task seq2seq: a federation of encoder-decoder models on one machine.

The task ships with Python: given a function's source from the standard library (its
docstring removed), write the first line of its docstring. Each institution holds the
functions of one package (asyncio, email, ...), every fifth file held out as that domain's
test set; the proxy set is the functions of the top-level modules, which no institution
holds. One byte-level BPE tokenizer with T5's special ids is trained on the proxy.

Specialists are small T5-shaped models of two sizes, trained from scratch in turn; they emit
top-k token bundles on the proxy pairs (teacher-forced on the proxy's own docstrings), the
coordinator aggregates them per target token, and a T5-shaped student is distilled on the
proxy. It is compared with every specialist, with the student trained on the proxy alone,
with the student trained centrally on the union of the private pairs and the proxy, and with
Flower FedAvg of the student (fp32 and 8-bit): BLEU, chrF and ROUGE-L of greedy decodes, and
perplexity of the reference docstrings, per domain and on the union of the domains. A second
student is distilled on targets a specialist wrote itself (``fd generate``), as for a proxy
set that has none; membership-inference attacks run on every model.
"""

from __future__ import annotations

import ast
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..outputs import fresh_dir
from ..results import write_results
from .federation import dir_bytes, flagged_clients, round_dir
from .lm import LM_HARD_WEIGHT
from .token_evidence import evidence_md, token_scores
from .token_rounds import rounds_md
from .token_corpus import (split_user_data, stdlib_domains, stdlib_files, stdlib_root,
                           write_rows)

#: tiny random-init T5-shaped models (gated-GELU feed-forward, as FLAN-T5); the vocabulary
#: comes from the simulation's tokenizer
T5_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "t5-tiny": {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4,
                "num_layers": 2, "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu"},
    "t5-mini": {"model_type": "t5", "d_model": 128, "d_ff": 256, "d_kv": 32, "num_heads": 4,
                "num_layers": 3, "num_decoder_layers": 3, "feed_forward_proj": "gated-gelu"},
}
METRICS = ("bleu", "chrf", "rouge_l")


def function_pairs(path: Path, max_source_chars: int = 1200) -> list[dict[str, str]]:
    """(source, target) of every function and method in a Python file that has a docstring:
    the function re-written without its docstring (cut to ``max_source_chars``) and the
    docstring's first line (skipped when empty or longer than 120 characters)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
        return []
    pairs = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        first = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
        if not first or len(first) > 120:
            continue
        node.body = node.body[1:] or [ast.Pass()]
        pairs.append({"source": ast.unparse(node)[:max_source_chars], "target": first})
    return pairs


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_docstring_corpus(root: Path, domains: dict[str, list[Path]], *,
                           proxy_pairs: int = 1000, vocab_size: int = 2048,
                           validation_fraction: float = 0.0) -> dict[str, Any]:
    """Write the federation's files under ``root``: ``data/client-<i>.jsonl`` (a package's
    pairs, every fifth file held out as test, ``validation_fraction`` of the others as
    validation: :func:`~fdcli.stages.token_corpus.stdlib_files`),
    ``data/test-<package>.jsonl``, ``data/val-<package>.jsonl``, ``data/proxy.jsonl`` (the
    top-level modules' pairs, every n-th to keep ``proxy_pairs``), a tokenizer trained on the
    proxy, and a config per :data:`T5_ARCHITECTURES` entry."""
    data = root / "data"
    clients, tests, vals, info = [], {}, {}, {}
    for i, (pkg, files) in enumerate(domains.items()):
        private, val, held = stdlib_files(files, validation_fraction)
        clients.append(write_rows(data / f"client-{i}.jsonl", [
            p for f in private for p in function_pairs(f)]))
        tests[pkg] = write_rows(data / f"test-{pkg}.jsonl", [
            p for f in held for p in function_pairs(f)])
        info[pkg] = {"client": f"client-{i}", "files": len(files)}
        val_pairs = [p for f in val for p in function_pairs(f)]
        if val_pairs:  # files without a documented function give none
            vals[pkg] = write_rows(data / f"val-{pkg}.jsonl", val_pairs)
            info[pkg]["validation_files"] = len(val)
    found = [p for f in sorted(stdlib_root().glob("*.py")) for p in function_pairs(f)]
    step = max(1, len(found) // proxy_pairs)
    proxy = write_rows(data / "proxy.jsonl", found[::step][:proxy_pairs])
    return {"clients": clients, "tests": tests, "validation": vals, "proxy": proxy,
            **_tokenizer_and_configs(root, proxy, vocab_size), "domains": info}


def write_user_pairs(root: Path, data: str | Path, *, num_clients: int,
                     source_column: str | None = None, target_column: str | None = None,
                     domain_column: str | None = None, label_column: str | None = None,
                     alpha: float = 1.0, proxy_fraction: float = 0.2, split: str | None = None,
                     vocab_size: int = 2048, validation_fraction: float = 0.0,
                     seed: int = 0) -> dict[str, Any]:
    """The federation's files from the user's (source, target) pairs ``data``, split into
    institutions, proxy and test pairs as causal-lm splits documents
    (:func:`~fdcli.stages.token_corpus.split_user_data`)."""
    from ..data import DataError, pick_column
    from ..seq2seq import SOURCE_COLUMNS, TARGET_COLUMNS

    def pick(columns: Sequence[str], where: str) -> dict[str, str]:
        src = pick_column(columns, source_column, SOURCE_COLUMNS, "source", where,
                          "--source-column")
        tgt = pick_column(columns, target_column, [c for c in TARGET_COLUMNS if c != src],
                          "target", where, "--target-column")
        for role, column, known in (("source", src, SOURCE_COLUMNS),
                                    ("target", tgt, TARGET_COLUMNS)):
            if column is None:
                raise DataError(f"{where}: no {role} column found; expected one of "
                                f"{list(known)}, found {list(columns)}; set --{role}-column")
        return {"source": src, "target": tgt}

    docs = split_user_data(data, pick, num_clients=num_clients, domain_column=domain_column,
                           label_column=label_column, alpha=alpha,
                           proxy_fraction=proxy_fraction, split=split, seed=seed,
                           validation_fraction=validation_fraction, whole_text_files=False)
    f = docs.write(root)
    return {"clients": f.clients, "tests": f.tests, "validation": f.validation,
            "proxy": f.proxy, **_tokenizer_and_configs(root, f.proxy, vocab_size),
            "domains": f.domains}


def _tokenizer_and_configs(root: Path, proxy: Path, vocab_size: int) -> dict[str, Any]:
    """A tokenizer trained on the proxy's sources and targets, and a config per
    :data:`T5_ARCHITECTURES` entry."""
    from ..seq2seq import train_seq2seq_tokenizer

    rows = _read_jsonl(proxy)
    tok = train_seq2seq_tokenizer([r["source"] for r in rows] + [r["target"] for r in rows],
                                  root / "tokenizer", vocab_size=vocab_size)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    configs = {}
    for name, cfg in T5_ARCHITECTURES.items():
        configs[name] = root / "configs" / f"{name}.json"
        configs[name].write_text(json.dumps(cfg))
    return {"tokenizer": tok, "configs": configs}


def simulate_seq2seq(out: str | Path, *, num_clients: int = 4, rule: str = "confidence",
                     architectures: Sequence[str] = ("t5-mini", "t5-tiny"),
                     student: str = "t5-tiny", proxy_pairs: int = 1000,
                     vocab_size: int = 2048, max_source_length: int = 128,
                     max_target_length: int = 32, k: int = 16, epochs: float = 20.0,
                     distill_epochs: float = 20.0, learning_rate: float = 2e-3,
                     batch_size: int = 16, temperature: float | None = 2.0,
                     hard_weight: float = LM_HARD_WEIGHT, fedavg_rounds: int = 10,
                     fedavg_local_epochs: float = 2.0, rounds: int = 1,
                     round_epochs: float = 2.0, round_distill_epochs: float = 2.0,
                     digest_weight: float = 0.2, poison: float = 0.0,
                     poison_kind: str = "random", privacy: bool = True,
                     compare_generated: bool = True, data: str | Path | None = None,
                     source_column: str | None = None, target_column: str | None = None,
                     domain_column: str | None = None, label_column: str | None = None,
                     alpha: float = 1.0, proxy_fraction: float = 0.2,
                     split: str | None = None, validation_fraction: float = 0.1,
                     seed: int = 0, seeds: int = 1, overwrite: bool = False,
                     progress: bool = True, log: Callable[[str], None] = print
                     ) -> dict[str, Any]:
    """Run the docstring federation and write ``out/results.json`` and ``out/report.md``;
    returns the results (see the module docstring). ``rounds`` > 1 continues the federation
    on the proxy's own targets as :func:`~fdcli.stages.simulate_lm.simulate_lm` does; the
    student on generated targets stays one-shot. The defaults ``temperature`` 2 and one round
    were chosen on the validation split's BLEU, chrF and ROUGE-L (docs/seq2seq.md); None
    picks the temperature from the teacher, as ``fd distill`` does. ``poison``/
    ``poison_kind``: hostile clients, as for causal-lm (every bundle they send, the
    generated targets' too).

    ``data`` runs on the user's (source, target) pairs instead of the standard library
    (:func:`write_user_pairs`: ``source_column``, ``target_column``, and ``domain_column`` or
    ``label_column`` with ``alpha``, or a folder of one dataset per institution;
    ``proxy_fraction``, ``split``); ``proxy_pairs`` then does not apply.

    ``validation_fraction`` of each institution's private pairs (of the standard library: its
    files) is held out as its validation set; every round records the student's perplexity,
    BLEU, chrF and ROUGE-L on their union (``validation_perplexity``, ``validation_bleu``,
    ...). 0 for none.

    ``seeds`` > 1 runs the whole comparison at ``seeds`` consecutive seeds from ``seed``
    into ``out/seed-<s>`` and combines them (:mod:`fdcli.stages.token_seeds`)."""
    if seeds > 1:
        settings = {k: v for k, v in locals().items() if k not in ("out", "seeds", "seed",
                                                                  "overwrite", "log")}
        from .token_seeds import token_over_seeds

        return token_over_seeds(simulate_seq2seq, out, task="seq2seq", seeds=seeds, first_seed=seed,
                                overwrite=overwrite, log=log, **settings)
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    from ..data import load_local
    from ..seq2seq import load_seq2seq, text_pairs
    from .aggregate import aggregate
    from .seq2seq import (distill_seq2seq, emit_seq2seq_logits, generate_targets,
                          train_seq2seq_specialist)
    from .token_evidence import bytes_report, check_setup, fedavg_baselines, privacy_report
    from ..poison import poison_bundle
    from .token_rounds import (TokenStages, check_rounds, first_round, later_rounds,
                               round_curve, token_poisoned)

    check_setup(T5_ARCHITECTURES, architectures, student, num_clients)
    check_rounds(rounds, round_epochs, round_distill_epochs, digest_weight)
    poisoned = token_poisoned(num_clients, poison, poison_kind, seed)
    described = (source_column, target_column, domain_column, label_column, split)
    if data is None and any(v is not None for v in described):
        raise ValueError("source_column, target_column, domain_column, label_column and split "
                         "describe --data; give --data FILE, or leave them out for the "
                         "standard library")
    config = {"task": "seq2seq", "data": "python standard library: function source -> first "
              "docstring line" if data is None else str(data),
              **({} if data is None else {
                  "source_column": source_column, "target_column": target_column,
                  "domain_column": domain_column, "label_column": label_column,
                  "alpha": alpha, "proxy_fraction": proxy_fraction, "split": split}),
              "num_clients": num_clients, "rule": rule,
              "architectures": list(architectures), "student": student,
              "proxy_pairs": proxy_pairs, "vocab_size": vocab_size,
              "max_source_length": max_source_length, "max_target_length": max_target_length,
              "k": k, "epochs": epochs, "distill_epochs": distill_epochs,
              "learning_rate": learning_rate, "batch_size": batch_size,
              "temperature": temperature, "hard_weight": hard_weight,
              "fedavg_rounds": fedavg_rounds, "fedavg_local_epochs": fedavg_local_epochs,
              "rounds": rounds, "round_epochs": round_epochs,
              "round_distill_epochs": round_distill_epochs, "digest_weight": digest_weight,
              "poison": poison, "poison_kind": poison_kind if poisoned else None,
              "validation_fraction": validation_fraction, "privacy": privacy,
              "compare_generated": compare_generated, "seed": seed}
    domains = stdlib_domains(num_clients) if data is None else None
    lengths = dict(max_source_length=max_source_length, max_target_length=max_target_length)
    train = dict(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                 progress=progress, **lengths)
    timing: dict[str, float] = {}
    with fresh_dir(out, overwrite) as root:
        t = time.perf_counter()
        if data is None:
            corpus = write_docstring_corpus(root, domains, proxy_pairs=proxy_pairs,
                                            vocab_size=vocab_size,
                                            validation_fraction=validation_fraction)
        else:
            corpus = write_user_pairs(root, data, num_clients=num_clients,
                                      source_column=source_column, target_column=target_column,
                                      domain_column=domain_column, label_column=label_column,
                                      alpha=alpha, proxy_fraction=proxy_fraction, split=split,
                                      vocab_size=vocab_size,
                                      validation_fraction=validation_fraction, seed=seed)
            log(f"{data}: institutions {', '.join(corpus['domains'])}")
        tok, configs, proxy = corpus["tokenizer"], corpus["configs"], corpus["proxy"]
        timing["data_and_tokenizer_s"] = time.perf_counter() - t
        student_cfg = configs[student]
        ref = load_seq2seq(student_cfg, tokenizer=tok, seed=seed)

        def pairs_of(path: Path):
            return text_pairs(load_local(path), str(path), ref.tokenizer, **lengths)

        tests = {pkg: pairs_of(path) for pkg, path in corpus["tests"].items()}
        private = [pairs_of(path) for path in corpus["clients"]]
        val_pairs = {name: pairs_of(path) for name, path in corpus["validation"].items()}

        def validate(path: Path) -> dict[str, float]:
            union = _scores(load_seq2seq(path), val_pairs, max_target_length)["union"]
            return {"perplexity": union["perplexity"], **{key: union[key] for key in METRICS}}

        def scores(m) -> dict[str, Any]:
            return _scores(m, tests, max_target_length)

        sent = [0] * num_clients  # the bundles each client has sent

        def emit(model: Path, bundle: Path, i: int, on: Path = proxy):
            """Client i's bundle on ``on``: its model's, or what a hostile client sends."""
            sent[i] += 1
            emitted = emit_seq2seq_logits(model, on, bundle, k=k, client_id=f"client-{i}",
                                          seed=seed, progress=progress, **lengths)
            if i in poisoned:
                poison_bundle(bundle, poison_kind, seed=seed + 1000 * sent[i] + i)
            return emitted

        def scored(path: Path, **extra) -> dict[str, Any]:
            return {**extra, **scores(load_seq2seq(path))}

        specialists, uploads = [], []
        t = time.perf_counter()
        for i, pkg in enumerate(corpus["domains"]):
            arch = architectures[i % len(architectures)]
            model_dir = root / "specialists" / f"client-{i}"
            log(f"client {i} ({pkg}): training a {arch} on {len(private[i].sources)} pairs")
            meta = train_seq2seq_specialist(corpus["clients"][i], configs[arch], model_dir,
                                            tokenizer=tok, client_id=f"client-{i}", **train)
            bundle = root / "bundles" / f"client-{i}"
            m = emit(model_dir, bundle, i)
            uploads.append(dir_bytes(bundle))
            specialists.append(_own_and_others(scored(
                model_dir, client_id=f"client-{i}", domain=pkg, architecture=arch,
                train_pairs=meta["train_examples"], uploaded_bytes=uploads[-1],
                bytes_per_token=round(uploads[-1] / m.rows, 3)), pkg))
        timing["specialists_s"] = time.perf_counter() - t

        def distill_student(bundle_dir: Path, name: str, proxy_file: Path) -> dict[str, Any]:
            teacher = root / "teachers" / name
            aggregate(sorted((bundle_dir).iterdir()), teacher, rule=rule, k=k, seed=seed,
                      progress=progress)
            out_dir = root / "students" / name
            meta = distill_seq2seq(student_cfg, proxy_file, teacher, out_dir, tokenizer=tok,
                                   temperature=temperature, hard_weight=hard_weight,
                                   epochs=distill_epochs, learning_rate=learning_rate,
                                   batch_size=batch_size, seed=seed, progress=progress)
            return scored(out_dir, architecture=student,
                          temperature=meta["config"]["temperature"])

        t = time.perf_counter()
        log(f"aggregating with rule {rule!r} and distilling a {student}")
        students = {"proxy_targets": distill_student(root / "bundles", rule, proxy)}
        round_one_s = timing["specialists_s"] + time.perf_counter() - t
        stages = TokenStages(
            train=lambda i, start, model, consensus: train_seq2seq_specialist(
                corpus["clients"][i], start, model, tokenizer=tok, client_id=f"client-{i}",
                teacher=consensus, proxy=proxy, digest_weight=digest_weight,
                temperature=temperature, **{**train, "epochs": round_epochs}),
            emit=emit,
            aggregate=lambda bundles, teacher: aggregate(bundles, teacher, rule=rule, k=k,
                                                         seed=seed, progress=progress),
            distill=lambda start, teacher, model: distill_seq2seq(
                start, proxy, teacher, model, tokenizer=tok, temperature=temperature,
                hard_weight=hard_weight, epochs=round_distill_epochs,
                learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                progress=progress),
            score=lambda path: scored(path, architecture=student),
            perplexity=lambda s: s["union"]["perplexity"],
            validate=validate if val_pairs else None)
        records = [first_round(stages, uploads, students["proxy_targets"], specialists,
                               round_one_s, root / "students" / rule)]
        later = time.perf_counter()
        records += later_rounds(root, rounds, num_clients, rule, stages, log)
        timing["later_rounds_s"] = time.perf_counter() - later
        final = {**students["proxy_targets"], **records[-1]["student"], "round": rounds}
        if compare_generated:
            log("targets written by client-0's specialist (fd generate); every client emits "
                "on them; a second student")
            gen = root / "data" / "proxy-generated.jsonl"
            generate_targets(root / "specialists" / "client-0", proxy, gen, **lengths)
            for i in range(num_clients):
                emit(root / "specialists" / f"client-{i}",
                     root / "bundles-generated" / f"client-{i}", i, on=gen)
            students["generated_targets"] = distill_student(root / "bundles-generated",
                                                            f"{rule}-generated", gen)
        timing["aggregate_distill_s"] = time.perf_counter() - t - timing["later_rounds_s"]

        t = time.perf_counter()
        log(f"references: a {student} on the proxy alone, and centrally on the union of the "
            "private pairs and the proxy")
        train_seq2seq_specialist(proxy, student_cfg, root / "proxy-only", tokenizer=tok,
                                 client_id="proxy-only",
                                 **{**train, "epochs": distill_epochs})
        union = write_rows(root / "union.jsonl", [
            r for path in [*corpus["clients"], proxy] for r in _read_jsonl(path)])
        train_seq2seq_specialist(union, student_cfg, root / "centralized", tokenizer=tok,
                                 client_id="centralized", **train)
        timing["references_s"] = time.perf_counter() - t

        task = _task(student_cfg, tok, tests, seed=seed, learning_rate=learning_rate,
                     batch_size=batch_size)
        client_examples = [list(zip(p.sources, p.targets)) for p in private]
        t = time.perf_counter()
        baselines, curves = fedavg_baselines(
            task, client_examples, root, rounds=fedavg_rounds, local_epochs=fedavg_local_epochs,
            seed=seed, score=lambda m: {"architecture": student, **scores(m)},
            meta={"fd_version": __version__, "task": "seq2seq", "architecture": student},
            log=log)
        timing["fedavg_s"] = time.perf_counter() - t
        target = final["union"]["perplexity"]
        results: dict[str, Any] = {
            "fd_version": __version__, "config": config,
            "domains": {pkg: {**held, "train_pairs": len(private[i].sources),
                              "test_pairs": len(tests[pkg].sources)}
                        for i, (pkg, held) in enumerate(corpus["domains"].items())},
            "proxy_pairs": len(_read_jsonl(proxy)),
            "specialists": specialists,
            "specialists_mean": {"union": {key: round(sum(s["union"][key] for s in specialists)
                                                      / len(specialists), 2)
                                           for key in (*METRICS, "perplexity")}},
            "student": final, "students": students, "rounds": records,
            "poisoned_clients": [f"client-{i}" for i in sorted(poisoned)],
            "outliers_flagged": flagged_clients(round_dir(root, rounds) / "teachers" / rule),
            "proxy_only": scored(root / "proxy-only", architecture=student),
            "centralized": scored(root / "centralized", architecture=student),
            "baselines": baselines, "curves": {"fd": round_curve(records), **curves},
            **bytes_report(records, curves, target),
        }
        if privacy:
            t = time.perf_counter()
            log("membership inference on every model")
            results["privacy"] = privacy_report(
                task, load_seq2seq, client_examples,
                [list(zip(p.sources, p.targets)) for p in tests.values()],
                [root / "specialists" / f"client-{i}" for i in range(num_clients)],
                {"student": round_dir(root, rounds) / "students" / rule,
                 "centralized": root / "centralized",
                 "proxy_only": root / "proxy-only", **{n: root / n for n in baselines}},
                root / "proxy-only", seed=seed)
            results["privacy"].update(PRIVACY_NOTE)
            timing["privacy_s"] = time.perf_counter() - t
        results["timing"] = {key: round(v, 2) for key, v in timing.items()}
        results = write_results(root, "seq2seq", results, token_scores(results, seed))
        (root / "report.md").write_text(report_markdown(results))
    return results


def _scores(m, tests: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
    """BLEU, chrF, ROUGE-L and perplexity of a model on every domain's test pairs and on their
    union, with three examples of what it wrote."""
    from ..seq2seq import generate, text_metrics, token_nll

    by_domain, hyps, refs, nll, tokens = {}, [], [], 0.0, 0
    for pkg, pairs in tests.items():
        h = generate(m, pairs.sources, batch_size=64, max_new_tokens=max_new_tokens)
        t_nll = token_nll(m, pairs, 32)
        by_domain[pkg] = {**{k: round(v, 2) for k, v in
                             text_metrics(h, pairs.target_texts).items()},
                          "perplexity": round(t_nll["perplexity"], 3)}
        hyps += h
        refs += pairs.target_texts
        nll += t_nll["nll"] * t_nll["tokens"]
        tokens += t_nll["tokens"]
    union = {k: round(v, 2) for k, v in text_metrics(hyps, refs).items()}
    return {"union": {**union, "perplexity": round(math.exp(nll / tokens), 3)},
            "by_domain": by_domain,
            "examples": [{"target": r, "generated": h} for r, h in zip(refs[:3], hyps[:3])]}


def _own_and_others(s: dict[str, Any], own: str) -> dict[str, Any]:
    """A specialist's scores with its own domain's and the mean of the other domains'."""
    others = [d for d in s["by_domain"] if d != own]
    s["own"] = s["by_domain"][own]
    s["others"] = {key: round(sum(s["by_domain"][d][key] for d in others) / len(others), 2)
                   for key in (*METRICS, "perplexity")} if others else None
    return s


def _task(student_cfg: Path, tok: Path, tests: dict[str, Any], *, seed: int,
          learning_rate: float, batch_size: int):
    """The student architecture as a :class:`~fdcli.stages.token_evidence.TokenTask`: an
    example is a (source ids, target ids) pair; FedAvg's curve tracks the perplexity of the
    union of the test pairs."""
    from ..seq2seq import TextPairs, load_seq2seq, token_nll
    from ..training import fit_seq2seq
    from .token_evidence import TokenTask

    def fit(m, examples, epochs, seed_):
        fit_seq2seq(m, [e[0] for e in examples], [e[1] for e in examples], epochs=epochs,
                    learning_rate=learning_rate, batch_size=batch_size, seed=seed_,
                    progress=False)

    def losses(m, examples):
        held = TextPairs([e[0] for e in examples], [e[1] for e in examples], [], None, "",
                         None, 0, 0, "")
        return token_nll(m, held, 32, per_example=True)["losses"]

    def union_perplexity(m) -> float:
        nll = sum(token_nll(m, p, 32)["nll"] * p.rows for p in tests.values())
        return math.exp(nll / sum(p.rows for p in tests.values()))

    return TokenTask(load=lambda: load_seq2seq(student_cfg, tokenizer=tok, seed=seed), fit=fit,
                     losses=losses, perplexity=union_perplexity)


PRIVACY_NOTE = {
    "members": "each client's training examples (the union of them for the student, the "
               "baselines and the proxy-only model)",
    "nonmembers": "the examples of the held-out files of the same packages",
    "reference_model": "the student architecture trained on the proxy alone, which holds "
                       "neither"}


def report_markdown(results: dict[str, Any]) -> str:
    """report.md: the table of BLEU, chrF, ROUGE-L and perplexity, the bytes and the attacks."""
    cfg = results["config"]
    lines = [f"# fd simulate --task seq2seq ({cfg['num_clients']} institutions)", "",
             f"Task: {cfg['data']}. fd {results['fd_version']}. Scores on the union of the "
             "institutions' held-out files; own / others for each specialist.", "",
             "| model | architecture | BLEU | chrF | ROUGE-L | perplexity | sent |",
             "|---|---|---|---|---|---|---|"]

    def row(name, s, sent=""):
        u = s["union"]
        lines.append(f"| {name} | {s.get('architecture', '')} | {u['bleu']:.2f} | "
                     f"{u['chrf']:.2f} | {u['rouge_l']:.2f} | {u['perplexity']:.2f} | {sent} |")

    for s in results["specialists"]:
        row(f"specialist {s['client_id']} ({s['domain']})", s, f"{s['uploaded_bytes']:,} B up")
        if s["others"]:
            o, w = s["others"], s["own"]
            lines.append(f"| &nbsp;&nbsp;own / others | | {w['bleu']:.2f} / {o['bleu']:.2f} | "
                         f"{w['chrf']:.2f} / {o['chrf']:.2f} | {w['rouge_l']:.2f} / "
                         f"{o['rouge_l']:.2f} | {w['perplexity']:.2f} / {o['perplexity']:.2f} "
                         "| |")
    row("specialists (mean)", results["specialists_mean"])
    final = results["student"]
    for name, s in results["students"].items():
        if name == "proxy_targets":
            if final["round"] > 1:
                row("student (proxy targets, round 1)", s)
                name = f"proxy_targets, round {final['round']}"
            s = final
        row(f"student ({name.replace('_', ' ')})", s,
            f"{results['bytes']['total']:,} B" if s is final else "")
    row("proxy only", results["proxy_only"])
    row("centralized (private + proxy)", results["centralized"])
    for name, s in results["baselines"].items():
        row(name, s, f"{s['total_bytes']:,} B")
    lines += rounds_md(results["rounds"], {"BLEU": lambda s: s["union"]["bleu"],
                                           "chrF": lambda s: s["union"]["chrf"],
                                           "ROUGE-L": lambda s: s["union"]["rouge_l"]})
    lines += evidence_md(results)
    return "\n".join(lines) + "\n"
