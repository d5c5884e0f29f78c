#!/usr/bin/env bash
# Air-gapped rounds of federated distillation with the five fd commands, by hand.
#
#   bash examples/airgapped_round.sh [WORKDIR]        (default: ./fd-airgapped)
#   ROUNDS=1 bash examples/airgapped_round.sh         (one-shot: a single trip of the stick)
#
# Three institutions (hospital-a, hospital-b, hospital-c) each hold private support tickets
# labelled billing / outage / praise; they work at the same time, each on its own machine. Everyone has the same public proxy set of unlabelled
# tickets. Round 1: each institution trains a specialist and writes a logit bundle that
# declares its label counts; the bundles travel to the coordinator "on a USB stick" (a folder
# copy); the coordinator verifies them, aggregates them with the coverage rule, sharpened (the
# consensus), and distills a student. Round 2 (and later): the consensus travels back; each institution
# updates its specialist from the consensus and its private data and writes a new bundle; the
# coordinator aggregates again and continues the student. See docs/rounds.md.
# The data are generated here, and the models are tiny BERTs built from a config, with a
# word-level tokenizer trained on the fly: nothing is downloaded.
set -euo pipefail
export HF_HUB_OFFLINE=1
W=${1:-fd-airgapped}
EPOCHS=${EPOCHS:-20}
ROUNDS=${ROUNDS:-2}
SITES="hospital-a hospital-b hospital-c"
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

C="$W/coordinator"
# what one institution does in round r, on its own machine
institution() {
  local site=$1 r=$2
  if [ "$r" = 1 ]; then
    echo "== round 1, $site: train a specialist on private data, then emit logits"
    fd train-specialist "$W/$site/private.csv" --model "$W/shared/bert-tiny.json" \
       --tokenizer "$W/shared/tokenizer" --client-id "$site" --epochs "$EPOCHS" --lr 3e-3 \
       --out "$W/$site/specialist-1"
  else
    echo "== round $r, $site: digest the consensus that came back, revisit private data"
    cp -r "$C/consensus-$((r - 1))" "$W/$site/consensus-$((r - 1))"   # the stick comes back
    fd train-specialist "$W/$site/private.csv" --model "$W/$site/specialist-$((r - 1))" \
       --teacher "$W/$site/consensus-$((r - 1))" --proxy "$W/shared/proxy.csv" \
       --client-id "$site" --epochs "$EPOCHS" --lr 3e-3 --out "$W/$site/specialist-$r"
  fi
  fd emit-logits "$W/$site/specialist-$r" "$W/shared/proxy.csv" --declare-label-counts \
     --client-id "$site" --out "$W/$site/bundle-$r"
  mkdir -p "$C/usb-$r" && cp -r "$W/$site/bundle-$r" "$C/usb-$r/$site"   # the USB stick
}

for r in $(seq 1 "$ROUNDS"); do
  # the institutions work at the same time; the coordinator waits for every stick
  pids=()
  for site in $SITES; do institution "$site" "$r" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid"; done   # set -e: a failed institution stops here

  echo "== round $r, coordinator: verify, aggregate, distill"
  for site in $SITES; do fd verify "$C/usb-$r/$site"; done
  fd aggregate "$C/usb-$r"/hospital-{a,b,c} --rule coverage --sharpen 0.1 \
     --out "$C/consensus-$r"
  if [ "$r" = 1 ]; then start="$W/shared/bert-tiny.json"; else start="$C/student-$((r - 1))"; fi
  fd distill "$start" "$W/shared/proxy.csv" "$C/consensus-$r" \
     --tokenizer "$W/shared/tokenizer" --epochs "$EPOCHS" --lr 3e-3 --out "$C/student-$r"
done

for site in $SITES; do
  echo "-- specialist $site, round $ROUNDS"
  fd evaluate "$W/$site/specialist-$ROUNDS" "$C/test.csv"
done
for r in $(seq 1 "$ROUNDS"); do
  echo "-- student, round $r"
  fd evaluate "$C/student-$r" "$C/test.csv" --json | tee "$C/student-$r-eval.json"
done
