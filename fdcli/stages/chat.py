"""fd generate for causal LMs: responses for a proxy set of prompts, from one model (a teacher,
or the pretrained student), so that every teacher then emits teacher-forced on the same
responses and the student is distilled on them (as seq2seq proxies get their targets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..chat import MESSAGES_COLUMN, render_prompt
from ..data import DataError, load_local, pick_column
from ..devices import place
from ..lm import load_lm, max_positions
from ..outputs import check_free

PROMPT_COLUMNS = ("prompt", "instruction", "question", "input")
DEFAULT_RESPONSE_TOKENS = 64


def generate_responses(model: str | Path, proxy: str | Path, out: str | Path, *,
                       tokenizer: str | Path | None = None, prompt_column: str | None = None,
                       split: str | None = None, max_new_tokens: int | None = None,
                       batch_size: int = 8, overwrite: bool = False,
                       dtype: str = "auto") -> dict[str, Any]:
    """Write ``out`` (JSON lines): every prompt of ``proxy`` with the model's greedy response,
    as ``prompt``/``response`` (or, for a ``messages`` proxy, the turns with the assistant's
    reply appended). Prompts are rendered with the tokenizer's chat template and the
    generation prompt; responses stop at the end of the turn or after ``max_new_tokens``
    (64)."""
    out = Path(out)
    if out.suffix.lower() not in (".jsonl", ".json"):
        raise ValueError(f"{out}: expected a .jsonl file to write the responses to")
    check_free(out, overwrite)
    max_new_tokens = max_new_tokens or DEFAULT_RESPONSE_TOKENS
    lm = load_lm(model, tokenizer=tokenizer)
    place(lm.model, dtype)
    ds = load_local(proxy, split, whole_text_files=True)
    cols = list(ds.column_names)
    column = pick_column(cols, prompt_column, PROMPT_COLUMNS, "prompt", str(proxy),
                         "--prompt-column")
    if column is None and MESSAGES_COLUMN not in cols:
        raise DataError(f"{proxy}: no prompt column found; expected one of "
                        f"{list(PROMPT_COLUMNS)} or a {MESSAGES_COLUMN!r} column, found {cols}; "
                        "set --prompt-column")
    if column is not None:
        chats = [[{"role": "user", "content": str(p)}] for p in ds[column]]
    else:
        chats = [[{"role": t["role"], "content": t["content"]} for t in m]
                 for m in ds[MESSAGES_COLUMN]]
    limit = max_positions(lm.model)
    prompts = [render_prompt(lm.tokenizer, c, str(proxy)) for c in chats]
    if limit is not None:  # keep each prompt's end, leaving room for the response
        if max_new_tokens >= limit:
            raise DataError(f"{model}: it reads at most {limit} positions, and "
                            f"--max-target-length is {max_new_tokens}; expected fewer tokens "
                            "to generate than the model's positions")
        prompts = [p[-(limit - max_new_tokens):] for p in prompts]
    responses = _greedy(lm, prompts, max_new_tokens, batch_size)
    rows = ([{"prompt": c[0]["content"], "response": r} for c, r in zip(chats, responses)]
            if column is not None else
            [{"messages": c + [{"role": "assistant", "content": r}]}
             for c, r in zip(chats, responses)])
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out)
    return {"out": str(out), "examples": len(rows), "model": str(model),
            "empty_responses": sum(not r for r in responses)}


@torch.no_grad()
def _greedy(lm, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy decodes of token-id prompts, left-padded in batches; the text after each prompt
    up to the end-of-text (or end-of-turn) token."""
    tok, model = lm.tokenizer, lm.model
    model.eval()
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    texts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        texts += [tok.decode(row[width:], skip_special_tokens=True).strip()
                  for row in out.cpu()]
    return texts
