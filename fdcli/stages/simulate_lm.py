"""fd simulate --task causal-lm: a federation of language models on one machine.

Every machine with Python has a real, varied corpus: the standard library's source. Each
institution holds the files of one package (asyncio, email, xml, ...), a domain of its own; a
few files of each package are held out as that domain's test text. The shared proxy set is the
standard library's top-level modules, which no institution holds. ``--data FILE`` runs on the
user's own corpus instead (:mod:`fdcli.stages.token_corpus`). One tokenizer is trained
locally on the proxy (byte-level BPE, saved as a normal tokenizer folder) and shared by all.

Specialists are small causal LMs trained from scratch (GPT-2 and Llama configs in turn), they
emit top-k token bundles on the proxy, the coordinator aggregates them per token, and a student
is distilled on the proxy. It is compared with each specialist, with the same student trained on
the proxy alone (no teachers), and with the student trained on the union of the private text
(centralized, the upper bound), by perplexity on every domain's test text.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..outputs import fresh_dir
from ..results import write_results
from .federation import dir_bytes, flagged_clients, round_dir
from .lm import LM_HARD_WEIGHT
from .dp_tokens import dp_lines, token_dp_variants
from .token_evidence import evidence_md, token_scores
from .token_corpus import LM_ARCHITECTURES, read_texts, write_texts
from .token_rounds import rounds_md


def simulate_lm(out: str | Path, *, num_clients: int = 4, rule: str = "confidence",
                compare_rules: Sequence[str] = ("mean",),
                architectures: Sequence[str] = ("gpt2", "llama"), student: str = "gpt2",
                client_chars: int = 300_000, proxy_chars: int = 600_000,
                test_chars: int | None = None, vocab_size: int = 2048,
                max_length: int = 64, k: int = 16, epochs: float = 2.0, distill_epochs: float = 2.0,
                learning_rate: float = 2e-3, batch_size: int = 16,
                temperature: float | None = None, hard_weight: float = LM_HARD_WEIGHT,
                fedavg_rounds: int = 8, fedavg_local_epochs: float = 0.5,
                rounds: int = 3, round_epochs: float = 1.0, round_distill_epochs: float = 1.0,
                digest_weight: float = 0.2, data: str | Path | None = None,
                text_column: str | None = None, domain_column: str | None = None,
                label_column: str | None = None, alpha: float = 1.0,
                proxy_fraction: float = 0.2, split: str | None = None,
                validation_fraction: float = 0.1, poison: float = 0.0,
                poison_kind: str = "random", privacy: bool = True,
                dp_epsilons: Sequence[float] = (), dp_delta: float = 1e-5,
                max_grad_norm: float = 1.0, seed: int = 0, seeds: int = 1,
                overwrite: bool = False,
                progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the language-model federation and write ``out/results.json``; returns the results.
    Each client is tested on ``test_chars`` characters of its held-out files (default: 40,000, or
    ``client_chars`` if fewer).

    Perplexities are per domain (each client's held-out files) and their geometric mean
    (``mean_ppl``); bytes are the top-``k`` bundles each client uploads. The student is
    distilled with ``fd distill``'s defaults: KD mixed half and half with next-token
    cross-entropy on the proxy text (with teachers this small, pure top-k KD leaves the
    student's tail unconstrained and scores below the proxy-only reference), at the
    temperature ``distill_lm`` picks from the teacher when ``temperature`` is None, recorded
    per student (docs/token-distillation.md).

    Beside it: Flower FedAvg of the student architecture on the institutions' own text, fp32
    and 8-bit (``fedavg_rounds`` rounds of ``fedavg_local_epochs``: by default 4 epochs per
    client, twice the specialists', so that its curve can reach the student's perplexity),
    with the bytes it sends to reach the student's perplexity; and,
    with ``privacy``, membership-inference attacks on every model, the held-out files being
    the non-members. ``out/report.md`` holds the tables.

    ``rounds`` > 1 continues the federation (:mod:`fdcli.stages.token_rounds`): each client
    digests the last consensus (``digest_weight``) while it revisits its text for
    ``round_epochs``, emits again, and the student continues on the new consensus for
    ``round_distill_epochs``. The main rule's student is then the last round's; the other
    rules are compared in round 1; the bytes count every round, up and down.

    ``data`` runs on the user's corpus instead of the standard library
    (:func:`~fdcli.stages.token_corpus.write_user_corpus`: ``text_column``, and
    ``domain_column`` or ``label_column`` with ``alpha``, ``proxy_fraction``, ``split``);
    ``client_chars``, ``proxy_chars`` and ``test_chars`` then do not apply.

    ``validation_fraction`` of each institution's private documents (of the standard
    library: its files) is held out as its validation text; every round
    records the student's geometric-mean perplexity on it (``validation_perplexity``), the
    figure the token defaults were chosen by. 0 for none.

    ``poison`` is the fraction of clients that are hostile: every bundle they send is
    replaced by ``poison_kind`` rows (:data:`~fdcli.poison.TOKEN_POISON_KINDS`); the results
    name them and the clients the last consensus's outlier report flagged.

    ``dp_epsilons`` adds what DP costs (:mod:`fdcli.stages.dp_tokens`): at each epsilon
    (``dp_delta``, ``max_grad_norm``) the specialists train with DP-SGD on the same text and
    settings, and a one-shot student is distilled from their bundles; scored, and with
    ``privacy`` attacked, as the others (results' ``dp``, report.md's DP table).

    ``seeds`` > 1 runs the whole comparison at ``seeds`` consecutive seeds from ``seed``
    into ``out/seed-<s>`` and combines them (:mod:`fdcli.stages.token_seeds`)."""
    if seeds > 1:
        settings = {k: v for k, v in locals().items() if k not in ("out", "seeds", "seed",
                                                                  "overwrite", "log")}
        from .token_seeds import token_over_seeds

        return token_over_seeds(simulate_lm, out, task="causal-lm", seeds=seeds, first_seed=seed,
                                overwrite=overwrite, log=log, **settings)
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    from ..lm import load_lm, text_blocks
    from ..data import load_local
    from ..training import fit_lm
    from .aggregate import aggregate
    from .lm import distill_lm, emit_token_logits, token_metrics, train_lm_specialist
    from .token_evidence import (TokenTask, bytes_report, check_setup, fedavg_baselines,
                                 privacy_report)
    from ..poison import poison_bundle
    from .token_corpus import stdlib_domains, write_stdlib_corpus, write_user_corpus
    from .token_rounds import (TokenStages, check_rounds, first_round, later_rounds,
                               round_curve, token_poisoned)

    check_setup(LM_ARCHITECTURES, architectures, student, num_clients)
    check_rounds(rounds, round_epochs, round_distill_epochs, digest_weight)
    poisoned = token_poisoned(num_clients, poison, poison_kind, seed)
    test_chars = min(40_000, client_chars) if test_chars is None else test_chars
    if data is None and any(v is not None for v in (text_column, domain_column, label_column,
                                                     split)):
        raise ValueError("text_column, domain_column, label_column and split describe --data; "
                         "give --data FILE, or leave them out for the standard library")
    config = {"task": "causal-lm", "num_clients": num_clients,
              "data": "python standard library" if data is None else str(data),
              **({} if data is None else {
                  "text_column": text_column, "domain_column": domain_column,
                  "label_column": label_column, "alpha": alpha,
                  "proxy_fraction": proxy_fraction, "split": split}),
              "rule": rule, "compare_rules": list(compare_rules),
              "architectures": list(architectures), "student": student,
              "client_chars": client_chars, "proxy_chars": proxy_chars,
              "test_chars": test_chars, "vocab_size": vocab_size, "max_length": max_length,
              "k": k, "epochs": epochs, "distill_epochs": distill_epochs,
              "learning_rate": learning_rate, "batch_size": batch_size,
              "temperature": temperature, "hard_weight": hard_weight,
              "fedavg_rounds": fedavg_rounds, "fedavg_local_epochs": fedavg_local_epochs,
              "rounds": rounds, "round_epochs": round_epochs,
              "round_distill_epochs": round_distill_epochs, "digest_weight": digest_weight,
              "validation_fraction": validation_fraction,
              "poison": poison, "poison_kind": poison_kind if poisoned else None,
              "privacy": privacy, "dp_epsilons": list(dp_epsilons), "dp_delta": dp_delta,
              "max_grad_norm": max_grad_norm, "seed": seed}
    domains = stdlib_domains(num_clients) if data is None else None
    timing: dict[str, float] = {}
    train = dict(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                 max_length=max_length, progress=progress)
    with fresh_dir(out, overwrite) as root:
        t = time.perf_counter()
        if data is None:
            corpus = write_stdlib_corpus(root, domains, client_chars=client_chars,
                                         proxy_chars=proxy_chars, test_chars=test_chars,
                                         vocab_size=vocab_size, max_length=max_length,
                                         validation_fraction=validation_fraction)
        else:
            corpus = write_user_corpus(root, data, num_clients=num_clients,
                                       text_column=text_column, domain_column=domain_column,
                                       label_column=label_column, alpha=alpha,
                                       proxy_fraction=proxy_fraction, split=split,
                                       vocab_size=vocab_size, max_length=max_length,
                                       validation_fraction=validation_fraction, seed=seed)
            log(f"{data}: institutions {', '.join(corpus.domains)}")
        tests, proxy, tok, configs = (corpus.tests, corpus.proxy, corpus.tokenizer,
                                      corpus.configs)
        timing["data_and_tokenizer_s"] = time.perf_counter() - t

        shared = load_lm(configs[student], tokenizer=tok, seed=seed)

        def blocks_of(path: Path) -> list[list[int]]:
            return text_blocks(load_local(path, whole_text_files=True), str(path),
                               shared.tokenizer, max_length=max_length).blocks

        test_blocks = {pkg: blocks_of(path) for pkg, path in tests.items()}
        val_blocks = {pkg: blocks_of(path) for pkg, path in corpus.validation.items()}

        def validate(model: Path) -> dict[str, float]:
            lm = load_lm(model)
            return {"perplexity": math.exp(sum(
                math.log(token_metrics(lm, b, batch_size)["perplexity"])
                for b in val_blocks.values()) / len(val_blocks))}

        def scores(model) -> dict[str, Any]:
            lm = load_lm(model) if isinstance(model, Path) else model
            per = {pkg: token_metrics(lm, b, batch_size) for pkg, b in test_blocks.items()}
            ppl = {pkg: round(m["perplexity"], 3) for pkg, m in per.items()}
            return {"ppl_by_domain": ppl,
                    "mean_ppl": round(math.exp(sum(math.log(p) for p in ppl.values())
                                               / len(ppl)), 3),
                    "next_token_accuracy": round(sum(m["next_token_accuracy"] * m["tokens"]
                                                     for m in per.values())
                                                 / sum(m["tokens"] for m in per.values()), 4)}

        sent = [0] * num_clients  # the bundles each client has sent: its round

        def emit(model: Path, bundle: Path, i: int):
            """Client i's bundle: its model's, or what a hostile client sends instead."""
            sent[i] += 1
            emitted = emit_token_logits(model, proxy, bundle, k=k, client_id=f"client-{i}",
                                        max_length=max_length, seed=seed, progress=progress)
            if i in poisoned:
                poison_bundle(bundle, poison_kind, seed=seed + 1000 * sent[i] + i)
            return emitted

        specialists, uploads = [], []
        t = time.perf_counter()
        for i, pkg in enumerate(corpus.domains):
            arch = architectures[i % len(architectures)]
            model_dir = root / "specialists" / f"client-{i}"
            log(f"client {i} ({pkg}): training a {arch}")
            meta = train_lm_specialist(corpus.clients[i], configs[arch],
                                       model_dir, tokenizer=tok, client_id=f"client-{i}",
                                       **train)
            bundle = root / "bundles" / f"client-{i}"
            m = emit(model_dir, bundle, i)
            uploads.append(dir_bytes(bundle))
            specialists.append({"client_id": f"client-{i}", "domain": pkg, "architecture": arch,
                                "train_tokens": meta["train_tokens"], **scores(model_dir),
                                "uploaded_bytes": uploads[-1],
                                "bytes_per_token": round(uploads[-1] / m.rows, 3)})
        timing["specialists_s"] = time.perf_counter() - t
        bundles = [root / "bundles" / f"client-{i}" for i in range(num_clients)]
        students: dict[str, dict[str, Any]] = {}
        t = time.perf_counter()
        for r in [rule, *[c for c in compare_rules if c != rule]]:
            log(f"aggregating with rule {r!r} and distilling a {student}")
            teacher = root / "teachers" / r
            aggregate(bundles, teacher, rule=r, k=k, seed=seed, progress=progress)
            student_dir = root / "students" / r
            meta = distill_lm(configs[student], proxy, teacher, student_dir,
                              tokenizer=tok, temperature=temperature, hard_weight=hard_weight,
                              epochs=distill_epochs, learning_rate=learning_rate,
                              batch_size=batch_size, seed=seed, progress=progress)
            students[r] = {"architecture": student,
                           "temperature": meta["config"]["temperature"], **scores(student_dir)}
        timing["aggregate_distill_s"] = time.perf_counter() - t
        stages = TokenStages(
            train=lambda i, start, model, consensus: train_lm_specialist(
                corpus.clients[i], start, model, tokenizer=tok, client_id=f"client-{i}",
                teacher=consensus, proxy=proxy, digest_weight=digest_weight,
                temperature=temperature, **{**train, "epochs": round_epochs}),
            emit=emit,
            aggregate=lambda bundles, teacher: aggregate(bundles, teacher, rule=rule, k=k,
                                                         seed=seed, progress=progress),
            distill=lambda start, teacher, model: distill_lm(
                start, proxy, teacher, model, tokenizer=tok, temperature=temperature,
                hard_weight=hard_weight, epochs=round_distill_epochs,
                learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                progress=progress),
            score=scores, perplexity=lambda s: s["mean_ppl"],
            validate=validate if val_blocks else None)
        records = [first_round(stages, uploads, students[rule], specialists,
                               timing["specialists_s"] + timing["aggregate_distill_s"],
                               root / "students" / rule)]
        t = time.perf_counter()
        records += later_rounds(root, rounds, num_clients, rule, stages, log)
        timing["later_rounds_s"] = time.perf_counter() - t
        final = {**students[rule], **records[-1]["student"], "round": rounds}
        t = time.perf_counter()
        log(f"references: a {student} on the proxy alone, and on the union of the private text")
        proxy_only = root / "proxy-only"
        train_lm_specialist(proxy, configs[student], proxy_only, tokenizer=tok,
                            client_id="proxy-only", **{**train, "epochs": distill_epochs})
        union = write_texts(root / "union.jsonl", [
            line for i in range(num_clients)
            for line in read_texts(corpus.clients[i])])
        central = root / "centralized"
        train_lm_specialist(union, configs[student], central, tokenizer=tok,
                            client_id="centralized", **train)
        timing["references_s"] = time.perf_counter() - t

        client_blocks = [blocks_of(path) for path in corpus.clients]
        task = TokenTask(
            load=lambda: load_lm(configs[student], tokenizer=tok, seed=seed),
            fit=lambda m, blocks, epochs_, seed_: fit_lm(
                m, blocks, epochs=epochs_, learning_rate=learning_rate, batch_size=batch_size,
                seed=seed_, progress=False),
            losses=lambda m, blocks: token_metrics(m, blocks, batch_size,
                                                   per_example=True)["losses"],
            perplexity=lambda m: scores(m)["mean_ppl"])
        t = time.perf_counter()
        baselines, curves = fedavg_baselines(
            task, client_blocks, root, rounds=fedavg_rounds, local_epochs=fedavg_local_epochs,
            seed=seed, score=lambda m: {"architecture": student, **scores(m)},
            meta={"fd_version": __version__, "task": "causal-lm", "architecture": student},
            log=log)
        timing["fedavg_s"] = time.perf_counter() - t
        target = final["mean_ppl"]
        results = {
            "fd_version": __version__, "config": config,
            "domains": corpus.domains,
            "specialists": specialists,
            "student": final, "students_by_rule": students, "rounds": records,
            "poisoned_clients": [f"client-{i}" for i in sorted(poisoned)],
            "outliers_flagged": flagged_clients(round_dir(root, rounds) / "teachers" / rule),
            "proxy_only": {"architecture": student, **scores(proxy_only)},
            "centralized": {"architecture": student, **scores(central)},
            "baselines": baselines, "curves": {"fd": round_curve(records), **curves},
            **bytes_report(records, curves, target),
        }
        if privacy:
            t = time.perf_counter()
            log("membership inference on every model")
            results["privacy"] = privacy_report(
                task, load_lm, client_blocks, list(test_blocks.values()),
                [root / "specialists" / f"client-{i}" for i in range(num_clients)],
                {"student": round_dir(root, rounds) / "students" / rule, "centralized": central,
                 "proxy_only": proxy_only, **{n: root / n for n in baselines}},
                proxy_only, seed=seed)
            results["privacy"].update(PRIVACY_NOTE)
            timing["privacy_s"] = time.perf_counter() - t
        if dp_epsilons:
            t = time.perf_counter()
            results["dp"] = token_dp_variants(
                root / "dp", dp_epsilons, clients=num_clients,
                train=lambda i, out, e: train_lm_specialist(
                    corpus.clients[i], configs[architectures[i % len(architectures)]], out,
                    tokenizer=tok, client_id=f"client-{i}", dp_epsilon=e, dp_delta=dp_delta,
                    max_grad_norm=max_grad_norm, **train),
                emit=lambda model, bundle, i: emit_token_logits(
                    model, proxy, bundle, k=k, client_id=f"client-{i}", max_length=max_length,
                    seed=seed, progress=progress),
                combine=lambda bundles, teacher, model: (
                    aggregate(bundles, teacher, rule=rule, k=k, seed=seed, progress=progress),
                    distill_lm(configs[student], proxy, teacher, model, tokenizer=tok,
                               temperature=temperature, hard_weight=hard_weight,
                               epochs=distill_epochs, learning_rate=learning_rate,
                               batch_size=batch_size, seed=seed, progress=progress)),
                score=scores,
                attack=(lambda models, model: privacy_report(
                    task, load_lm, client_blocks, list(test_blocks.values()), models,
                    {"student": model}, proxy_only, seed=seed)) if privacy else None,
                log=log)
            timing["dp_s"] = time.perf_counter() - t
        results["timing"] = {k: round(v, 2) for k, v in timing.items()}
        results = write_results(root, "causal-lm", results, token_scores(results, seed))
        (root / "report.md").write_text(report_markdown(results))
    return results


PRIVACY_NOTE = {
    "members": "blocks of each client's private text (the union of them for the student, "
               "the baselines and the proxy-only model)",
    "nonmembers": "blocks of the held-out files of the same packages",
    "reference_model": "the student architecture trained on the proxy alone, which holds "
                       "neither"}


def report_markdown(results: dict[str, Any]) -> str:
    """report.md: perplexity by domain, bytes, FedAvg's bytes to the student's perplexity and
    the membership-inference AUCs."""
    domains = list(results["domains"])
    lines = [f"# fd simulate --task causal-lm ({len(domains)} institutions)", "",
             f"fd {results['fd_version']}. Perplexity on each domain's held-out files; mean is "
             "the geometric mean.", "",
             "| model | architecture | " + " | ".join(domains) + " | mean | sent |",
             "|---" * (len(domains) + 4) + "|"]

    def row(name: str, s: dict, sent: str = "") -> None:
        lines.append(f"| {name} | {s['architecture']} | " + " | ".join(
            f"{s['ppl_by_domain'][d]:.2f}" for d in domains) + f" | {s['mean_ppl']:.2f} | "
            f"{sent} |")

    for s in results["specialists"]:
        row(f"specialist {s['client_id']} ({s['domain']})", s, f"{s['uploaded_bytes']:,} B up")
    rule, final = results["config"]["rule"], results["student"]
    for name, s in results["students_by_rule"].items():
        if name == rule:
            if final["round"] > 1:
                row(f"student ({name}, round 1)", s)
                name = f"{name}, round {final['round']}"
            s = final
        row(f"student ({name})", s, f"{results['bytes']['total']:,} B" if s is final else "")
    row("proxy only", results["proxy_only"])
    row("centralized", results["centralized"])
    for name, s in results.get("baselines", {}).items():
        row(name, s, f"{s['total_bytes']:,} B")
    lines += rounds_md(results["rounds"])
    lines += evidence_md(results)
    lines += dp_lines(results)
    return "\n".join(lines) + "\n"
