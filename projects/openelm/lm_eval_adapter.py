"""EleutherAI lm-evaluation-harness on an OpenELM release folder, offline, as OpenELM was evaluated.

:class:`OpenELMLM` is an lm-eval ``TemplateLM``: lm-eval's own code splits each request into
context/continuation tokens (trailing spaces moved to the continuation, empty contexts
conditioned on BOS), and this class scores them with corefm's OpenELM loaded from the folder
(:func:`projects.openelm.convert.load_hf`) and the folder's tokenizer. Tokenization follows
lm-eval's Hugging Face model with ``add_bos_token=True`` (the setting of the paper's zero-shot
numbers): every encoded context starts with BOS; inputs longer than the context window are
truncated from the left. Generation is greedy with the KV cache.

Needs the ``eval`` extra (``pip install lm-eval``); tasks are lm-eval names or YAML files under
``include_path`` (which may point ``dataset_path: json`` at local files). Nothing is fetched:
the Hub is switched to offline mode before lm-eval is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from corefm.errors import ConfigError, CorefmError

try:  # the optional `eval` extra; the class below needs its base
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:  # pragma: no cover - exercised only without the extra
    TemplateLM = object  # type: ignore[assignment,misc]


class OpenELMLM(TemplateLM):
    """lm-eval model over a release folder. ``pretrained``: folder with config.json, weights, tokenizer
    (or a Hub id ``org/name`` of such a folder)."""

    def __init__(self, pretrained: str, batch_size: int = 8, dtype: str = "float32", add_bos_token: bool = True,
                 max_length: int = 0, **unused: Any) -> None:
        if TemplateLM is object:
            raise CorefmError("lm-eval is not installed: pip install 'corefm[eval]' (or lm-eval)")
        super().__init__()
        from projects.openelm.convert import load_hf, resolve_release
        from projects.openelm.tokenizer import load_tokenizer

        folder = resolve_release(pretrained)  # a folder, or a Hub id org/name
        if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
            raise ConfigError(f"{folder} has no tokenizer: release it with its tokenizer (see `corefm release`)")
        self.model, self.cfg = load_hf(folder, dtype=getattr(torch, dtype))
        self.model.eval()
        self.tokenizer = load_tokenizer(folder)
        self.batch_size = int(batch_size)
        self.add_bos_token = add_bos_token
        self.max_length = int(max_length) or self.cfg.max_context_length

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids; with add_special_tokens None, BOS is added iff add_bos_token (and not already there)."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = self.add_bos_token and not (bos and string.startswith(bos))
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        if add_special_tokens and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id] + ids
        return ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """requests: [(key, context ids, continuation ids)] -> [(sum log p(continuation), greedy?)]."""
        rows = []
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise CorefmError("lm-eval gave an empty continuation to score")
            full = (context + continuation)[-(self.max_length + 1):]
            rows.append((i, full[:-1], continuation))
        order = sorted(rows, key=lambda r: -len(r[1]))  # similar lengths together: less padding
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        size = override_bs or self.batch_size
        for start in tqdm(range(0, len(order), size), disable=disable_tqdm, desc="loglikelihood", unit="batch"):
            batch = order[start:start + size]
            width = max(len(inp) for _, inp, _ in batch)
            # Right padding is invisible to a causal model: real positions never attend to it.
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            for j, (_, inp, _) in enumerate(batch):
                ids[j, : len(inp)] = torch.tensor(inp)
            logprobs = F.log_softmax(self.model(ids).float(), dim=-1)  # (b, width, V)
            for j, (i, inp, cont) in enumerate(batch):
                n = len(cont)
                lp = logprobs[j, len(inp) - n: len(inp)]  # (n, V): predictions of the continuation
                target = torch.tensor(cont)
                out[i] = (float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood over disjoint windows of the context length (as lm-eval's HF model)."""
        results = []
        for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling", unit="doc"):
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(req.args[0]), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows], disable_tqdm=True)
            results.append(sum(s for s, _ in scores))
        return results

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut at the first ``until`` string."""
        outputs = []
        with self.model.decoding():  # weights packed once for all requests (corefm.nn.kernels)
            for req in tqdm(requests, disable=disable_tqdm, desc="generate_until", unit="req"):
                outputs.append(self._generate_one(*req.args))
        return outputs

    def _generate_one(self, context: str, gen_kwargs: dict) -> str:
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_gen_toks", 256))
        ids = self.tok_encode(context)[-(self.max_length - max_new):] if max_new < self.max_length else \
            self.tok_encode(context)[-1:]
        out = self.model.generate(torch.tensor([ids]), max_new, eos_token_id=self.eot_token_id)
        text = self.tok_decode(out[0, len(ids):].tolist())
        for stop in until:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text


def evaluate_release(release_dir: str | Path, tasks: list[str], include_path: str = "",
                     num_fewshot: int | None = None, batch_size: int = 8, limit: float | None = None,
                     dtype: str = "float32") -> dict:
    """Run lm-eval ``tasks`` on ``release_dir`` (a folder or a Hub id ``org/name``); returns
    {"results": {task: {metric: value}}, "release": ..., ...}."""
    from projects.openelm.convert import resolve_release

    given = str(release_dir)
    # Resolved before the Hub is switched off below, so an id not yet in the cache can still be fetched.
    release_dir = resolve_release(release_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise CorefmError("lm-eval is not installed: pip install 'corefm[eval]' (or lm-eval)") from None
    if include_path and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path {include_path}: no such folder")
    manager = TaskManager(include_path=include_path or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s) {', '.join(unknown)} (add --include-path for local YAML tasks)")
    model = OpenELMLM(str(release_dir), batch_size=batch_size, dtype=dtype)
    raw = lm_eval.simple_evaluate(model=model, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                  task_manager=manager, log_samples=False, bootstrap_iters=0)
    # lm-eval keys metrics as "name,filter" ("acc,none"); stderr is off (bootstrap_iters=0).
    results = {task: {k.split(",")[0]: v for k, v in metrics.items()
                      if "," in k and isinstance(v, (int, float)) and "_stderr" not in k}
               for task, metrics in raw["results"].items()}
    return {"results": results, "release": given, "release_dir": str(release_dir), "add_bos_token": True,
            "n_samples": raw.get("n-samples", {}), "versions": raw.get("versions", {})}
