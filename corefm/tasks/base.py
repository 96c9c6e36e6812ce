"""The task contract: a batch goes in, a dict with ``loss`` comes out.

The trainer knows nothing about CLIP or LMs. A task wraps the model (so DeepSpeed's engine
wraps the task and every forward goes through it, which ZeRO-3's parameter hooks need), says how
a raw shard sample becomes tensors (run in data workers), and how evaluation sums reduce to
metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from corefm.data.errors import SkipSample


@dataclass(frozen=True)
class TaskContext:
    """What a task builder receives besides its own config and the model: the data it will read and
    what the trainer decided for the run. Tasks never see the whole recipe; the device comes later,
    through :meth:`Task.place`, once the engine holds the task.

    ``train_data`` / ``val_data``: the shard specs (a folder, manifest or brace pattern; "" when the
    run has none, e.g. no held-out set). ``dtype``: the compute dtype batches are cast to.
    ``zero_stage``: the DeepSpeed ZeRO stage the task will be wrapped under.
    """

    train_data: str = ""
    val_data: str = ""
    dtype: torch.dtype = torch.float32
    zero_stage: int = 0


def read_label(value: Any, num_classes: int | None, where: str) -> int:
    """A shard's class label (ASCII digits or an int) as an int in [0, num_classes); anything else
    makes the sample skipped (and counted) rather than a crash in the loss, or on a GPU a device-side
    assert. ``num_classes`` None checks only that the label is not negative."""
    try:
        label = int(value.decode("ascii").strip()) if isinstance(value, (bytes, bytearray)) else int(value)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise SkipSample(f"{where}: label {value!r} is not an integer") from None
    if label < 0 or num_classes is not None and label >= num_classes:
        raise SkipSample(f"{where}: label {label} is outside 0..{num_classes - 1 if num_classes else 'inf'}")
    return label


def model_num_classes(model: nn.Module) -> int | None:
    """The number of classes a classifier model declares (``num_classes``), if it does."""
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) else None


class Task(nn.Module):
    """Base class. Subclasses hold the model as ``self.model``.

    ``forward(batch, mode="train")`` returns ``{"loss": scalar, **scalars_to_log}``; it may also
    return ``"num_tokens"`` (tokens in the micro-batch) for tokens/s. With ``mode="eval"`` it
    returns additive sums (e.g. ``{"correct": n, "count": n}``) that the trainer all-reduces over
    ranks and batches before :meth:`eval_metrics` turns them into metrics.
    """

    # True when the training loss couples the samples of a batch (a contrastive loss): with
    # ``train.grad_accum > 1`` the trainer then caches gradients (corefm/train/grad_cache.py) so the
    # loss sees all micro-batches of a step, and the task must define :meth:`coupled_loss` and
    # answer ``forward(batch, mode="embed")`` and ``forward(batch, embed_grads=...)``.
    couples_samples: bool = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def sample_transform(self, train: bool) -> Callable[[dict], dict]:
        """Return ``fn(sample) -> dict of tensors/numbers`` run on each decoded shard sample."""
        raise TypeError(f"{type(self).__name__} must define sample_transform")

    def collate(self, samples: list[dict]) -> dict:
        """Stack samples into a batch; the default stacks tensors key by key."""
        return torch.utils.data.default_collate(samples)

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn all-reduced eval sums into metrics; default: report the sums."""
        return dict(sums)

    def place(self, device: torch.device) -> None:
        """Called once the engine holds the task on ``device``: move there what the task keeps outside
        its module tree (frozen teachers, class embeddings). Default: nothing to move."""

    def coupled_loss(self, embeds: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The coupled loss over the ``mode="embed"`` outputs of all micro-batches of a step (``{"loss":
        scalar, **logs}``). Only for tasks with :attr:`couples_samples`."""
        raise TypeError(f"{type(self).__name__} does not couple samples (couples_samples is False)")

    def external_parameters(self) -> list[nn.Parameter]:
        """Parameters this task's own ``forward`` reads outside the forwards of the modules that own
        them. Under ZeRO-3 the trainer registers them with the engine so they are gathered for the
        task's forward (otherwise they are partitioned away when it reads them). Default: none."""
        return []

    def parameter_bounds(self) -> dict[str, tuple[float | None, float | None]]:
        """{parameter name: (low, high)}: the trainer clamps these in place after every optimizer step
        (module and fp32 master copies; None leaves a side open). Default: none."""
        return {}

    def param_lr_scales(self) -> dict[str, float]:
        """{parameter name (as in ``named_parameters()``): lr multiplier}; unnamed parameters get 1.0."""
        return {}

    def export_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map the task's state dict (``model.``-prefixed) to the release's; default strips the prefix."""
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}

    def forward(self, batch: dict[str, Any], mode: str = "train") -> dict[str, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} must define forward")
