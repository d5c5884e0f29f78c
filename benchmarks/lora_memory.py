"""Training memory of a LoRA specialist against full fine-tuning of the same base, on the same
blocks, on this machine. Each variant runs in its own process: the base is loaded, then
fd's trainer (fdcli.training.fit_lm) runs ``--steps`` steps while a thread samples the
process's resident memory (/proc/self/status, every 10 ms). Reported per variant: RSS after
loading, peak RSS during training, their difference (what training adds: gradients, optimizer
state, activations), trainable parameters and seconds per step. Prints JSON.

Usage: python benchmarks/lora_memory.py --base FOLDER_OR_GGUF --data TEXT.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, threading, time
from fdcli.adapters import Tuning, lora_spec
from fdcli.data import load_local
from fdcli.lm import load_lm, text_blocks
from fdcli.training import fit_lm

base, data, variant, steps, batch, length = sys.argv[1:7]
steps, batch, length = int(steps), int(batch), int(length)

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
spec = lora_spec(8) if variant.startswith("lora") else None
tuning = Tuning(spec, gradient_checkpointing=variant.endswith("checkpointing"))
lm = tuning.load(load_lm, base, "causal-lm")
blocks = text_blocks(load_local(data, None, whole_text_files=True), data, lm.tokenizer,
                     max_length=length).blocks[:steps * batch]
loaded = rss()
peak = [loaded]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.01)
t = threading.Thread(target=sample, daemon=True)
t.start()
start = time.perf_counter()
fit_lm(lm, blocks, epochs=1, learning_rate=1e-4, batch_size=batch, seed=0, progress=False,
       gradient_checkpointing=tuning.gradient_checkpointing)
seconds = time.perf_counter() - start
done.set(); t.join()
trainable = sum(p.numel() for p in lm.model.parameters() if p.requires_grad)
print(json.dumps({"variant": variant, "rss_loaded_mib": round(loaded),
                  "peak_rss_training_mib": round(peak[0]),
                  "training_adds_mib": round(peak[0] - loaded),
                  "trainable_parameters": trainable, "steps": len(blocks) // batch,
                  "seconds_per_step": round(seconds / max(len(blocks) // batch, 1), 2)}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--variants", default="full,lora,lora+checkpointing")
    args = p.parse_args()
    rows = []
    for variant in args.variants.split(","):
        proc = subprocess.run([sys.executable, "-c", CHILD, args.base, args.data, variant,
                               str(args.steps), str(args.batch_size), str(args.max_length)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"[lora_memory] {rows[-1]}", file=sys.stderr, flush=True)
    full = next((r for r in rows if r["variant"] == "full"), None)
    out = {"command": " ".join(sys.argv), "variants": rows}
    if full:
        out["training_adds_vs_full"] = {r["variant"]: round(r["training_adds_mib"]
                                                            / full["training_adds_mib"], 3)
                                        for r in rows}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
