"""Next-token cross-entropy + z-loss in one pass over the logits, with the gradient made in the forward.

With a 32k vocabulary the logits dominate the memory traffic of a small LM: the plain
``logits.float()`` -> ``log_softmax`` -> ``nll`` and a separate ``logsumexp`` for the z-loss (PaLM)
read and write the (N, V) tensor about a dozen times, forward and backward, and on a CPU that costs
more than the model's matmuls. Here each block of rows is cast to fp32 once while it sits in
cache (one fp32 block buffer is reused: a fresh 4 MB tensor per block costs page faults that made
the cast 2.5x slower), and its log-sum-exp, target logit and gradient

    d/dx [(lse - x_t) + w * lse^2] / n = (softmax(x) * (1 + 2 w lse) - onehot(t)) / n

are computed together; the gradient is stored in the logits' dtype and returned, scaled by the
incoming gradient, in backward. Rows whose target is negative (padding) count nowhere.
"""

from __future__ import annotations

import torch

# Logits per block: on a CPU 32 rows x 32k vocab x 4 bytes = 4 MB of fp32, which stays in L2/L3;
# on a GPU blocks are large (128 MB of fp32) so the loop costs a few kernel launches, not thousands.
def _block_rows(logits: torch.Tensor) -> int:
    elements = 1 << 20 if logits.device.type == "cpu" else 1 << 25
    return max(1, elements // logits.shape[-1])


# Backward nodes that keep their inputs but not their output, and the views between them and the
# logits: when the logits come straight out of such a product, nothing reads them in backward.
_PRODUCTS = {"MmBackward0", "AddmmBackward0", "BmmBackward0", "MatmulBackward0"}
_VIEWS = {"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "AliasBackward0"}


def _scratch_logits(logits: torch.Tensor) -> bool:
    """True when overwriting the logits cannot corrupt any gradient (they are a matmul's output)."""
    node = logits.grad_fn
    while node is not None and type(node).__name__ in _VIEWS:
        node = node.next_functions[0][0]
    return node is not None and type(node).__name__ in _PRODUCTS


class _CrossEntropyZ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, z_weight: float, overwrite: bool):
        n_rows = logits.shape[0]
        valid = targets >= 0
        count = valid.sum()
        # A tensor, not int(count): reading the count would make the host wait for the device here.
        denom = count.clamp(min=1).to(torch.float32)
        safe_t = targets.clamp(min=0)
        target_logit = logits.gather(1, safe_t[:, None])[:, 0].float()
        need_grad = ctx.needs_input_grad[0]
        # Each block is read before its gradient is written, so the gradient can reuse the logits'
        # memory; a fresh (N, V) tensor would cost more in page faults than the loss itself.
        grad = (logits if overwrite else torch.empty_like(logits)) if need_grad else None
        lse = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
        rows = _block_rows(logits)
        buf = torch.empty(min(rows, n_rows), logits.shape[1], dtype=torch.float32, device=logits.device)
        for s in range(0, n_rows, rows):
            x = buf[: min(rows, n_rows - s)]
            x.copy_(logits[s:s + rows])  # modified in place below
            m = x.amax(dim=-1, keepdim=True)
            x.sub_(m).exp_()
            total = x.sum(dim=-1, keepdim=True)
            block_lse = m + total.log()
            lse[s:s + rows] = block_lse[:, 0]
            if grad is not None:
                v = valid[s:s + rows, None]
                x.mul_((1.0 + 2.0 * z_weight * block_lse) / total * v / denom)
                idx = torch.arange(x.shape[0], device=x.device)
                x[idx, safe_t[s:s + rows]] -= v[:, 0].float() / denom
                grad[s:s + rows] = x
        nll_sum = ((lse - target_logit) * valid).sum()
        z_sum = (lse.square() * valid).sum()
        loss = (nll_sum + z_weight * z_sum) / denom
        ctx.mark_non_differentiable(nll_sum, z_sum, count)
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        return loss, nll_sum, z_sum, count

    @staticmethod
    def backward(ctx, g_loss, *unused):
        (grad,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        # The buffer is ours and used once, so scaling it in place saves an (N, V) allocation; on a
        # CPU the common g == 1 skips the pass (elsewhere reading g would cost a device sync).
        if g_loss.device.type != "cpu" or g_loss.item() != 1.0:
            grad.mul_(g_loss.to(grad.dtype))
        return grad, None, None, None


def cross_entropy_z(logits: torch.Tensor, targets: torch.Tensor, z_weight: float = 0.0, *,
                    overwrite_logits: bool = False):
    """logits (..., V), targets (...) long with negative = ignore ->
    (loss, nll_sum, z_sum, count): loss = (sum nll + z_weight * sum lse^2) / count is differentiable;
    the sums (fp32) and the token count are detached, for logging and evaluation.

    overwrite_logits: the caller does not read the logits afterwards, so their memory may hold the
    gradient. It is used only when the logits come straight out of a matmul (whose backward does
    not read its output); otherwise a fresh buffer is taken as without the flag.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    overwrite = overwrite_logits and flat.requires_grad and _scratch_logits(flat)
    return _CrossEntropyZ.apply(flat, targets.reshape(-1), float(z_weight), overwrite)


@torch.no_grad()
def eval_sums(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum nll, count, correct argmax predictions) over non-negative targets, block by block."""
    vocab = logits.shape[-1]
    logits, targets = logits.reshape(-1, vocab), targets.reshape(-1)
    valid = targets >= 0
    safe_t = targets.clamp(min=0)
    rows = _block_rows(logits)
    buf = torch.empty(min(rows, logits.shape[0]), vocab, dtype=torch.float32, device=logits.device)
    nll = torch.zeros((), dtype=torch.float64, device=logits.device)
    correct = torch.zeros((), dtype=torch.long, device=logits.device)
    for s in range(0, logits.shape[0], rows):
        x = buf[: min(rows, logits.shape[0] - s)]
        x.copy_(logits[s:s + rows])
        v, t = valid[s:s + rows], safe_t[s:s + rows]
        lse = torch.logsumexp(x, dim=-1)
        nll += ((lse - x.gather(1, t[:, None])[:, 0]) * v).sum().double()
        correct += ((x.argmax(dim=-1) == t) & v).sum()
    return nll, valid.sum(), correct
