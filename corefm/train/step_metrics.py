"""What a training step leaves on the device until a log step reads it: metric sums and the non-finite guard.

Reading a loss (``float(loss)``) makes the host wait for the device to finish the step, which on a
GPU stalls the queue of kernels behind it. So per micro-batch nothing is read: the task's scalar
outputs are summed on the device, the non-finite vote is a device all-reduce whose result the
optimizer reads on the device, and the host sees numbers only at log (and checkpoint) steps.
"""

from __future__ import annotations

from typing import Any

import torch

from corefm.train.comm import Comm


class MetricWindow:
    """Per-rank float64 sums of a task's scalar outputs between two log steps, over finite micro-batches."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.tokens, self.last = zero.clone(), zero.clone(), zero.clone()

    def add(self, out: dict[str, torch.Tensor]) -> None:
        """One micro-batch's outputs: ``loss``, optional ``num_tokens``, and any other one-element tensors."""
        loss = out["loss"].detach().double().reshape(())
        finite = torch.isfinite(loss)
        self.count += finite
        self.last = torch.where(finite, loss, self.last)
        for name, value in out.items():
            if not torch.is_tensor(value) or value.numel() != 1:
                continue
            value = torch.where(finite, value.detach().to(self.device, torch.float64).reshape(()), 0.0)
            if name == "num_tokens":
                self.tokens += value
            else:
                self.sums[name] = self.sums[name] + value if name in self.sums else value

    def reduce(self, comm: Comm) -> dict[str, float]:
        """Collective (a host sync): ``{"loss": mean, <name>: mean, ..., "last_loss", "tokens"}`` over ranks."""
        names = sorted(set().union(*comm.gather_objects(sorted(self.sums))))  # ranks agree on the keys
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        stacked = torch.stack([self.count, self.tokens, self.last, *(self.sums.get(n, zero) for n in names)])
        count, tokens, last, *values = comm.sum_(stacked.to(comm.device)).tolist()
        means = {n: v / max(count, 1.0) for n, v in zip(names, values)}
        ordered = {"loss": means.pop("loss", float("nan")), **means}  # loss first in the log line
        return {**ordered, "last_loss": last / comm.world, "tokens": tokens}


class NonFiniteGuard:
    """A non-finite loss on any rank makes every rank skip that optimizer step, without a host sync.

    ``note(loss)`` per micro-batch keeps a flag on the device; ``arm(step)`` before the optimizer
    step sums the flag over ranks on the communication device and writes "skip" into the fused
    AdamW's ``found_inf`` (the flag torch's GradScaler uses): the optimizer then leaves weights and
    moments as they were. Counts stay on the device until :meth:`read`.
    """

    # slots of the counter vector
    BAD_STEPS, FIRST_STEP, FIRST_RANKS, RUN, WORST_RUN = range(5)

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, comm: Comm,
                 optimizer_device: torch.device | None = None) -> None:
        self.comm, self.device = comm, device
        self.flag = torch.zeros((), dtype=torch.float64, device=device)
        # found_inf lives where the optimizer's fp32 master weights do (the CPU under ZeRO-Offload).
        self.found_inf = torch.zeros((), dtype=torch.float32, device=optimizer_device or device)
        optimizer.found_inf = self.found_inf
        self.counts = torch.tensor([0.0, -1.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=device)

    def note(self, loss: torch.Tensor) -> None:
        self.flag = torch.maximum(self.flag, (~torch.isfinite(loss.detach())).to(torch.float64).reshape(()))

    def arm(self, step: int) -> None:
        """Collective, before the step's optimizer update; ``step`` is the step's number (1-based)."""
        ranks = self.comm.sum_(self.flag.to(self.comm.device)).to(self.device)  # ranks that saw non-finite
        bad = ranks > 0
        self.found_inf.copy_(bad)
        c = self.counts
        first = c[self.FIRST_STEP] < 0
        run = torch.where(bad, c[self.RUN] + 1, 0.0)
        self.counts = torch.stack([c[self.BAD_STEPS] + bad, torch.where(bad & first, float(step), c[self.FIRST_STEP]),
                                   torch.where(bad & first, ranks, c[self.FIRST_RANKS]), run,
                                   torch.maximum(c[self.WORST_RUN], run)])
        self.flag = torch.zeros_like(self.flag)

    def read(self) -> dict[str, Any]:
        """Host sync: the non-finite steps since the last read (then forgotten), and the longest run of them."""
        bad, first, ranks, run, worst = self.counts.tolist()
        self.counts = torch.tensor([0.0, -1.0, 0.0, run, 0.0], dtype=torch.float64, device=self.device)
        return {"steps": int(bad), "first_step": int(first), "first_ranks": int(ranks), "worst_run": int(worst)}
