"""Instruction data for causal LMs: prompts and responses rendered with the tokenizer's chat
template, as :class:`~fdcli.lm.Turn` blocks whose rows (and loss) are the response's tokens
only, the way chat models are distilled (DistillKit, TRL's GKD trainer, MiniLLM)."""

from __future__ import annotations

import hashlib

import torch

from .data import DataError, pick_column
from .lm import DEFAULT_LM_MAX_LENGTH, TextBlocks, Turn, vocab_fingerprint

#: the chat column fd reads when no text column is asked for
MESSAGES_COLUMN = "messages"


def chat_blocks(ds, where: str, tokenizer, *, prompt_column: str | None = None,
                response_column: str | None = None, messages_column: str = MESSAGES_COLUMN,
                max_length: int = DEFAULT_LM_MAX_LENGTH) -> TextBlocks:
    """Instruction examples as :class:`Turn` blocks: a ``messages`` column (chat turns,
    ``{"role", "content"}``; the last turn, the assistant's, is the response) or a prompt and
    a response column, rendered with the tokenizer's chat template (without one: the prompt,
    a newline, the response and the end-of-text token). Each example is cut to
    ``max_length`` tokens; one left with no response token is dropped."""
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer of at least 2, got {max_length!r}")
    cols = list(ds.column_names)
    if (prompt_column is None) != (response_column is None):
        raise DataError(f"{where}: --prompt-column and --response-column go together; give "
                        "both, or neither to read a messages column")
    if prompt_column is not None:
        for option, col in (("--prompt-column", prompt_column),
                            ("--response-column", response_column)):
            pick_column(cols, col, (), option[2:-7], where, option)
        chats = [[{"role": "user", "content": str(p)}, {"role": "assistant", "content": str(r)}]
                 for p, r in zip(ds[prompt_column], ds[response_column])]
        column = f"{prompt_column}/{response_column}"
    else:
        chats = [_checked_chat(m, where, i) for i, m in enumerate(ds[messages_column])]
        column = messages_column
    blocks, dropped = [], 0
    for chat in chats:
        prompt, full = _render(tokenizer, chat, where)
        if full[:len(prompt)] != prompt:
            raise DataError(f"{where}: the chat template renders the prompt differently with "
                            "and without its response; expected the prompt's tokens to be a "
                            "prefix of the whole conversation's")
        full = full[:max_length]
        if len(full) <= len(prompt) or len(prompt) < 1:
            dropped += 1
            continue
        blocks.append(Turn(full, len(prompt)))
    if not blocks:
        raise DataError(f"{where}: no example keeps a response token within --max-length "
                        f"{max_length} ({dropped} dropped); expected shorter prompts or a "
                        "larger --max-length")
    digest = hashlib.sha256(f"causal-lm-chat:{vocab_fingerprint(tokenizer)}:{len(blocks)}"
                            .encode())
    for b in blocks:
        digest.update(len(b).to_bytes(4, "little") + b.start.to_bytes(4, "little"))
        digest.update(torch.tensor(b, dtype=torch.int32).numpy().tobytes())
    return TextBlocks(blocks, max_length, False, column, len(chats),
                      "sha256:" + digest.hexdigest(), dropped=dropped, blocks_per_document=1)


def _checked_chat(value, where: str, i: int) -> list[dict[str, str]]:
    ok = isinstance(value, list) and len(value) >= 2 and all(
        isinstance(t, dict) and isinstance(t.get("role"), str)
        and isinstance(t.get("content"), str) for t in value)
    if not ok or value[-1]["role"] != "assistant":
        raise DataError(f"{where}: row {i} of column {MESSAGES_COLUMN!r}: expected a list of "
                        "two or more {\"role\", \"content\"} turns ending with the assistant's, "
                        f"found {str(value)[:120]!r}")
    return [{"role": t["role"], "content": t["content"]} for t in value]


def _ids(tokenizer, turns, **kw) -> list[int]:
    out = tokenizer.apply_chat_template(turns, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def render_prompt(tokenizer, turns: list[dict[str, str]], where: str) -> list[int]:
    """The token ids of ``turns`` as a prompt: through the chat template with the generation
    prompt, or without a template the turns' contents and a newline."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return _ids(tokenizer, turns, add_generation_prompt=True)
        except Exception as exc:
            raise DataError(f"{where}: the tokenizer's chat template failed ({exc})") from None
    text = "\n".join(t["content"] for t in turns) + "\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _render(tokenizer, chat: list[dict[str, str]], where: str) -> tuple[list[int], list[int]]:
    """The token ids of the prompt (every turn but the last, with the generation prompt) and
    of the whole conversation."""
    prompt = render_prompt(tokenizer, chat[:-1], where)
    if getattr(tokenizer, "chat_template", None):
        try:
            return prompt, _ids(tokenizer, chat)
        except Exception as exc:
            raise DataError(f"{where}: the tokenizer's chat template failed ({exc})") from None
    r = tokenizer(chat[-1]["content"], add_special_tokens=False)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    return prompt, prompt + r + ([eos] if eos is not None else [])
