"""Where metrics go: a tqdm bar, a JSONL file and (optionally) wandb; rank 0 only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from corefm.errors import ConfigError
from corefm.train.config import LogConfig


class Monitor:
    def __init__(self, cfg: LogConfig, run_dir: Path, total_steps: int, start_step: int,
                 config: dict[str, Any], enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.jsonl = None
        self.wandb = None
        if not enabled:
            return
        # A bar only on a terminal: in a log file its carriage returns are noise, and the
        # periodic log lines already say how far the run is.
        if cfg.progress and sys.stderr.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                            dynamic_ncols=True, mininterval=1.0)
        if cfg.jsonl:
            path = run_dir / "metrics.jsonl"
            if start_step and path.is_file():
                _drop_after(path, start_step)
            self.jsonl = open(path, "a", buffering=1)
        mode = "auto" if cfg.wandb is True else cfg.wandb
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        if mode is not False:
            import wandb  # imported lazily: it is slow to import and often unused

            try:
                # wandb's own default waits 90 s for a server it cannot reach; 30 s is plenty to start.
                self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.run_name or run_dir.name,
                                        dir=str(run_dir), mode=mode, config=config, resume="allow",
                                        id=(cfg.run_name or run_dir.name).replace("/", "-"),
                                        settings=wandb.Settings(init_timeout=30))
            except wandb.errors.Error as e:
                raise ConfigError(f"wandb could not start {mode} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                                  "set log.wandb: offline (files to sync later) or false") from None

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: round(float(v), 6) for k, v in metrics.items()}}
        if self.jsonl:
            self.jsonl.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({f"{kind}/{k}": v for k, v in metrics.items()}, step=step)
        self.print(_format(step, metrics, kind))

    def record(self, step: int, kind: str, fields: dict[str, Any]) -> None:
        """A non-metric event in metrics.jsonl (e.g. a recipe change on resume)."""
        if self.enabled and self.jsonl:
            self.jsonl.write(json.dumps({"step": step, "kind": kind, **fields}) + "\n")

    def advance(self, n: int = 1, postfix: dict[str, float] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl:
            self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()


def _format(step: int, metrics: dict[str, float], kind: str) -> str:
    parts = []
    for k, v in metrics.items():
        if k == "lr":
            parts.append(f"{k} {v:.2e}")
        elif k in ("samples_per_s", "tokens_per_s"):
            parts.append(f"{k.replace('_per_s', '/s')} {v:,.0f}")
        elif k == "mfu":
            parts.append(f"mfu {100 * v:.1f}%")
        else:
            parts.append(f"{k} {v:.4f}")
    return f"[{kind}] step {step}: " + " | ".join(parts)


def _drop_after(path: Path, step: int) -> None:
    """A run resumed at ``step`` logs the steps after it again: drop the killed run's records of them,
    so every step appears once (written to a temporary file and renamed)."""
    keep = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)
