"""Task ``sam_clip``: the paper's three stages, plus training a SAM teacher on ground truth.

| stage | trains (lr multiplier) | loss |
|---|---|---|
| ``sam_gt`` | image encoder, prompt encoder, mask decoder (1x) | focal + dice vs ground-truth masks |
| ``probe`` | CLIP head (1x); backbone frozen | 1 - cos(student, CLIP teacher) |
| ``distill`` | CLIP head (1x), backbone + mask decoder (0.1x: ``backbone_lr_scale``, | (1 - cos) + sam_weight x |
| | ``sam_head_lr_scale``) | (focal + dice) vs SAM teacher masks |
| ``resolution`` | CLIP head + mask decoder (1x); backbone frozen; CLIP images at ``clip_image_size`` | as distill |

SAM's prompt encoder is frozen in every SAM-CLIP stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from corefm.errors import ConfigError
from corefm.registry import register_task
from corefm.tasks.base import Task, TaskContext
from projects.sam_clip.data import Collate, SampleSpec, SampleTransform
from projects.sam_clip.losses import distill_loss, mask_loss, prompt_iou_sums, zero_shot_counts
from projects.sam_clip.model import SamClipModel
from projects.sam_clip.teachers import get_clip_teacher, get_sam_teacher


@dataclass
class SamClipTaskConfig:
    stage: Literal["sam_gt", "probe", "distill", "resolution"] = "distill"
    clip_source: Literal["stored", "online", "none"] = "stored"
    sam_source: Literal["stored", "online", "gt", "none"] = "stored"
    clip_teacher: str = ""  # open_clip folder, hf-hub:..., or NAME@CHECKPOINT
    sam_teacher: str = ""  # segment_anything .pth
    sam_teacher_config: str = ""  # preset or JSON; default sam_config.json beside the checkpoint
    clip_image_size: int = 0  # student's CLIP input side; 0 = model.img_size
    sam_weight: float = 10.0
    # focal:dice inside the SAM term; DESIGN.md's reading of the paper is 1:1, SAM's own training 20:1
    focal_weight: float = 1.0
    dice_weight: float = 1.0
    backbone_lr_scale: float = 0.1
    sam_head_lr_scale: float = 0.1
    prompts: int = 1  # K point + K box prompts per SAM sample
    mask_key: str = "seg.png"
    label_key: str = "cls"
    box_jitter: float = 0.1
    class_names: list[str] = field(default_factory=list)  # zero-shot top-1 in eval (needs clip_teacher)
    templates: str = "simple"


def branches(cfg: SamClipTaskConfig) -> tuple[bool, bool]:
    """(the CLIP branch runs, the SAM branch runs) for a task config."""
    return cfg.stage != "sam_gt" and cfg.clip_source != "none", cfg.stage != "probe" and cfg.sam_source != "none"


def _stored_teachers(spec: str) -> dict:
    """{"clip"/"sam": info} from the producer of every dataset.json a data spec points at."""
    found: dict = {}
    for part in (p for chunk in spec.split("::") for p in chunk.split(",") if p.strip()):
        path = Path(part.strip().split("#")[0])
        folder = path if path.is_dir() else path.parent
        if (folder / "dataset.json").is_file():
            producer = json.loads((folder / "dataset.json").read_text()).get("producer", {})
            for kind, info in (producer.get("teachers") or {}).items():
                found.setdefault(kind, []).append((str(folder), info))
    return found


class SamClipTask(Task):
    def __init__(self, cfg: SamClipTaskConfig, model: SamClipModel, data_specs: tuple[str, ...] = (),
                 every_branch: bool = False):
        super().__init__(model)
        self.cfg = cfg
        self.every_branch = every_branch  # ZeRO-3: see branch()
        mcfg = model.cfg
        if cfg.stage == "sam_gt" and cfg.sam_source != "gt":
            raise ConfigError("task.stage sam_gt trains on ground truth: set task.sam_source: gt")
        self.clip_teacher = get_clip_teacher(cfg.clip_teacher) if cfg.clip_teacher else None
        self.sam_teacher = get_sam_teacher(cfg.sam_teacher, cfg.sam_teacher_config) if cfg.sam_teacher else None
        if cfg.clip_source == "online" and self.clip_teacher is None:
            raise ConfigError("task.clip_source online needs task.clip_teacher")
        if cfg.sam_source == "online" and self.sam_teacher is None:
            raise ConfigError("task.sam_source online needs task.sam_teacher")
        if self.clip_teacher is not None and self.clip_teacher.embed_dim != mcfg.clip_embed_dim:
            raise ConfigError(f"CLIP teacher embeds into {self.clip_teacher.embed_dim} dims, "
                              f"model.clip_embed_dim is {mcfg.clip_embed_dim}")
        if self.sam_teacher is not None and self.sam_teacher.cfg.img_size != mcfg.img_size:
            raise ConfigError(f"SAM teacher input is {self.sam_teacher.cfg.img_size} px, "
                              f"model.img_size is {mcfg.img_size}")
        self.versions = self._check_stored(data_specs)
        self.spec = SampleSpec(
            sam_size=mcfg.img_size, mask_size=4 * mcfg.img_size // mcfg.patch_size,
            clip_size=cfg.clip_image_size or mcfg.img_size, clip_source=cfg.clip_source, sam_source=cfg.sam_source,
            embed_dim=mcfg.clip_embed_dim, pixel_mean=list(mcfg.pixel_mean), pixel_std=list(mcfg.pixel_std),
            prompts=cfg.prompts, mask_key=cfg.mask_key, label_key=cfg.label_key, box_jitter=cfg.box_jitter,
            teacher_size=self.clip_teacher.image_size[0] if self.clip_teacher else 0,
            teacher_preprocess=self.clip_teacher.preprocess if self.clip_teacher else None, versions=self.versions)
        if self.spec.clip_size % mcfg.patch_size:
            raise ConfigError(f"task.clip_image_size {self.spec.clip_size} is not a multiple of "
                              f"model.patch_size {mcfg.patch_size}")
        self.classifier = self.clip_teacher.classifier(cfg.class_names, cfg.templates) \
            if cfg.class_names and self.clip_teacher else None
        self._apply_freezing()

    # --- stages ------------------------------------------------------------------------------
    def _apply_freezing(self) -> None:
        m, stage = self.model, self.cfg.stage
        trainable = {"sam_gt": ("image_encoder", "prompt_encoder", "mask_decoder"), "probe": ("clip_head",),
                     "distill": ("image_encoder", "mask_decoder", "clip_head"),
                     "resolution": ("clip_head", "mask_decoder")}[stage]
        for name in ("image_encoder", "prompt_encoder", "mask_decoder", "clip_head"):
            getattr(m, name).requires_grad_(name in trainable)
        self.uses_clip, self.uses_sam = branches(self.cfg)

    def external_parameters(self) -> list[torch.nn.Parameter]:
        """Every parameter: :meth:`_touch` reads the trainable ones in this module's own forward, and
        SAM's prompt encoder and mask decoder read their submodules' weights (frozen ones too) outside
        those submodules' forwards, as the batched decoding does (``batched_mask_logits``): ZeRO-3 must
        gather them all for the task's forward."""
        return list(self.model.parameters())

    def param_lr_scales(self) -> dict[str, float]:
        """{parameter name: lr multiplier}, read by corefm's optimizer builder (param groups)."""
        if self.cfg.stage != "distill":
            return {}
        scales = {"model.image_encoder.": self.cfg.backbone_lr_scale, "model.mask_decoder.": self.cfg.sam_head_lr_scale}
        return {n: s for n, _ in self.named_parameters() for prefix, s in scales.items() if n.startswith(prefix)}

    def _check_stored(self, data_specs: tuple[str, ...]) -> dict[str, str]:
        """Refuse shards whose stored teacher outputs came from another teacher than the recipe's."""
        want = {k: t.version for k, t in (("clip", self.clip_teacher), ("sam", self.sam_teacher)) if t is not None}
        for spec in data_specs:
            for kind, entries in _stored_teachers(spec).items():
                for folder, info in entries:
                    if kind in want and info.get("version") != want[kind]:
                        raise ConfigError(f"{folder}: stored {kind} teacher outputs are from {info.get('source')} "
                                          f"version {info.get('version')}, but the recipe's {kind} teacher is version "
                                          f"{want[kind]}; rerun `corefm sam-clip teacher-outputs` with this teacher")
                    if kind == "clip" and info.get("embed_dim") not in (None, self.model.cfg.clip_embed_dim):
                        raise ConfigError(f"{folder}: stored CLIP embeddings have {info['embed_dim']} dims, "
                                          f"model.clip_embed_dim is {self.model.cfg.clip_embed_dim}")
        return want

    # --- data --------------------------------------------------------------------------------
    def sample_transform(self, train: bool) -> SampleTransform:
        return SampleTransform(self.spec, train)

    def collate(self, samples: list[dict]) -> dict:
        return Collate(self.spec)(samples)

    # --- forward -----------------------------------------------------------------------------
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.model.image_encoder.patch_embed.proj.weight.requires_grad:
            return self.model.encode(images)
        with torch.no_grad():
            return self.model.encode(images)

    def clip_outputs(self, batch: dict, tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Student (Nc, E) and teacher (Nc, E) CLIP embeddings of the batch's CLIP rows; ``tokens``: the
        backbone's output for them when the caller already has it."""
        student = self.model.clip_embed(self._encode(batch["clip_image"]) if tokens is None else tokens)
        if "clip_target" in batch:
            return student, batch["clip_target"]
        return student, self.clip_teacher.encode_image(batch["clip_teacher_image"].float()).to(student.dtype)

    def sam_outputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Student mask logits and 0/1 targets, (Ns, 2K, m, m): K point prompts then K box prompts."""
        emb = self.model.image_embeddings(self._encode(batch["sam_image"]))
        if len(emb):
            logits = torch.cat([self.model.decode_batch(emb, batch["sam_points"], batch["sam_point_labels"]),
                                self.model.decode_batch(emb, boxes=batch["sam_boxes"])], dim=1)
        else:
            logits = emb.new_zeros(0, 2 * self.cfg.prompts, *batch["sam_gt"].shape[-2:])
        if "sam_target" in batch:
            target = batch["sam_target"]
        elif len(emb):
            teacher = self.sam_teacher.predict(batch["sam_image"].float(), batch["sam_points"].float(),
                                               batch["sam_point_labels"], batch["sam_boxes"].float())
            target = (teacher > 0).to(logits.dtype)
        else:
            target = torch.zeros_like(logits)
        return logits, target

    def place(self, device: torch.device) -> None:
        """The teachers and the zero-shot classifier live outside the module tree (they are not trained
        or saved), so the engine does not move them: they follow the student here."""
        if self.clip_teacher is not None:
            self.clip_teacher.model.to(device)
        if self.sam_teacher is not None:
            self.sam_teacher.sam.to(device)
        if self.classifier is not None:
            self.classifier = self.classifier.to(device)

    def _touch(self, module: torch.nn.Module, start: torch.Tensor) -> torch.Tensor:
        # a rank whose batch has no rows of a kind still gives that head (zero) gradients, so ZeRO's
        # gradient reduction sees the same parameters on every rank
        return sum((p.sum() * 0 for p in module.parameters() if p.requires_grad), start)

    def forward(self, batch: dict, mode: str = "train") -> dict[str, torch.Tensor]:
        if mode == "eval":
            return self.eval_sums(batch)
        clip_s, clip_t, idle_clip = self.branch(batch, "clip")
        sam_l, sam_t, idle_sam = self.branch(batch, "sam")
        idle = idle_clip + idle_sam
        if self.cfg.stage == "sam_gt":
            loss = mask_loss(sam_l.flatten(0, 1), sam_t.flatten(0, 1), self.cfg.focal_weight,
                             self.cfg.dice_weight) if sam_l.numel() \
                else sam_l.new_zeros((), dtype=torch.float32)
            out = {"loss": loss, "loss_sam": loss.detach()}
        else:
            out = distill_loss(clip_s, clip_t, sam_l.flatten(0, 1), sam_t.flatten(0, 1), self.cfg.sam_weight,
                               self.cfg.focal_weight, self.cfg.dice_weight)
            out = {"loss": out["loss"], "loss_clip": out["loss_clip"].detach(), "loss_sam": out["loss_sam"].detach()}
        out["loss"] = out["loss"] + 0.0 * idle + self._touch(self.model, out["loss"].new_zeros(()))
        return out

    def branch(self, batch: dict, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(student, target, idle) of the ``kind`` ("clip" or "sam") rows. Without rows of that kind,
        empty outputs; but under ZeRO-3 (``every_branch``) the branch still runs, at the same place, on
        one zero row, and ``idle`` is the sum of its output for the loss to take with weight 0: ZeRO-3
        gathers each module's parameters collectively in its forward and backward, so every rank must
        run the same modules in the same order (a rank that skipped one would leave the others waiting)."""
        run = self.clip_outputs if kind == "clip" else self.sam_outputs
        idle = batch["sam_image"].new_zeros((), dtype=torch.float32)
        empty = batch["sam_image"].new_zeros(0, 1, 1, 1)  # on the batch's device
        if not (self.uses_clip if kind == "clip" else self.uses_sam):
            return empty, empty, idle
        if len(batch[f"{kind}_image"]):
            student, target = run(batch)
            return student, target, idle
        if self.every_branch:
            idle = idle + run(self._zero_row(batch, kind))[0].float().sum()
        return empty, empty, idle

    def _zero_row(self, batch: dict, kind: str) -> dict:
        """``batch`` with one zero row of ``kind`` (point labels 1) and zero targets, so no teacher runs."""
        row = {k: v.new_zeros((1, *v.shape[1:])) for k, v in batch.items() if k.startswith(f"{kind}_")}
        if kind == "sam":
            row["sam_point_labels"] = torch.ones_like(row["sam_point_labels"])
            k = self.cfg.prompts
            row["sam_target"] = row["sam_gt"].new_zeros((1, 2 * k, *row["sam_gt"].shape[-2:]))
        else:
            row["clip_target"] = row["clip_image"].new_zeros((1, self.model.cfg.clip_embed_dim))
        return {**batch, **row}

    @torch.no_grad()
    def eval_sums(self, batch: dict, clip_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Additive metric sums of a batch; ``clip_tokens``: the backbone's output for its CLIP rows, if known."""
        sums: dict[str, torch.Tensor] = {}
        if self.every_branch and self.uses_clip and not len(batch["clip_image"]):
            self.branch(batch, "clip")  # ZeRO-3: the branch's modules run on every rank (see branch)
        if self.uses_clip and len(batch["clip_image"]):
            s, t = self.clip_outputs(batch, clip_tokens)
            sums["clip_cos_sum"] = torch.nn.functional.cosine_similarity(s.float(), t.float(), dim=-1).sum()
            sums["clip_count"] = s.new_full((), len(s), dtype=torch.float32)
            if self.classifier is not None:  # rows without a label count nowhere (a zero count is left out)
                sums["zs_correct"], sums["zs_count"] = zero_shot_counts(s, self.classifier, batch["clip_label"])
        if self.every_branch and self.uses_sam and not len(batch["sam_image"]):
            self.branch(batch, "sam")
        if self.uses_sam and len(batch["sam_image"]):
            logits, target = self.sam_outputs(batch)
            k = self.cfg.prompts
            found = {"target": prompt_iou_sums(logits, target, k),
                     "gt": prompt_iou_sums(logits, gt_per_prompt(batch, k), k, rows=batch["sam_has_gt"] > 0)}
            for against, per_prompt in found.items():
                for name, (total, count) in per_prompt.items():
                    sums[f"iou_{against}_{name}_sum"], sums[f"iou_{against}_{name}_count"] = total, count
        return sums

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        if sums.get("clip_count"):
            out["clip_cosine"] = sums["clip_cos_sum"] / sums["clip_count"]
        if sums.get("zs_count"):
            out["zero_shot_top1"] = sums["zs_correct"] / sums["zs_count"]
        for key in [k for k in sums if k.startswith("iou_") and k.endswith("_sum")]:
            count = sums[key.replace("_sum", "_count")]
            if count:
                out["miou_" + key[4:-4]] = sums[key] / count
        return out


def gt_per_prompt(batch: dict, k: int) -> torch.Tensor:
    """The ground-truth mask of each SAM row, once per prompt: (N, 2K, m, m)."""
    return batch["sam_gt"][:, None].expand(-1, 2 * k, -1, -1)


@register_task("sam_clip", SamClipTaskConfig)
def build_task(cfg: SamClipTaskConfig, model: SamClipModel, context: TaskContext) -> SamClipTask:
    if not isinstance(model, SamClipModel):
        raise ConfigError(f"task sam_clip needs model sam_clip, got {type(model).__name__}")
    return SamClipTask(cfg, model, (context.train_data, context.val_data), every_branch=context.zero_stage == 3)
