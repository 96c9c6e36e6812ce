"""The chat format: a Jinja template stored in the tokenizer, and response-only labels from it.

A conversation renders as (one user turn shown; turns are separated by a blank line)::

    <s>### User:
    What does the noun "dog" mean?

    ### Assistant:
    A member of the genus Canis ...</s>

The template lives in ``tokenizer_config.json`` (``chat_template``), so ``tokenizer.apply_chat_template``
gives the same ids at training and at inference; ``add_generation_prompt=True`` ends a prompt with
``\\n\\n### Assistant:\\n``. Every assistant reply and the ``</s>`` after it sit inside a Jinja
``{% generation %}`` block: transformers' ``return_assistant_tokens_mask`` marks exactly those
tokens, and they are the only ones trained on (labels are -100 on everything else: BOS, role
headers, separators and the user's text). Only the plain text markers are added, no new tokens,
so the base model's 32,000-piece vocabulary and embeddings are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from corefm.data import DataError
from corefm.errors import CorefmError
from projects.openelm.tokenizer import TOKENIZER_FILES

IGNORE = -100
# '\n' as Jinja string literals: transformers renders with trim_blocks, which would eat a newline
# written right after a block tag.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{% if message['role'] == 'system' %}{{ '### System:\\n' + message['content'] | trim }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' + message['content'] | trim }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Assistant:\\n' }}"
    "{% generation %}{{ message['content'] | trim }}{{ eos_token }}{% endgeneration %}"
    "{% else %}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\n### Assistant:\\n' }}{% endif %}"
)
# the files whose sha256 a data set records: the vocabulary and the config that holds the template
HASHED = ("tokenizer.json", "tokenizer_config.json")


def write_chat_tokenizer(source: str | Path, out_dir: str | Path, template: str = CHAT_TEMPLATE) -> Path:
    """Copy the tokenizer files of ``source`` (a release or tokenizer folder) into ``out_dir`` with
    ``chat_template`` set in tokenizer_config.json (replacing any template it had)."""
    src, out = Path(source), Path(out_dir)
    if not src.is_dir():  # a Hub id org/name: its snapshot (cache only with HF_HUB_OFFLINE=1)
        from projects.openelm.convert import resolve_release

        try:
            src = resolve_release(str(source))
        except CorefmError as e:
            raise DataError(f"--tokenizer {source}: {e}") from None
    if "{% generation %}" not in template:
        raise DataError("the chat template has no {% generation %} block: the response tokens could not be "
                        "told from the prompt")
    found = [src / n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not src.is_dir() or not (src / "tokenizer.json").is_file() or not (src / "tokenizer_config.json").is_file():
        raise DataError(f"--tokenizer {src}: need a folder with tokenizer.json and tokenizer_config.json "
                        "(an OpenELM release folder or `corefm openelm llama-tokenizer --out` folder)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in found:
        shutil.copyfile(f, out / f.name)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "chat_template.jinja").unlink(missing_ok=True)  # a file beside the config would take precedence
    return out


def tokenizer_record(folder: Path) -> dict:
    """What a data set records about its tokenizer (path relative to the split folders, sha256s)."""
    return {"path": "../tokenizer", "sha256": {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
                                                for n in HASHED}}


def check_tokenizer(folder: Path, record: dict) -> str:
    """'' when ``folder`` still holds the tokenizer ``record`` describes, else why not."""
    for name, digest in (record.get("sha256") or {}).items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return f"{path} changed since the data were packed"
    return "" if record.get("sha256") else "no checksums recorded"


def load_chat_tokenizer(folder: str | Path):
    """The fast tokenizer of a folder written by :func:`write_chat_tokenizer` (or any with a template)."""
    from projects.openelm.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(folder)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{folder}: the tokenizer has no chat_template (tokenizer_config.json)")
    return tokenizer


def check_messages(messages, where: str) -> None:
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} strings")
    roles = {m["role"] for m in messages}
    if not roles <= {"system", "user", "assistant"}:
        raise DataError(f"{where}: unknown role(s) {sorted(roles - {'system', 'user', 'assistant'})}")
    if "assistant" not in roles:
        raise DataError(f"{where}: no assistant message (nothing to train on)")


def encode_chats(tokenizer, conversations: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
    """Conversations -> [(input_ids, labels)], labels = input id on assistant tokens, -100 elsewhere.

    The ids are exactly ``apply_chat_template(messages)``'s, so generation with
    ``add_generation_prompt=True`` sees the prompt the model was trained on."""
    if not conversations:
        return []
    out = tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    pairs = []
    for ids, mask in zip(out["input_ids"], out["assistant_masks"]):
        labels = [i if m else IGNORE for i, m in zip(ids, mask)]
        pairs.append((list(ids), labels))
    return pairs


def chat_prompt_ids(tokenizer, prompt: str, system: str = "") -> list[int]:
    """The ids of a one-turn prompt in the chat format, ending with the assistant header."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat_template (tokenizer_config.json): --chat needs an "
                        "instruction-tuned release (or adapter) folder")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                              return_dict=True)["input_ids"])
