"""Chat rendering: plain prompts in a chat template, and conversations (TRL's conversational format: lists of
``{"role", "content"}`` messages) rendered with the policy tokenizer's template, with the assistant's parts told apart."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from rlhf_exp.data.types import DatasetError


def _require_chat_template(tokenizer, why: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError(f"{why}, but the policy's tokenizer has no chat template (a base model's usually has "
                           f"none). Use an instruct model's tokenizer (model.tokenizer=<a tokenizer folder with a chat "
                           f"template>, or a model.path whose tokenizer has one)" +
                           (", or set dataset.chat_template=false to use the plain prompt text." if "chat_template"
                            in why else ", or give the data as plain text."))


def chat_prompt_text(tokenizer, text: str) -> str:
    """``text`` as the user's turn of the tokenizer's chat template, followed by the opening of the assistant's turn
    (the string the policy continues; tokenise it with ``add_special_tokens=False``)."""
    _require_chat_template(tokenizer, "dataset.chat_template=true")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def chat_records(records: Sequence[Mapping[str, Any]], tokenizer) -> list[dict[str, Any]]:
    """Offline records with each non-empty ``prompt`` put in the chat template (see :func:`chat_prompt_text`).
    Records rendered from conversations (``chat: True``) are already in the template and stay as they are."""
    return [{**r, "prompt": chat_prompt_text(tokenizer, r["prompt"])} if r.get("prompt") and not r.get("chat")
            else dict(r) for r in records]


# ---------------------------------------------------------------------------------------------------------------
# Conversations (TRL's conversational format)
# ---------------------------------------------------------------------------------------------------------------

def is_conversation(value: Any) -> bool:
    """A non-empty list of ``{"role": str, "content": str, ...}`` messages."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(m, Mapping) and isinstance(m.get("role"), str) and "content" in m for m in value))


def _cell(value: Any, column: str, where: str) -> Any:
    """A cell as a string, or as a list of messages when it is a conversation; any other list or dict is an error
    (it would otherwise train on its Python repr)."""
    if is_conversation(value):
        return [{"role": m["role"], "content": "" if m["content"] is None else str(m["content"])} for m in value]
    if isinstance(value, (list, tuple, dict)):
        shown = repr(value)
        raise DatasetError(f"{where}, column {column!r}: the cell is a {type(value).__name__} ({shown[:80]}"
                           f"{'...' if len(shown) > 80 else ''}), neither text nor a conversation (a list of "
                           f"{{\"role\": ..., \"content\": ...}} messages). Map dataset.columns / "
                           f"dataset.prompt_column to a text column, or convert the column to text or to "
                           f"conversations.")
    return value if isinstance(value, str) else str(value)


def _render(tokenizer, messages: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def _strip_after_eos(text: str, eos: Optional[str]) -> str:
    """Drop what the template writes after the final end-of-turn EOS (a newline): generation stops at the EOS."""
    stripped = text.rstrip()
    return stripped if eos and stripped.endswith(eos) else text


def render_turns(tokenizer, messages: Sequence[Mapping[str, str]], where: str) -> tuple[str, list[tuple[str, bool]]]:
    """A conversation as the rendered text before its first assistant turn (ending with the opening of that turn)
    and the rest as ``(text, is_assistant)`` parts, so that a loss can be put on the assistant's tokens only.

    Each assistant part is what the template adds for that turn (content and end-of-turn marker); the parts between
    are the other turns with the opening of the next assistant turn. Turns after the last assistant turn are dropped.
    """
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        raise DatasetError(f"{where}: the conversation has no assistant turn (roles: "
                           f"{', '.join(m['role'] for m in messages)}), so there is nothing to train on. Each "
                           f"conversation needs a {{\"role\": \"assistant\", ...}} message.")
    if assistant[0] == 0:
        raise DatasetError(f"{where}: the conversation starts with the assistant's turn; it needs a prompt (a user or "
                           f"system turn) before it.")
    prompt = done = _render(tokenizer, messages[:assistant[0]], True)
    parts: list[tuple[str, bool]] = []
    for i in assistant:
        before = _render(tokenizer, messages[:i], True)
        full = _render(tokenizer, messages[:i + 1], False)
        if not before.startswith(done) or not full.startswith(before):
            raise DatasetError(f"{where}: the policy tokenizer's chat template does not render this conversation "
                               f"turn by turn (a prefix of the conversation renders differently inside the whole), "
                               f"so the assistant's tokens cannot be told apart. Use a template that renders "
                               f"prefixes consistently.")
        if len(before) > len(done):
            parts.append((before[len(done):], False))
        parts.append((full[len(before):], True))
        done = full
    text, _ = parts[-1]
    parts[-1] = (_strip_after_eos(text, tokenizer.eos_token), True)
    return prompt, parts


def render_completion(tokenizer, prompt: Sequence[Mapping[str, str]], completion: Sequence[Mapping[str, str]],
                      column: str, where: str) -> tuple[str, str]:
    """The rendered prompt (ending with the opening of the assistant's turn) and the rendered assistant completion
    that follows it in the rendered ``prompt + completion`` conversation."""
    roles = [m["role"] for m in completion]
    if "assistant" not in roles:
        raise DatasetError(f"{where}, column {column!r}: the completion has no assistant turn (roles: "
                           f"{', '.join(roles)}); it must be the assistant's reply to the prompt.")
    if any(r != "assistant" for r in roles):
        raise DatasetError(f"{where}, column {column!r}: the completion holds a turn that is not the assistant's "
                           f"(roles: {', '.join(roles)}); put the conversation before the reply in the prompt.")
    if not prompt:
        raise DatasetError(f"{where}: the conversation has no turn before the assistant's reply (no prompt).")
    if prompt[-1]["role"] == "assistant":
        raise DatasetError(f"{where}: the prompt conversation ends with an assistant turn; it should end with the turn "
                           f"the completion replies to.")
    p = _render(tokenizer, prompt, True)
    full = _render(tokenizer, list(prompt) + list(completion), False)
    if not full.startswith(p):
        raise DatasetError(f"{where}: the policy tokenizer's chat template renders the prompt differently inside the "
                           f"whole conversation, so the assistant's reply cannot be told apart. Use a template that "
                           f"renders prefixes consistently.")
    return p, _strip_after_eos(full[len(p):], tokenizer.eos_token)


def render_conversations(records: Sequence[Mapping[str, Any]], tokenizer, where: str) -> list[dict[str, Any]]:
    """Offline records whose cells are conversations, rendered with the tokenizer's chat template.

    ``prompt`` becomes the rendered prompt (ending with the opening of the assistant's turn), ``completion`` /
    ``chosen`` / ``rejected`` the rendered assistant reply, and an SFT ``messages`` conversation becomes
    ``prompt`` (everything before the first assistant turn) plus ``completion_parts`` (``(text, is_assistant)``:
    the SFT loss is on the assistant parts only) and their joined ``completion``. Rendered records carry
    ``chat: True``; plain-text records pass through unchanged.
    """
    out = []
    for r in records:
        if not r.get("chat"):
            out.append(dict(r))
            continue
        if not getattr(tokenizer, "chat_template", None):
            _require_chat_template(tokenizer, f"{where}: the data is conversational (lists of role/content messages)")
        rw = f"{where}, row {r.get('row', '?')}"  # a record, not a setting: one built by hand may have no row
        rec = {k: v for k, v in r.items() if k not in ("prompt", "completion", "chosen", "rejected", "messages")}
        if "messages" in r:
            rec["prompt"], parts = render_turns(tokenizer, r["messages"], f"{rw}, column 'messages'")
            rec["completion_parts"] = parts
            rec["completion"] = "".join(t for t, _ in parts)
        else:
            for key in ("completion", "chosen", "rejected"):
                if key in r:
                    rec["prompt"], rec[key] = render_completion(tokenizer, r["prompt"], r[key], key, rw)
        out.append(rec)
    return out
