"""The five commands by hand on causal LMs, with fd distill's defaults: on a corpus fd has not
been tuned on (the standard library's packages as institutions, its top-level modules as the
proxy, one shared tokenizer, GPT-2 and Llama configs), the distilled student must beat the same
student trained on the proxy text alone, and the average specialist."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from fdcli.stages.lm import default_temperature
from fdcli.stages.token_corpus import stdlib_domains, write_stdlib_corpus

from .helpers import fd_ok

TRAIN = ["--epochs", "3", "--lr", "2e-3"]


@pytest.mark.parametrize("encoding,tail,want", [
    ({"name": "topk", "k": 16}, 0.86, 2.0),      # flat: T = 2 measured better
    ({"name": "topk", "k": 16}, 0.75, 1.0),      # at the threshold: 1
    ({"name": "topk", "k": 16}, 0.58, 1.0),      # sharper: T = 1 measured better
    ({"name": "topk", "k": 16}, None, 1.0),      # no fidelity recorded
    ({"name": "dense"}, 0.0, 1.0),
    ({"name": "sample", "draws": 8, "temperature": 1.5}, 0.9, 1.5),  # its draw temperature
])
def test_default_temperature_follows_the_teacher(encoding, tail, want):
    manifest = SimpleNamespace(encoding=encoding, fidelity={"mean_tail_mass": tail})
    assert default_temperature(manifest) == want


def _fd(*args) -> dict:
    result = fd_ok(*args)
    return {"stdout": result.stdout, "stderr": result.stderr}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-defaults")
    c = write_stdlib_corpus(root, stdlib_domains(2), client_chars=40_000, proxy_chars=80_000,
                            test_chars=8_000, vocab_size=1024, max_length=64)
    union = root / "data" / "test-union.jsonl"
    union.write_text("".join(p.read_text() for p in c.tests.values()))
    lm = ["--task", "causal-lm", "--tokenizer", c.tokenizer]
    specialists = []
    for i, (data, arch) in enumerate(zip(c.clients, ("gpt2", "llama"))):
        spec = root / f"specialist-{i}"
        _fd("train-specialist", data, "--model", c.configs[arch], *lm, *TRAIN, "--out", spec)
        _fd("emit-logits", spec, c.proxy, *lm, "--out", root / f"usb-{i}")
        specialists.append(spec)
    _fd("aggregate", root / "usb-0", root / "usb-1", "--out", root / "teacher")
    _fd("train-specialist", c.proxy, "--model", c.configs["gpt2"], *lm, *TRAIN,
        "--out", root / "proxy-only")
    return root, c, union, lm, specialists


def _ppl(model, data, lm) -> float:
    return json.loads(_fd("evaluate", model, data, *lm, "--json")["stdout"])["perplexity"]


def _tail(bundle) -> float:
    return json.loads((bundle / "manifest.json").read_text())["fidelity"]["mean_tail_mass"]


def test_distill_defaults_beat_the_proxy_text_alone_and_the_mean_specialist(world):
    root, c, union, lm, specialists = world
    bundle = json.loads((root / "usb-0" / "manifest.json").read_text())
    assert (bundle["encoding"]["name"], bundle["encoding"]["k"]) == ("topk", 16)
    run = _fd("distill", c.configs["gpt2"], c.proxy, root / "teacher", *lm, *TRAIN,
              "--out", root / "student")
    meta = json.loads((root / "student" / "fd.json").read_text())
    # T = 2: this teacher is flat (tail above 0.75, asserted below)
    assert (meta["config"]["temperature"], meta["config"]["hard_weight"]) == (2.0, 0.5)
    # top-16 ids of teachers this small hold little of their mass: fd distill says so, and
    # that the proxy text supplies the rest
    tail = _tail(root / "teacher")
    assert tail > 0.75
    message = " ".join(run["stderr"].split())
    assert f"warning: {root / 'teacher'}: its 16 ids per token hold {1 - tail:.0%} of the " \
        f"teacher's probability (mean tail mass {tail:.2f}, above 0.5)" in message
    assert "(--hard-weight 0.5) supply the rest" in message

    student, proxy_only = _ppl(root / "student", union, lm), _ppl(root / "proxy-only", union, lm)
    mean_specialist = sum(_ppl(s, union, lm) for s in specialists) / len(specialists)
    assert student < 0.95 * proxy_only, (student, proxy_only)
    assert student < 0.95 * mean_specialist, (student, mean_specialist)


def test_pure_top_k_kd_is_warned_about_and_loses_to_the_proxy_text_alone(world):
    """The old defaults (no cross-entropy) on the same teacher: fd warns that the text term
    is off, and the student is worse than the proxy text alone would make it."""
    root, c, union, lm, _ = world
    run = _fd("distill", c.configs["gpt2"], c.proxy, root / "teacher", *lm, *TRAIN,
              "--hard-weight", "0", "--out", root / "student-kd-only")
    message = " ".join(run["stderr"].split())
    assert "warning:" in message and "use --hard-weight 0.5 (the default)" in message
    assert _ppl(root / "student-kd-only", union, lm) > _ppl(root / "proxy-only", union, lm)
