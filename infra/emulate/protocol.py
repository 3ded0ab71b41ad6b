"""The OpenAI/vLLM wire format the emulator speaks: token counts, filler text, response and error bodies.

Token counts are a deterministic approximation (no tokenizer is loaded): a text is ``ceil(characters / 4)``
tokens (at least 1), the usual rule of thumb for English with BPE tokenizers. A chat prompt adds
:data:`CHAT_TOKENS_PER_MESSAGE` per message (role markers of a chat template) and
:data:`CHAT_TOKENS_FOR_REPLY` (the assistant header the template appends). ``/v1/completions`` with
``prompt`` as a list of token ids counts them exactly, which is what load generators should use for precise
lengths. Generated text is filler words, one per token, the same for every request.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

# No tokenizer here: a BPE vocabulary (Llama 3, Qwen 2.5) holds common words with their leading space as
# one token (up to ~7 letters: "because", "between") and splits longer ones, so each whitespace-separated
# word counts one token per started CHARS_PER_WORD_TOKEN characters. That keeps `gpufleet bench`'s
# one-common-word-per-token prompts at the size the bench asked for. Prose with punctuation and rare words
# (~1.3 tokens per word) and text without spaces (code, CJK) are underestimated.
CHARS_PER_WORD_TOKEN = 8
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_FOR_REPLY = 3
_WORDS = (
    "the", "fleet", "serves", "tokens", "from", "a", "planned", "replica", "with", "steady", "latency", "and",
    "every", "step", "batches", "requests", "as", "vLLM", "would", "under", "load", "while", "queues", "grow",
)


class ApiError(Exception):
    """An error answered in vLLM's format: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "BadRequestError", param)


def text_tokens(text: str) -> int:
    return max(1, sum(math.ceil(len(word) / CHARS_PER_WORD_TOKEN) for word in text.split()))


def _content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts of which the text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise bad_request("message content must be a string or a list of content parts", "messages")


def chat_prompt_tokens(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    total = CHAT_TOKENS_FOR_REPLY
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request("every message needs a role", "messages")
        text = _content_text(message.get("content"))
        total += CHAT_TOKENS_PER_MESSAGE + (text_tokens(text) if text.strip() else 0)
    return total


def completion_prompt_tokens(prompt: Any) -> int:
    """A string, a list of token ids, or a one-element batch of either (batches of several are refused)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("prompt must not be empty", "prompt")
        return text_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return len(prompt)
    raise bad_request("prompt must be a non-empty string or list of token ids (one prompt per request)", "prompt")


def token_text(index: int) -> str:
    """The text of generated token ``index``: a filler word and a space."""
    return _WORDS[(index * 7) % len(_WORDS)] + " "


def sse(document: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>\\n\\n`` (or ``data: [DONE]\\n\\n``)."""
    payload = document if isinstance(document, str) else json.dumps(document, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


class Completion:
    """Builds the bodies of one chat or text completion (streamed chunks or the final JSON)."""

    def __init__(self, chat: bool, request_id: str, model: str) -> None:
        self.chat = chat
        self.id = request_id
        self.model = model
        self.created = int(time.time())

    def _envelope(self, stream: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if stream else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def role_chunk(self) -> dict[str, Any]:
        """Chat streams start with the assistant role (vLLM sends it with the first output)."""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return {**self._envelope(True), "choices": [choice]}

    def token_chunk(self, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta = {"content": text} if text else {}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        return {**self._envelope(True), "choices": [choice]}

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {**self._envelope(True), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

    def final(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []}, "logprobs": None,
                "finish_reason": finish_reason, "stop_reason": None,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        return {**self._envelope(False), "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}
