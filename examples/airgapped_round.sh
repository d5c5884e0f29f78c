#!/usr/bin/env bash
# One air-gapped round of federated distillation with the five fd commands, by hand.
#
#   bash examples/airgapped_round.sh [WORKDIR]        (default: ./fd-airgapped)
#
# Three institutions (hospital-a, hospital-b, hospital-c) each hold private support tickets
# labelled billing / outage / praise. Everyone has the same public proxy set of unlabelled
# tickets. Each institution trains a specialist and writes a logit bundle; the bundles travel
# to the coordinator "on a USB stick" (a folder copy); the coordinator verifies them,
# aggregates them, distills a student and evaluates it on a held-out test set.
# The data are generated here, and the models are tiny BERTs built from a config, with a
# word-level tokenizer trained on the fly: nothing is downloaded.
set -euo pipefail
export HF_HUB_OFFLINE=1
W=${1:-fd-airgapped}
EPOCHS=${EPOCHS:-20}
rm -rf "$W" && mkdir -p "$W"/{shared,hospital-a,hospital-b,hospital-c,coordinator/usb}

python - "$W" <<'PY'
import json, random, sys
from pathlib import Path
from fdcli.models import train_word_tokenizer

w = Path(sys.argv[1])
words = {"billing": ["invoice", "charge", "refund", "payment", "bill"],
         "outage": ["down", "offline", "error", "crash", "timeout"],
         "praise": ["great", "thanks", "love", "excellent", "helpful"]}
filler = ["the", "service", "today", "my", "account", "is", "again", "please"]

def tickets(n, seed, skew=None):
    rng = random.Random(seed)
    rows = ["text,label"]
    for _ in range(n):
        label = rng.choices(list(words), weights=skew or [1, 1, 1])[0]
        ws = rng.sample(words[label], 2) + rng.sample(filler, 4)
        rng.shuffle(ws)
        rows.append(f"{' '.join(ws)},{label}")
    return "\n".join(rows) + "\n"

# private data, each institution skewed towards one label
for i, (name, skew) in enumerate([("hospital-a", [6, 1, 1]), ("hospital-b", [1, 6, 1]),
                                  ("hospital-c", [1, 1, 6])]):
    (w / name / "private.csv").write_text(tickets(120, seed=i, skew=skew))
# the public proxy set (labels dropped) and the coordinator's held-out test set
proxy = tickets(150, seed=10).splitlines()
(w / "shared" / "proxy.csv").write_text(
    "\n".join(["text"] + [r.rsplit(",", 1)[0] for r in proxy[1:]]) + "\n")
(w / "coordinator" / "test.csv").write_text(tickets(150, seed=11))
# a shared model recipe: a tiny BERT config and a tokenizer trained on the public proxy text
texts = [r.rsplit(",", 1)[0] for r in proxy[1:]]
train_word_tokenizer(texts, w / "shared" / "tokenizer")
(w / "shared" / "bert-tiny.json").write_text(json.dumps({
    "model_type": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}))
PY

for site in hospital-a hospital-b hospital-c; do
  echo "== $site: train a specialist on private data, then emit logits on the proxy set"
  fd train-specialist "$W/$site/private.csv" --model "$W/shared/bert-tiny.json" \
     --tokenizer "$W/shared/tokenizer" --client-id "$site" --epochs "$EPOCHS" --lr 3e-3 \
     --out "$W/$site/specialist"
  fd emit-logits "$W/$site/specialist" "$W/shared/proxy.csv" --out "$W/$site/bundle"
  cp -r "$W/$site/bundle" "$W/coordinator/usb/$site"      # the USB stick
done

echo "== coordinator: verify, aggregate, distill, evaluate"
for site in hospital-a hospital-b hospital-c; do fd verify "$W/coordinator/usb/$site"; done
fd aggregate "$W"/coordinator/usb/hospital-{a,b,c} --rule confidence \
   --out "$W/coordinator/teacher"
fd distill "$W/shared/bert-tiny.json" "$W/shared/proxy.csv" "$W/coordinator/teacher" \
   --tokenizer "$W/shared/tokenizer" --epochs "$EPOCHS" --lr 3e-3 --out "$W/coordinator/student"
for site in hospital-a hospital-b hospital-c; do
  echo "-- specialist $site"; fd evaluate "$W/$site/specialist" "$W/coordinator/test.csv"
done
echo "-- student"
fd evaluate "$W/coordinator/student" "$W/coordinator/test.csv" --json | tee "$W/coordinator/student-eval.json"
