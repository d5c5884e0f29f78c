"""The documented protocol, run as written: the README's five commands and docs/rounds.md's
two rounds, each institution in its own folder with the folder names the docs use, bundles
carried to the coordinator's usb/NAME and the consensus carried back. A doc whose commands
stop working fails here. Also: the default client ids, which must differ between institutions
that follow the docs without --client-id, and the refusal of an id that two models share."""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from fdcli.bundle import BundleWriter, DenseCodec, read_bundle
from fdcli.identity import emitted_client_id, specialist_client_id
from fdcli.models import train_word_tokenizer

from .helpers import fd

from .test_pipeline import make_csv

ROOT = Path(__file__).resolve().parent.parent
DOC_SITE = "hospital-a"  # the institution the docs' commands show


def bash_blocks(path: Path, heading: str | None = None) -> list[list[tuple[str, list[str]]]]:
    """The fenced ``bash`` blocks of a markdown file (only the first after ``heading``, when
    given): per block, its commands as ``(where, argv)``, ``where`` being ``institution`` or
    ``coordinator`` after the last ``# at ...`` comment. Any other line fails: the blocks must
    stay runnable."""
    text = path.read_text()
    if heading is not None:
        text = text[text.index(heading):]
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    blocks = blocks[:1] if heading is not None else blocks
    out = []
    for block in blocks:
        commands, where = [], None
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("# at each institution"):
                where = "institution"
            elif line.startswith("# at the coordinator"):
                where = "coordinator"
            elif line.startswith("fd "):
                assert where, f"{path}: {line!r} comes before any '# at ...' comment"
                commands.append((where, shlex.split(line, comments=True)[1:]))
            else:
                assert not line, f"{path}: a line the docs test cannot run: {line!r}"
        out.append(commands)
    return out


def make_world(root: Path, sites: list[str]) -> None:
    """Each institution's folder (private.csv skewed towards one label, the public proxy.csv,
    the shared recipe.json and tokenizer/) and the coordinator's (the same public files,
    usb/ and a held-out test.csv)."""
    shared = root / "shared"
    shared.mkdir(parents=True)
    make_csv(shared / "all.csv", 60, seed=7)
    lines = (shared / "all.csv").read_text().splitlines()[1:]
    (shared / "proxy.csv").write_text("text\n" + "\n".join(r.rsplit(",", 1)[0] for r in lines)
                                      + "\n")
    train_word_tokenizer([r.rsplit(",", 1)[0] for r in lines], shared / "tokenizer")
    (shared / "recipe.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}))
    for i, name in enumerate(sites + ["coordinator"]):
        folder = root / name
        folder.mkdir()
        for f in ("proxy.csv", "recipe.json"):
            shutil.copy(shared / f, folder / f)
        shutil.copytree(shared / "tokenizer", folder / "tokenizer")
        if name == "coordinator":
            make_csv(folder / "test.csv", 30, seed=99)
            (folder / "usb").mkdir()
        else:
            make_csv(folder / "private.csv", 30, seed=i)


def invoke(folder: Path, argv: list[str], monkeypatch) -> str:
    monkeypatch.chdir(folder)
    args = [m for a in argv for m in (sorted(glob.glob(a)) if "*" in a else [a])]
    result = fd(*args)
    assert result.exit_code == 0, (f"fd {shlex.join(args)} in {folder.name}: {result.output}"
                                   f"{result.exception!r}")
    return result.output


def value(argv: list[str], option: str) -> str | None:
    return argv[argv.index(option) + 1] if option in argv else None


def run_protocol(root: Path, blocks, sites: list[str], monkeypatch, *,
                 client_ids: bool = True) -> None:
    """Run ``blocks`` in order: a block's institution commands at every site (its own name
    for the docs' ``hospital-a``, or with ``--client-id`` dropped), each emitted bundle
    copied to the coordinator's ``usb/SITE`` (replacing the last round's), then its
    coordinator commands; a ``--teacher`` an institution reads is carried back from the
    coordinator first."""
    for commands in blocks:
        for site in sites:
            for where, argv in commands:
                if where != "institution":
                    continue
                argv = [site if a == DOC_SITE else a for a in argv]
                if not client_ids and "--client-id" in argv:
                    at = argv.index("--client-id")
                    argv = argv[:at] + argv[at + 2:]
                teacher = value(argv, "--teacher")
                if teacher and not (root / site / teacher).exists():
                    shutil.copytree(root / "coordinator" / teacher, root / site / teacher)
                invoke(root / site, argv, monkeypatch)
                if argv[0] == "emit-logits":
                    usb = root / "coordinator" / "usb" / site
                    shutil.rmtree(usb, ignore_errors=True)
                    shutil.copytree(root / site / value(argv, "--out"), usb)
        for where, argv in commands:
            if where == "coordinator":
                invoke(root / "coordinator", argv, monkeypatch)


def provenance_ids(bundle: Path) -> list[str]:
    return [p["client_id"] for p in read_bundle(bundle).manifest.provenance]


def test_docs_blocks_parse():
    """The blocks the tests below run are the ones the docs hold, commands and all."""
    readme = bash_blocks(ROOT / "README.md", "### The five commands, by hand")
    assert [[argv[0] for _, argv in b] for b in readme] == [
        ["train-specialist", "emit-logits", "aggregate", "distill", "evaluate"]]
    rounds = bash_blocks(ROOT / "docs" / "rounds.md")
    assert [[(w, argv[0]) for w, argv in b] for b in rounds] == [
        [("institution", "train-specialist"), ("institution", "emit-logits"),
         ("coordinator", "aggregate"), ("coordinator", "distill")]] * 2
    for block in readme + rounds:  # every command an institution runs names it
        for where, argv in block:
            if where == "institution":
                assert value(argv, "--client-id") == DOC_SITE, argv


def test_readme_five_commands_as_written(tmp_path, monkeypatch):
    sites = ["hospital-a", "hospital-b", "hospital-c"]
    make_world(tmp_path, sites)
    run_protocol(tmp_path, bash_blocks(ROOT / "README.md", "### The five commands, by hand"),
                 sites, monkeypatch)
    c = tmp_path / "coordinator"
    assert provenance_ids(c / "teacher") == sites
    assert json.loads((c / "student" / "fd.json").read_text())["stage"] == "distill"
    for site in sites:
        assert json.loads((tmp_path / site / "specialist" / "fd.json").read_text())[
            "client_id"] == site


def test_rounds_doc_as_written(tmp_path, monkeypatch):
    sites = ["hospital-a", "hospital-b", "hospital-c"]
    make_world(tmp_path, sites)
    run_protocol(tmp_path, bash_blocks(ROOT / "docs" / "rounds.md"), sites, monkeypatch)
    c = tmp_path / "coordinator"
    for r in (1, 2):
        assert provenance_ids(c / f"consensus-{r}") == sites
        config = json.loads((c / f"consensus-{r}" / "manifest.json").read_text())[
            "producer"]["config"]
        assert (config["rule"], config["round"]) == ("coverage", r)
    for site in sites:
        meta = json.loads((tmp_path / site / "specialist-2" / "fd.json").read_text())
        assert (meta["client_id"], meta["round"]) == (site, 2)
    student = json.loads((c / "student-2" / "fd.json").read_text())
    assert student["config"]["student"] == "student-1"


def test_default_client_ids_differ_and_persist(tmp_path, monkeypatch):
    """Four institutions follow docs/rounds.md without --client-id: every one writes
    specialist-1 and bundle-1, yet the coordinator aggregates four distinct clients, and
    round 2 keeps each institution's id."""
    sites = ["inst-a", "inst-b", "inst-c", "inst-d"]
    make_world(tmp_path, sites)
    run_protocol(tmp_path, bash_blocks(ROOT / "docs" / "rounds.md"), sites, monkeypatch,
                 client_ids=False)
    c = tmp_path / "coordinator"
    first = provenance_ids(c / "consensus-1")
    assert len(set(first)) == 4
    assert all(re.fullmatch(r"specialist-1-[0-9a-f]{6}", cid) for cid in first), first
    assert provenance_ids(c / "consensus-2") == first
    for site, cid in zip(sites, first):
        for r in (1, 2):
            meta = json.loads((tmp_path / site / f"specialist-{r}" / "fd.json").read_text())
            assert meta["client_id"] == cid


def write_bundle(path: Path, client_id: str, model_fingerprint: str, seed: int = 0) -> Path:
    import torch

    with BundleWriter(path, codec=DenseCodec(), task="classification", num_classes=3,
                      label_names=["a", "b", "c"], proxy_fingerprint="sha256:" + "0" * 64,
                      client_id=client_id, model_fingerprint=model_fingerprint,
                      seed=seed) as w:
        w.add(range(4), torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)))
    return path


def test_shared_id_of_two_models_is_refused_with_the_fix(tmp_path):
    a = write_bundle(tmp_path / "usb" / "a", "hospital", "sha256:" + "a" * 64)
    b = write_bundle(tmp_path / "usb" / "b", "hospital", "sha256:" + "b" * 64, seed=1)
    result = fd(*["aggregate", str(a), str(b), "--out", str(tmp_path / "t")])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert (f"{b}: client id 'hospital' is shared by two different models: {a} (model "
            f"sha256:aaaaaaaaaaaa...) and {b} (model sha256:bbbbbbbbbbbb...), which both give "
            "example 0") in message
    assert "re-emit one of them with --client-id NAME" in message
    assert "a second time" not in message
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("case", ["copy", "re-emitted"])
def test_one_model_twice_is_refused_as_before(tmp_path, case):
    """The same bundle twice (a copy: identical manifests) and one model's two emissions
    (same fingerprint, other shards) keep their messages: not the shared-id one."""
    fp = "sha256:" + "a" * 64
    a = write_bundle(tmp_path / "usb" / "a", "hospital", fp)
    b = tmp_path / "usb" / "b"
    if case == "copy":
        shutil.copytree(a, b)
    else:
        write_bundle(b, "hospital", fp, seed=1)
    result = fd(*["aggregate", str(a), str(b), "--out", str(tmp_path / "t")])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "shared by two different models" not in message
    if case == "copy":
        assert f"{b}: the same bundle as {a} (identical manifests)" in message
    else:
        assert (f"{b}: client 'hospital' gives example 0 a second time (also in {a})"
                in message)


def test_default_ids_come_from_the_os_not_the_seeded_generators():
    """Every institution seeds random and torch alike (--seed 0), yet their drawn ids differ."""
    import random

    import torch

    drawn = []
    for _ in range(3):
        random.seed(0)
        torch.manual_seed(0)
        drawn.append(specialist_client_id(None, {}, "specialist-1"))
    assert len(set(drawn)) == 3
    assert all(re.fullmatch(r"specialist-1-[0-9a-f]{6}", d) for d in drawn), drawn


def test_which_ids_pass_on(tmp_path):
    kept = {"stage": "train-specialist", "client_id": "specialist-1-3f9a2c"}
    assert specialist_client_id(None, kept, tmp_path / "specialist-2") == "specialist-1-3f9a2c"
    assert specialist_client_id("hospital-a", kept, tmp_path / "s") == "hospital-a"
    # the coordinator's student, which every institution may start from, passes none on
    student = {"stage": "distill", "client_id": "student"}
    assert re.fullmatch(r"specialist-2-[0-9a-f]{6}",
                        specialist_client_id(None, student, tmp_path / "specialist-2"))
    # a folder named "." is named by where it resolves to
    assert specialist_client_id(None, {}, tmp_path / ".").startswith(tmp_path.name + "-")
    fp = "sha256:0123456789abcdef"
    assert emitted_client_id(None, {}, tmp_path / "bert", fp) == "bert-012345"
    assert emitted_client_id(None, kept, tmp_path / "bert", fp) == "specialist-1-3f9a2c"
    assert emitted_client_id("lab-c", kept, tmp_path / "bert", fp) == "lab-c"
