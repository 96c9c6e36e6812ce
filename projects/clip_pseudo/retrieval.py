"""Image-text retrieval recall@K over a whole evaluation set.

Sets whose captions repeat (class-template captions such as Fashion-MNIST's) would make the usual
one-true-pair protocol meaningless, so matches are by caption text: image->text ranks the distinct
captions and hits when the image's own caption is in the top K; text->image ranks all images for
each distinct caption and hits when any of the top K carries that caption. With all captions
distinct this is exactly the standard R@K.
"""

from __future__ import annotations

from typing import Sequence

import torch


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, captions: Sequence[str],
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """image_features, text_features: (N, E) L2-normalised, row i = pair i; captions: N strings."""
    if image_features.shape != text_features.shape or len(captions) != image_features.shape[0]:
        raise ValueError("need one image feature, one text feature and one caption per pair")
    index: dict[str, int] = {}
    first: list[int] = []
    owner = torch.empty(len(captions), dtype=torch.long)
    for i, c in enumerate(captions):
        if c not in index:
            index[c] = len(first)
            first.append(i)
        owner[i] = index[c]
    texts = text_features[first].float()  # (U, E): identical captions have identical embeddings
    images = image_features.float()
    sim = images @ texts.T  # (N, U)
    out: dict[str, float] = {}
    k_max = max(ks)
    i2t = sim.topk(min(k_max, sim.shape[1]), dim=1).indices  # (N, k)
    t2i = sim.T.topk(min(k_max, sim.shape[0]), dim=1).indices  # (U, k) image indices
    t2i_hit = owner[t2i] == torch.arange(len(first))[:, None]  # (U, k)
    for k in ks:
        out[f"image_to_text_R@{k}"] = (i2t[:, :k] == owner[:, None]).any(1).float().mean().item()
        out[f"text_to_image_R@{k}"] = t2i_hit[:, :k].any(1).float().mean().item()
    out["distinct_captions"] = float(len(first))
    return out
