"""SentencePiece models: built from a GGUF vocabulary, and converted to Hugging Face tokenizers.

The HF tokenizer reproduces SentencePiece exactly (the tests compare them on llama.cpp's
reference tokenizations and on random text). Two choices make that hold:

- the dummy prefix is a *normalizer* (prepend "▁", then spaces -> "▁"), not transformers 5's
  Metaspace pre-tokenizer, which skips the prefix when the text already starts with a space
  (" Hello" would become [15043] instead of SentencePiece's [29871, 15043]);
- BPE merges are ranked by the score of the piece they produce, which is the order in which
  SentencePiece's BPE applies them.

The folder is therefore saved with ``tokenizer_class: PreTrainedTokenizerFast`` (load
tokenizer.json as written) rather than ``LlamaTokenizer``, whose v5 constructor rebuilds the
pipeline with that Metaspace pre-tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2 as spm_pb
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors

from corefm.errors import ConfigError

SPACE = "\u2581"  # "▁", SentencePiece's escaped space
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# GGUF token_type values (llama.cpp) -> SentencePiece piece types; they coincide by design.
_GGUF_TYPES = {1: NORMAL, 2: UNKNOWN, 3: CONTROL, 4: USER_DEFINED, 5: UNUSED, 6: BYTE}


def spm_from_gguf(meta: dict[str, Any]) -> spm_pb.ModelProto:
    """A LLaMA-style SentencePiece BPE ModelProto from GGUF tokenizer metadata.

    The trainer/normalizer settings are those of LLaMA's tokenizer.model: BPE, byte fallback,
    digits split, whitespace-only pieces allowed, identity normalization, a dummy prefix, and
    extra whitespace kept (encoding reads allow_whitespace_only_pieces and the normalizer).
    """
    if meta.get("tokenizer.ggml.model") != "llama":
        raise ConfigError(f"GGUF tokenizer model is {meta.get('tokenizer.ggml.model')!r}; only 'llama' "
                          "(SentencePiece) vocabularies can become a tokenizer.model")
    tokens, scores = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.scores")
    types = meta.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens))
    scores = scores if scores is not None else [0.0] * len(tokens)
    if not (len(tokens) == len(scores) == len(types)):
        raise ConfigError(f"GGUF vocabulary arrays differ in length: {len(tokens)}, {len(scores)}, {len(types)}")
    proto = spm_pb.ModelProto()
    for piece, score, t in zip(tokens, scores, types):
        if t not in _GGUF_TYPES:
            raise ConfigError(f"GGUF token {piece!r} has unknown token_type {t}")
        proto.pieces.add(piece=piece, score=float(score), type=_GGUF_TYPES[t])
    unk = meta.get("tokenizer.ggml.unknown_token_id", 0)
    bos = meta.get("tokenizer.ggml.bos_token_id", 1)
    eos = meta.get("tokenizer.ggml.eos_token_id", 2)
    ts = proto.trainer_spec
    ts.model_type = spm_pb.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = any(t == BYTE for t in types)
    ts.split_digits = True
    ts.allow_whitespace_only_pieces = True
    ts.treat_whitespace_as_suffix = False
    ts.max_sentencepiece_length = 16
    ts.character_coverage = 0.99995
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = unk, bos, eos, -1
    ts.unk_piece, ts.bos_piece, ts.eos_piece = tokens[unk], tokens[bos], tokens[eos]
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return proto


def _bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a vocabulary piece, best-scored result first."""
    mergeable = {p: i for i, (p, _, t) in enumerate(pieces) if t in (NORMAL, USER_DEFINED)}
    ranked = []
    for i, (piece, score, t) in enumerate(pieces):
        if t not in (NORMAL, USER_DEFINED):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-score, i, mergeable[left], mergeable[right], left, right))
    ranked.sort()
    return [(r[4], r[5]) for r in ranked]


def hf_backend_from_spm(proto: spm_pb.ModelProto) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes and decodes exactly like the SentencePiece model."""
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    ts, ns = proto.trainer_spec, proto.normalizer_spec
    unk_piece = next((p for p, _, t in pieces if t == UNKNOWN), None)
    if ts.model_type == spm_pb.TrainerSpec.BPE:
        vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
        model = models.BPE(vocab=vocab, merges=_bpe_merges(pieces), unk_token=unk_piece, fuse_unk=True,
                           byte_fallback=ts.byte_fallback)
    elif ts.model_type == spm_pb.TrainerSpec.UNIGRAM:
        unk_id = next((i for i, (_, _, t) in enumerate(pieces) if t == UNKNOWN), None)
        model = models.Unigram([(p, s) for p, s, _ in pieces], unk_id=unk_id, byte_fallback=ts.byte_fallback)
    else:
        raise ConfigError(f"SentencePiece model type {spm_pb.TrainerSpec.ModelType.Name(ts.model_type)} is not "
                          "supported (BPE and UNIGRAM are)")
    tok = Tokenizer(model)
    steps = []
    if ns.precompiled_charsmap:
        steps.append(normalizers.Precompiled(ns.precompiled_charsmap))
    if ns.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if ns.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    if ns.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    dec = [decoders.Replace(SPACE, " ")] + ([decoders.ByteFallback()] if ts.byte_fallback else []) + [decoders.Fuse()]
    if ns.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(dec)
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, _, t in pieces
                            if t in (CONTROL, UNKNOWN)])
    user = [AddedToken(p, special=False, normalized=False) for p, _, t in pieces if t == USER_DEFINED]
    if user:
        tok.add_tokens(user)
    if 0 <= ts.bos_id < len(pieces):
        bos = pieces[ts.bos_id][0]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ts.bos_id)])
    return tok


def _special(proto: spm_pb.ModelProto, idx: int) -> str | None:
    return proto.pieces[idx].piece if 0 <= idx < len(proto.pieces) else None


def hf_tokenizer(proto: spm_pb.ModelProto, add_bos_token: bool = True):
    """A transformers fast tokenizer for the model (BOS prepended when add_bos_token)."""
    from transformers import PreTrainedTokenizerFast

    ts = proto.trainer_spec
    backend = hf_backend_from_spm(proto)
    if not add_bos_token:
        backend.post_processor = None
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=_special(proto, ts.unk_id), bos_token=_special(proto, ts.bos_id),
        eos_token=_special(proto, ts.eos_id), pad_token=_special(proto, ts.pad_id),
        add_bos_token=add_bos_token, add_eos_token=False, clean_up_tokenization_spaces=False,
    )


def write_tokenizer_folder(proto: spm_pb.ModelProto, out_dir: str | Path, add_bos_token: bool = True) -> list[Path]:
    """tokenizer.model plus the HF files (tokenizer.json, tokenizer_config.json) in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())
    written = hf_tokenizer(proto, add_bos_token).save_pretrained(str(out))
    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    # Load tokenizer.json verbatim under transformers 4 and 5 alike (see the module docstring).
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    # Stated explicitly for tools that read them (lm-eval's add_bos_token, OpenELM's evaluation).
    cfg["add_bos_token"], cfg["add_eos_token"] = add_bos_token, False
    cfg.pop("is_local", None)
    cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return [out / "tokenizer.model", *(Path(p) for p in written)]
