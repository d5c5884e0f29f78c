"""Instruction data for causal LMs: prompts carry no rows and no loss, rendered with the
tokenizer's chat template; a messages column and prompt/response columns; the bundle records
which tokens carry rows, and the student reads the columns from it."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fdcli.bundle import read_bundle
from fdcli.chat import chat_blocks
from fdcli.data import DataError, load_local
from fdcli.lm import Turn, iter_token_logits, load_lm, pad_blocks, row_count, train_bpe_tokenizer

from .helpers import fd, fd_ok

WORDS = ["court", "ruling", "appeal", "judge", "statute", "party", "claim", "order"]
#: a ChatML template like SmolLM's and Qwen's
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _rows(n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    out = []
    for _ in range(n):
        q = " ".join(r.choice(WORDS) for _ in range(6))
        out.append({"prompt": f"sort: {q}", "response": " ".join(sorted(q.split()))})
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    for name, seed, n in (("a", 1, 32), ("proxy", 2, 24), ("test", 3, 8)):
        rows = _rows(n, seed)
        (root / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        (root / f"{name}-msg.jsonl").write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": x["prompt"]},
            {"role": "assistant", "content": x["response"]}]}) + "\n" for x in rows))
    texts = [x["prompt"] + " " + x["response"] for x in _rows(40, 9)]
    train_bpe_tokenizer(texts + ["<|im_start|>user\n<|im_end|>\n"], root / "tok",
                        vocab_size=300)
    cfg = json.loads((root / "tok" / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TEMPLATE
    (root / "tok" / "tokenizer_config.json").write_text(json.dumps(cfg))
    (root / "llama.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 128}))
    lm = load_lm(root / "llama.json", tokenizer=root / "tok")
    lm.model.save_pretrained(str(root / "base"))
    lm.tokenizer.save_pretrained(str(root / "base"))
    return root


def test_chat_blocks_render_with_the_template_and_start_at_the_response(world):
    tok = load_lm(world / "base").tokenizer
    assert tok.chat_template == TEMPLATE
    ds = load_local(world / "a-msg.jsonl", None)
    tb = chat_blocks(ds, "a-msg.jsonl", tok, max_length=200)
    first = ds[0]["messages"]
    prompt = tok.apply_chat_template(first[:1], tokenize=True,
                                     add_generation_prompt=True)["input_ids"]
    whole = tok.apply_chat_template(first, tokenize=True)["input_ids"]
    b = tb.blocks[0]
    assert isinstance(b, Turn) and list(b) == list(whole) and b.start == len(prompt)
    # the response's tokens are the rows: its text and the end of the turn
    assert tok.decode(b[b.start:]) == first[1]["content"] + "<|im_end|>\n"
    assert row_count(b) == len(whole) - len(prompt) and tb.chat and tb.documents == 32
    # the same examples as prompt/response columns: the same blocks and fingerprint
    pr = chat_blocks(load_local(world / "a.jsonl", None), "a.jsonl", tok, prompt_column="prompt",
                     response_column="response", max_length=200)
    assert pr.fingerprint == tb.fingerprint and [b.start for b in pr.blocks] == \
        [b.start for b in tb.blocks]


def test_prompt_positions_carry_no_rows_and_no_loss(world):
    lm = load_lm(world / "base")
    turn = Turn([5, 6, 7, 8, 9, 10], start=4)  # prompt 5 6 7 8, response 9 10
    raw = [5, 6, 7]
    batch = pad_blocks([turn, raw])
    assert batch["row_mask"].tolist() == [[False, False, False, True, True, False],
                                          [True, True, True, False, False, False]]
    # position 3 predicts 9 and position 4 predicts 10: the response's tokens only
    assert batch["next_ids"][0][batch["row_mask"][0]].tolist() == [9, 10]
    _, logits, counts, nxt = next(iter_token_logits(lm, [turn, raw]))
    assert counts.tolist() == [2, 3] and logits.shape[0] == 5 and nxt.tolist() == [9, 10, 6, 7,
                                                                                  -100]
    # the trainer's loss is cross-entropy over those positions alone
    from transformers import TrainingArguments

    from fdcli.training import _trainer_class

    args = TrainingArguments(output_dir=str(world / "trainer"), use_cpu=True, report_to=[])
    trainer = _trainer_class()(model=lm.model, args=args)
    trainer.fd_vocab = lm.vocab_size
    single = pad_blocks([turn])
    loss = trainer.compute_loss(lm.model, dict(single))
    with torch.no_grad():
        full = lm.model(input_ids=single["input_ids"]).logits[0, :, :lm.vocab_size]
    want = torch.nn.functional.cross_entropy(full[3:5], torch.tensor([9, 10]))
    assert torch.allclose(loss.detach(), want, atol=1e-5)


def test_chat_pipeline_through_the_commands(world):
    w = world
    common = ["--max-length", "96"]
    fd_ok("train-specialist", w / "a-msg.jsonl", "--model", w / "base", "--task", "causal-lm",
          *common, "--epochs", "1", "--lr", "5e-3", "--lora-rank", "4", "--out", w / "spec")
    meta = json.loads((w / "spec" / "fd.json").read_text())
    tb = chat_blocks(load_local(w / "a-msg.jsonl", None), "a", load_lm(w / "base").tokenizer,
                     max_length=96)
    assert meta["config"]["rows"] == "response tokens"
    assert meta["train_tokens"] == sum(row_count(b) for b in tb.blocks)
    r = fd_ok("emit-logits", w / "spec", w / "proxy.jsonl", "--prompt-column", "prompt",
              "--response-column", "response", "--out", w / "bundle", "--json")
    proxy = chat_blocks(load_local(w / "proxy.jsonl", None), "p", load_lm(w / "base").tokenizer,
                        prompt_column="prompt", response_column="response", max_length=96)
    m = read_bundle(w / "bundle").manifest
    assert json.loads(r.stdout)["rows"] == m.rows == sum(row_count(b) for b in proxy.blocks)
    assert m.rows < proxy.tokens  # prompt tokens carry no rows
    assert m.producer.config["rows"] == "response tokens"
    assert (m.producer.config["prompt_column"], m.producer.config["response_column"]) == \
        ("prompt", "response")
    fd_ok("aggregate", w / "bundle", "--out", w / "teacher")
    assert read_bundle(w / "teacher").manifest.producer.config["rows"] == "response tokens"
    # the student reads the columns from the bundle: no column options needed
    fd_ok("distill", w / "llama.json", w / "proxy.jsonl", w / "teacher", "--tokenizer",
          w / "base", "--epochs", "1", "--lr", "5e-3", "--out", w / "student")
    assert json.loads((w / "student" / "fd.json").read_text())["proxy_tokens"] == m.rows
    r = fd_ok("evaluate", w / "student", w / "test-msg.jsonl", "--json")
    got = json.loads(r.stdout)
    assert got["rows"] == "response tokens" and got["tokens"] > 0
    # a messages proxy is a different proxy set than the text of those rows
    r = fd("distill", w / "llama.json", w / "a.jsonl", w / "teacher", "--tokenizer",
           w / "base", "--epochs", "1", "--out", w / "student-2")
    assert r.exit_code == 1 and "differ from the ones" in r.output


@pytest.mark.parametrize("rows, args, message", [
    ([{"messages": [{"role": "user", "content": "hi"}]}], [],
     "ending with the assistant's"),
    ([{"messages": "hello"}], [], "expected a list of two or more"),
    ([{"prompt": "a", "response": "b"}], ["--prompt-column", "prompt"],
     "--prompt-column and --response-column go together"),
    ([{"prompt": "a", "response": "b"}], ["--prompt-column", "question",
                                          "--response-column", "response"],
     "prompt column 'question' not found"),
])
def test_bad_instruction_data_is_refused_by_name(world, tmp_path, rows, args, message):
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = fd("train-specialist", data, "--model", world / "base", "--task", "causal-lm",
           *args, "--out", tmp_path / "x")
    assert r.exit_code == 1, r.output
    assert message in " ".join(r.output.split()) and str(data) in r.output
    assert not (tmp_path / "x").exists()


def test_a_prompt_longer_than_max_length_is_dropped(world):
    tok = load_lm(world / "base").tokenizer
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": "court " * 80, "response": "order"},
                                     {"prompt": "sort: judge", "response": "judge"}])
    tb = chat_blocks(ds, "d", tok, prompt_column="prompt", response_column="response",
                     max_length=64)
    assert len(tb.blocks) == 1 and tb.dropped == 1
    with pytest.raises(DataError, match="no example keeps a response token"):
        chat_blocks(ds.select([0]), "d", tok, prompt_column="prompt",
                    response_column="response", max_length=64)


def test_generate_writes_responses_that_teachers_then_emit_on(world, tmp_path):
    w = world
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": x["prompt"]}) + "\n"
                               for x in _rows(6, 7)))
    r = fd_ok("generate", w / "base", prompts, "--task", "causal-lm", "--max-target-length",
              "5", "--out", tmp_path / "proxy.jsonl", "--json")
    made = json.loads(r.stdout)
    rows = [json.loads(x) for x in (tmp_path / "proxy.jsonl").read_text().splitlines()]
    assert made["examples"] == len(rows) == 6
    assert [x["prompt"] for x in rows] == [x["prompt"] for x in _rows(6, 7)]
    tok = load_lm(w / "base").tokenizer
    assert all(len(tok(x["response"], add_special_tokens=False)["input_ids"]) <= 5 + 2
               for x in rows)
    # a messages proxy gets the assistant's reply appended
    msgs = tmp_path / "msgs.jsonl"
    msgs.write_text(json.dumps({"messages": [{"role": "user", "content": "sort: a b"}]}) + "\n")
    fd_ok("generate", w / "base", msgs, "--task", "causal-lm", "--max-target-length", "3",
          "--out", tmp_path / "msgs-out.jsonl")
    turns = json.loads((tmp_path / "msgs-out.jsonl").read_text())["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    r = fd("generate", w / "base", prompts, "--task", "causal-lm", "--source-column", "x",
           "--out", tmp_path / "x.jsonl")
    assert r.exit_code == 1 and "--source-column and --max-source-length are seq2seq's" in \
        r.output
    r = fd("generate", w / "base", prompts, "--task", "causal-lm", "--max-target-length",
           "500", "--out", tmp_path / "y.jsonl")
    assert r.exit_code == 1 and "reads at most 128 positions" in r.output
    assert not (tmp_path / "y.jsonl").exists()
