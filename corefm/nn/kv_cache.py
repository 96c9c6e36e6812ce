"""Key/value cache for incremental decoding: one object shared by all layers of a model."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values, each (B, H_kv, T, hd), grown by concatenation on append.

    A decoder makes one KVCache and passes it to every layer with that layer's index.
    `seq_len` is the number of positions layer 0 has cached, i.e. the tokens the model
    has already seen; read it before a forward pass to get the position offset.
    Keys are stored after RoPE, so cached entries never need re-rotating.
    """

    def __init__(self, num_layers: int | None = None) -> None:
        self.num_layers = num_layers
        self._k: list[torch.Tensor | None] = []
        self._v: list[torch.Tensor | None] = []
        self.reset()

    def reset(self) -> None:
        """Drop every cached entry (start a new sequence)."""
        n = self.num_layers or 0
        self._k = [None] * n
        self._v = [None] * n

    @property
    def seq_len(self) -> int:
        return self.layer_len(0)

    def layer_len(self, layer_idx: int) -> int:
        """Cached positions of one layer (0 if it has none yet)."""
        if layer_idx < 0:
            raise ValueError(f"layer_idx must be >= 0, got {layer_idx}")
        if layer_idx >= len(self._k) or self._k[layer_idx] is None:
            return 0
        return self._k[layer_idx].shape[-2]

    def get(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(k, v) cached for a layer, or None."""
        if layer_idx >= len(self._k) or self._k[layer_idx] is None:
            return None
        return self._k[layer_idx], self._v[layer_idx]

    def append(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add k, v: (B, H_kv, T_new, hd) to a layer; return all keys/values (B, H_kv, T_past + T_new, hd)."""
        if k.ndim != 4 or k.shape != v.shape:
            raise ValueError(f"k and v must both be (B, H_kv, T, hd), got {tuple(k.shape)} and {tuple(v.shape)}")
        if layer_idx < 0 or (self.num_layers is not None and layer_idx >= self.num_layers):
            raise ValueError(f"layer_idx {layer_idx} out of range for a cache of {self.num_layers} layers")
        while len(self._k) <= layer_idx:
            self._k.append(None)
            self._v.append(None)
        past_k, past_v = self._k[layer_idx], self._v[layer_idx]
        if past_k is None:
            k_all, v_all = k, v
        else:
            if past_k.shape[:2] != k.shape[:2] or past_k.shape[-1] != k.shape[-1]:
                raise ValueError(
                    f"layer {layer_idx} caches (B, H_kv, *, hd) = {tuple(past_k.shape)}, cannot append {tuple(k.shape)}"
                )
            k_all = torch.cat((past_k, k), dim=-2)
            v_all = torch.cat((past_v, v), dim=-2)
        self._k[layer_idx], self._v[layer_idx] = k_all, v_all
        return k_all, v_all

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self._k)}, seq_len={self.seq_len})"
