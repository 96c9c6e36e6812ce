"""SAM-CLIP (arXiv 2310.15308): one SAM ViT backbone with a SAM head and a CLIP head.

The SAM parts are segment_anything's own classes under SAM's state-dict names
(``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``), so an official SAM checkpoint
(``sam_vit_b_01ec64.pth``) loads as is; the CLIP head adds ``clip_head.*``:
3 transformer blocks deep-copied from the backbone's last block, max-pool over tokens,
LayerNorm and a 2-hidden-layer MLP into the CLIP text space.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from corefm.errors import CheckpointError, ConfigError
from corefm.registry import register_model

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


@dataclass
class SamClipConfig:
    """Backbone = SAM's ImageEncoderViT fields; decoder = SAM's MaskDecoder/TwoWayTransformer fields."""

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    use_rel_pos: bool = True
    out_chans: int = 256  # neck channels = prompt embedding dim
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    # CLIP head
    clip_embed_dim: int = 512  # the CLIP teacher's text-space dimension
    clip_head_layers: int = 3
    clip_mlp_hidden: int = 0  # 0 = 4 x clip_embed_dim
    # False: blocks -> max-pool -> LayerNorm -> MLP (the paper's order). True: LayerNorm and MLP per
    # token, then max-pool, so per-patch features live where the pooled embedding is trained.
    clip_pool_last: bool = False
    # Initialise SAM parts from a SAM checkpoint (segment_anything .pth layout); "" = random.
    sam_checkpoint: str = ""
    # Initialise everything from a SAM-CLIP state dict (a previous stage's model.safetensors); "" = none.
    init_checkpoint: str = ""


PRESETS: dict[str, dict] = {
    # SAM ViT-B (sam_vit_b_01ec64.pth), CLIP head into a 512-d text space (OpenCLIP ViT-B/16).
    "vit_b": {},
    # CPU demo/tests: 32 px, 8 x 8 tokens, masks at 32 x 32 (4x the token grid, as SAM).
    "tiny": dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2, window_size=4,
                 global_attn_indexes=[1, 3], out_chans=32, mask_in_chans=4, decoder_mlp_dim=64,
                 decoder_heads=2, iou_head_hidden_dim=32, clip_embed_dim=64, clip_mlp_hidden=128),
}


def named_config(name: str, **overrides) -> SamClipConfig:
    """``vit_b`` (the paper's SAM ViT-B) or ``tiny``, with field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown SAM-CLIP preset {name!r} (known: {', '.join(PRESETS)})")
    return SamClipConfig(**{**PRESETS[name], **overrides})


def build_sam(cfg: SamClipConfig) -> Sam:
    """segment_anything's ``Sam`` with these sizes (what ``build_sam_vit_b`` builds for ``vit_b``)."""
    grid = cfg.img_size // cfg.patch_size
    encoder = ImageEncoderViT(
        img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
        num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, out_chans=cfg.out_chans, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=cfg.use_rel_pos,
        window_size=cfg.window_size, global_attn_indexes=tuple(cfg.global_attn_indexes))
    prompt = PromptEncoder(embed_dim=cfg.out_chans, image_embedding_size=(grid, grid),
                           input_image_size=(cfg.img_size, cfg.img_size), mask_in_chans=cfg.mask_in_chans)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=cfg.out_chans, iou_head_depth=3,
                          iou_head_hidden_dim=cfg.iou_head_hidden_dim,
                          transformer=TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.out_chans,
                                                        mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_heads))
    return Sam(encoder, prompt, decoder, pixel_mean=list(cfg.pixel_mean), pixel_std=list(cfg.pixel_std))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt`` (plain or under ``model``/``state_dict``) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


def check_keys(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str, limit: int = 6) -> None:
    """One-line CheckpointError naming missing, unexpected and wrong-shape keys (if any)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k} {tuple(got[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(expected) & set(got))
              if got[k].shape != expected[k].shape]
    parts = []
    groups = (("missing", missing), ("unexpected", unexpected), ("shape mismatch (checkpoint vs model)", shapes))
    for label, items in groups:
        if items:
            more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    if parts:
        raise CheckpointError(f"{what} does not match the configured architecture: " + "; ".join(parts))


class ClipHead(nn.Module):
    """Blocks on the (B, H, W, C) token grid -> max-pool -> LayerNorm -> MLP -> (B, E)."""

    def __init__(self, last_block: nn.Module, width: int, embed_dim: int, layers: int, hidden: int,
                 pool_last: bool = False):
        super().__init__()
        self.pool_last = pool_last
        self.blocks = nn.ModuleList(copy.deepcopy(last_block) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        hidden = hidden or 4 * embed_dim
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, embed_dim))

    def forward(self, tokens: torch.Tensor, dense: bool = False) -> torch.Tensor:
        """tokens (B, H, W, C) -> (B, E), or per-patch (B, H, W, E) with ``dense`` (no pooling)."""
        x = tokens
        for blk in self.blocks:
            x = blk(x)
        if self.pool_last:
            x = self.mlp(self.norm(x))
            return x if dense else x.amax(dim=(1, 2))
        if not dense:
            x = x.amax(dim=(1, 2))
        return self.mlp(self.norm(x))


class SamClipModel(nn.Module):
    """SAM's image encoder, prompt encoder and mask decoder (SAM names) + ``clip_head``."""

    def __init__(self, cfg: SamClipConfig):
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ConfigError(f"model.img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.global_attn_indexes and max(cfg.global_attn_indexes) >= cfg.depth:
            raise ConfigError(f"model.global_attn_indexes {cfg.global_attn_indexes} exceed depth {cfg.depth}")
        self.cfg = cfg
        sam = build_sam(cfg)
        self.image_encoder, self.prompt_encoder = sam.image_encoder, sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.clip_head = ClipHead(self.image_encoder.blocks[-1], cfg.embed_dim, cfg.clip_embed_dim,
                                  cfg.clip_head_layers, cfg.clip_mlp_hidden, cfg.clip_pool_last)
        # SAM's prompt encoder stays frozen in SAM-CLIP (the task unfreezes it to train a SAM teacher).
        self.prompt_encoder.requires_grad_(False)
        if cfg.sam_checkpoint:
            self.load_sam_checkpoint(cfg.sam_checkpoint)
        if cfg.init_checkpoint:
            state = read_state_dict(cfg.init_checkpoint)
            check_keys(self.state_dict(), state, f"SAM-CLIP checkpoint {cfg.init_checkpoint}")
            self.load_state_dict(state)

    # --- checkpoints -------------------------------------------------------------------------
    def sam_state_dict(self) -> dict[str, torch.Tensor]:
        """The SAM part under segment_anything's names (loads into ``Sam.load_state_dict``)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(SAM_PREFIXES)}

    def load_sam_checkpoint(self, path: str | Path, init_clip_head: bool = True) -> None:
        """Load a SAM checkpoint strictly (clear error naming bad keys), then re-init the CLIP head
        from the loaded last block (the paper's initialisation)."""
        state = read_state_dict(path)
        check_keys(self.sam_state_dict(), state, f"SAM checkpoint {path}")
        self.load_state_dict(state, strict=False)
        if init_clip_head:
            self.init_clip_head_from_backbone()

    @torch.no_grad()
    def init_clip_head_from_backbone(self) -> None:
        last = self.image_encoder.blocks[-1].state_dict()
        for blk in self.clip_head.blocks:
            blk.load_state_dict(last)

    # --- forward pieces ----------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W), H and W multiples of the patch -> tokens (B, H/p, W/p, C)
        before the neck; the absolute position embedding is resized for other resolutions."""
        enc = self.image_encoder
        x = enc.patch_embed(images)
        if enc.pos_embed is not None:
            pos = enc.pos_embed
            if pos.shape[1:3] != x.shape[1:3]:
                pos = rearrange(F.interpolate(rearrange(pos, "b h w c -> b c h w"), size=x.shape[1:3],
                                              mode="bicubic", align_corners=False), "b c h w -> b h w c")
            x = x + pos
        for blk in enc.blocks:
            x = blk(x)
        return x

    def image_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, h, w, C) -> SAM image embeddings (B, out_chans, h, w)."""
        return self.image_encoder.neck(rearrange(tokens, "b h w c -> b c h w"))

    def clip_embed(self, tokens: torch.Tensor, dense: bool = False) -> torch.Tensor:
        """tokens (B, h, w, C) -> CLIP image embedding (B, E) (unnormalised), or (B, h, w, E)."""
        return self.clip_head(tokens, dense=dense)

    def decode(self, embedding: torch.Tensor, points: torch.Tensor | None = None,
               point_labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's embedding (1, D, h, w) and K prompts in input-pixel coordinates: points (K, P, 2)
        with labels (K, P), and/or boxes (K, 4) xyxy -> low-res mask logits (K, M, 4h, 4w), IoU (K, M)."""
        sparse, dense, image_pe = self._prompts(embedding, points, point_labels, boxes)
        dtype = embedding.dtype
        return self.mask_decoder(image_embeddings=embedding, image_pe=image_pe.to(dtype),
                                 sparse_prompt_embeddings=sparse.to(dtype), dense_prompt_embeddings=dense.to(dtype),
                                 multimask_output=multimask)

    def decode_batch(self, embeddings: torch.Tensor, points: torch.Tensor | None = None,
                     point_labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """B images' embeddings (B, D, h, w) and K prompts of one kind per image: points (B, K, P, 2) with
        labels (B, K, P), or boxes (B, K, 4) -> single-mask low-res logits (B, K, 4h, 4w), in one pass
        (see :func:`batched_mask_logits`)."""
        b, k = embeddings.shape[0], (points if points is not None else boxes).shape[1]
        flat = (lambda x: None if x is None else x.flatten(0, 1))
        sparse, dense, image_pe = self._prompts(embeddings, flat(points), flat(point_labels), flat(boxes))
        return batched_mask_logits(self.mask_decoder, embeddings, image_pe, sparse, dense).unflatten(0, (b, k))

    def _prompts(self, embedding: torch.Tensor, points: torch.Tensor | None, point_labels: torch.Tensor | None,
                 boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM's prompt encoding at the embedding's grid: sparse (N, T, D), dense (N, D, h, w), image PE (1, D, h, w)."""
        pe = self.prompt_encoder
        # segment_anything's prompt encoder multiplies fp32 coordinates by its random-Fourier buffer, so
        # that buffer stays fp32 under a bf16 engine (which casts the whole module); its outputs then
        # meet the decoder in the decoder's dtype. A no-op in fp32.
        gaussian = pe.pe_layer.positional_encoding_gaussian_matrix
        if gaussian.dtype != torch.float32:
            pe.pe_layer.positional_encoding_gaussian_matrix = gaussian.float()
        sparse, dense = pe(points=(points, point_labels) if points is not None else None, boxes=boxes, masks=None)
        grid = tuple(embedding.shape[-2:])
        image_pe = pe.get_dense_pe() if grid == pe.image_embedding_size else pe.pe_layer(grid).unsqueeze(0)
        if dense.shape[-2:] != embedding.shape[-2:]:
            dense = dense[..., :1, :1].expand(-1, -1, *grid)  # the no-mask embedding is spatially constant
        return sparse, dense, image_pe

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) -> {"tokens" (B, h, w, C), "sam" (B, D, h, w), "clip" (B, E)}."""
        tokens = self.encode(images)
        return {"tokens": tokens, "sam": self.image_embeddings(tokens), "clip": self.clip_embed(tokens)}


def batched_mask_logits(decoder: MaskDecoder, embeddings: torch.Tensor, image_pe: torch.Tensor,
                        sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """SAM's single-mask output (``multimask_output=False``) for N = B x K prompts over B images at once.

    segment_anything's ``MaskDecoder.forward`` takes one image per call, so K prompts on each of B images
    would cost B calls: per step that is B times the kernel launches on a GPU, and under ZeRO-3 B times
    the module hooks, whose release scan grows with the square of the calls per step. Here each image's
    embedding is repeated for its K prompts and the decoder's own parts run once on all N rows, as its
    forward would per image: the two-way transformer over [IoU token, mask tokens, prompt tokens], the
    upscaled image embedding, and the first mask token's hypernetwork (the single-mask output).

    embeddings (B, D, h, w); image_pe (1, D, h, w); sparse (N, T, D) and dense (N, D, h, w) prompt
    embeddings, image-major -> mask logits (N, 4h, 4w).
    """
    dtype = embeddings.dtype
    n = sparse.shape[0]
    k = n // embeddings.shape[0]
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).to(dtype)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse.to(dtype)], dim=1)
    src = embeddings.repeat_interleave(k, dim=0) + dense.to(dtype)
    hs, src = decoder.transformer(src, image_pe.to(dtype).expand(n, -1, -1, -1), tokens)
    grid = rearrange(src, "n (h w) c -> n c h w", h=embeddings.shape[-2])
    upscaled = decoder.output_upscaling(grid)  # (N, C', 4h, 4w)
    hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1])  # token 0 is the IoU token, 1 the first mask
    return torch.einsum("nc,nchw->nhw", hyper, upscaled)


def upscale_masks(low_res: torch.Tensor, size: int) -> torch.Tensor:
    """Low-res logits (..., h, w) -> (..., size, size), bilinear as SAM's postprocess_masks."""
    lead = low_res.shape[:-2]
    x = F.interpolate(low_res.reshape(-1, 1, *low_res.shape[-2:]), size=(size, size), mode="bilinear",
                      align_corners=False)
    return x.reshape(*lead, size, size)


@register_model("sam_clip", SamClipConfig, presets=PRESETS)
def build_model(cfg: SamClipConfig) -> SamClipModel:
    """Recipe ``model: {name: sam_clip, preset: tiny, ...}`` (the preset's fields, then the recipe's)."""
    return SamClipModel(cfg)
