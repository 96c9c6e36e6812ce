"""RangeAugment: gradients reach every range, the ranges follow the PSNR target, stay in bounds, and the
classification task trains them (train batches only, out of the exported weights)."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
import yaml

from corefm.augment import OPS, PSNR_CAP, RangeAugment, RangeAugmentConfig, warp_affine
from corefm.errors import ConfigError

GREY_OPS = [op for op, spec in OPS.items() if not spec.colour]
EPS = 1e-6  # the bounds are python floats, the parameters fp32


@pytest.fixture(autouse=True)
def _one_thread():
    # These tensors are tiny: on a busy 2-core machine a second thread only waits (20x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def textured(b: int = 16, c: int = 3, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Images in [0, 1]: smooth shapes plus fine texture, so every op (blur included) changes them."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(b, c, 4, 4, generator=g), size=(side, side), mode="bilinear")
    return 0.7 * smooth + 0.3 * torch.rand(b, c, side, side, generator=g)


def make(ops: list[str], channels: int = 3, **kw) -> RangeAugment:
    return RangeAugment(RangeAugmentConfig(enabled=True, ops=ops, **kw), channels)


def width(ra: RangeAugment, op: str) -> float:
    return float(getattr(ra, f"{op}_hi").detach() - getattr(ra, f"{op}_lo").detach())


def mean_psnr(ra: RangeAugment, x: torch.Tensor, draws: int = 10) -> float:
    with torch.no_grad():
        return sum(float(ra(x)[2]["psnr"]) for _ in range(draws)) / draws


def train_aux(ra: RangeAugment, x: torch.Tensor, steps: int = 20, lr: float = 0.05) -> None:
    """A few Adam steps on the auxiliary loss alone, clamped after each step as the trainer does."""
    opt = torch.optim.Adam(ra.parameters(), lr=lr)
    for _ in range(steps):
        _, loss, _ = ra(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ra.clamp_()


@pytest.mark.parametrize("channels,apply_prob", [(1, 1.0), (3, 1.0), (3, 0.5)])
def test_the_aux_loss_reaches_every_range_parameter(channels, apply_prob):
    ops = list(OPS) if channels == 3 else GREY_OPS
    ra = make(ops, channels, apply_prob=apply_prob)
    _, loss, stats = ra(textured(c=channels))
    loss.backward()
    assert [n for n, _ in ra.named_parameters()] == [f"{op}_{end}" for op in ops for end in ("lo", "hi")]
    for name, p in ra.named_parameters():
        assert p.shape == (1,), name  # DeepSpeed refuses 0-dim parameters
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().item() > 0, name
    assert set(stats) == {"psnr", *(f"{op}_{end}" for op in ops for end in ("lo", "hi"))}


@pytest.mark.parametrize("op", list(OPS))
def test_each_op_widens_for_a_low_target_and_narrows_for_a_high_one(op):
    x = textured()
    for target, wider in ((10.0, True), (45.0, False)):
        torch.manual_seed(0)
        ra = make([op], apply_prob=1.0, target_psnr=target)
        before_w, before_psnr = width(ra, op), mean_psnr(ra, x)
        assert 10.0 < before_psnr < 45.0  # the start lies between the two targets
        train_aux(ra, x)
        after_w, after_psnr = width(ra, op), mean_psnr(ra, x)
        assert (after_w > before_w) == wider, (target, before_w, after_w)
        assert (after_psnr < before_psnr) == wider, (target, before_psnr, after_psnr)


@pytest.mark.parametrize("target", [12.0, 40.0])
def test_the_default_ops_bring_the_batch_psnr_to_the_target(target):
    x = textured(c=1)
    ra = make(RangeAugmentConfig().ops, 1, target_psnr=target)  # apply_prob 0.5, as recipes get it
    before = mean_psnr(ra, x, draws=20)
    train_aux(ra, x, steps=40)
    after = mean_psnr(ra, x, draws=20)
    assert abs(after - target) < 0.5 * abs(before - target), (before, after)
    widths = sum(width(ra, op) for op in ra.ops)  # 1 + 1 + 0.2 at the start
    assert widths > 2.2 if target < before else widths < 2.2


def test_clamping_keeps_every_range_valid_and_the_forward_reads_clamped_values():
    ra = make(list(OPS), apply_prob=1.0)
    x = textured()
    opt = torch.optim.SGD(ra.parameters(), lr=1e3)  # steps far past every bound
    for sign in (1.0, -1.0):
        _, loss, _ = ra(x)
        opt.zero_grad()
        (sign * loss).backward()
        opt.step()
        _, _, stats = ra(x)  # not clamped yet: the forward uses the bounds anyway
        for name, (low, high) in ra.bounds().items():
            assert low - EPS <= stats[name].item() <= high + EPS, name
        ra.clamp_()
        for name, (low, high) in ra.bounds().items():
            assert low - EPS <= getattr(ra, name).item() <= high + EPS, name
        for op, spec in OPS.items():
            assert ra.ranges()[op][0].item() < spec.identity < ra.ranges()[op][1].item(), op
    # a parameter past its bound keeps its gradient (straight-through), so it can come back
    with torch.no_grad():
        ra.brightness_hi.fill_(50.0)
    ra.zero_grad()
    ra(x)[1].backward()
    assert ra.brightness_hi.grad.abs().item() > 0


@pytest.mark.parametrize("apply_prob", [1.0, 0.5])
def test_each_op_touches_about_apply_prob_of_the_samples(apply_prob):
    x = textured(b=64, c=1)
    out, _, _ = make(["brightness"], 1, apply_prob=apply_prob)(x)
    unchanged = (out == x).flatten(1).all(1).float().mean().item()
    assert unchanged == 0.0 if apply_prob == 1.0 else 0.3 < unchanged < 0.7


def test_eval_mode_is_the_identity_and_the_tightest_ranges_are_nearly_so():
    for op, spec in OPS.items():  # no range can close on the identity, where its gradient would die
        assert spec.lo_bounds[1] < spec.identity < spec.hi_bounds[0], op
        assert spec.lo_bounds[0] <= spec.init[0] <= spec.lo_bounds[1] and spec.hi_bounds[0] <= spec.init[1] <= spec.hi_bounds[1]
    ra = make(list(OPS), apply_prob=1.0)
    x = textured()
    out, loss, stats = ra.eval()(x)
    assert out is x and loss.item() == 0.0 and stats["psnr"].item() == PSNR_CAP
    ra.train()
    with torch.no_grad():  # every range at its narrowest: alive (a gradient) but nearly no change
        for name, (low, high) in ra.bounds().items():
            getattr(ra, name).fill_(high if name.endswith("_lo") else low)
    out, loss, stats = ra(x)
    assert 45.0 < stats["psnr"].item() < PSNR_CAP
    loss.backward()
    assert all(p.grad.abs().item() > 0 for p in ra.parameters())


def test_the_warp_is_grid_sample_built_from_gathers():
    x, theta = torch.rand(3, 2, 7, 9), torch.randn(3, 2, 3, requires_grad=True)
    ours = warp_affine(x, theta)
    ref = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    assert torch.allclose(ours, ref, atol=1e-5)
    g_ours, = torch.autograd.grad(ours.square().sum(), theta)
    g_ref, = torch.autograd.grad(ref.square().sum(), theta)
    assert torch.allclose(g_ours, g_ref, atol=1e-3, rtol=1e-4)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(3, 2, 3)
    assert torch.allclose(warp_affine(x, identity), x, atol=1e-5)


@pytest.mark.parametrize("shape,dtype", [((1, 3, 1, 1), torch.float32), ((5, 1, 7, 12), torch.float32),
                                         ((2, 3, 33, 20), torch.bfloat16)])
def test_any_batch_size_side_and_dtype(shape, dtype):
    ops = list(OPS) if shape[1] == 3 else GREY_OPS
    ra = make(ops, shape[1], apply_prob=1.0)
    x = torch.rand(shape).to(dtype)
    out, loss, stats = ra(x)
    assert out.shape == x.shape and out.dtype == dtype and 0.0 <= out.min() and out.max() <= 1.0
    assert loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in ra.parameters())


@pytest.mark.parametrize("cfg,message", [
    (dict(ops=["brightness", "saturation"]), "range_augment.ops: 'saturation' needs RGB images, but they have 1"),
    (dict(ops=["hue"]), "range_augment.ops: 'hue' needs RGB"),
    (dict(ops=["blur"]), "range_augment.ops: unknown op 'blur'; known: brightness"),
    (dict(ops=[]), "range_augment.ops is empty"),
    (dict(ops=["noise", "noise"]), "names an op twice"),
    (dict(target_psnr=0.0), "range_augment.target_psnr must be in (0, 100) dB"),
    (dict(apply_prob=0.0), "range_augment.apply_prob must be in (0, 1]"),
    (dict(init_ranges={"noise": [0.1, 0.2]}), "range_augment.init_ranges.noise must be [lo, hi] with lo in [-1.0"),
    (dict(init_ranges={"scale": [0.9, 1.1]}), "init_ranges: 'scale' is not in ops"),
])
def test_bad_settings_are_one_line_config_errors(cfg, message):
    with pytest.raises(ConfigError) as e:
        RangeAugment(RangeAugmentConfig(enabled=True, **cfg), 1)
    assert message in str(e.value) and "\n" not in str(e.value)


# --- the classification task -------------------------------------------------------------------

MODEL = {"name": "vit_classifier", "image_size": 16, "patch_size": 4, "in_chans": 1, "width": 16, "layers": 1,
         "heads": 2, "num_classes": 5}
RECIPE_YAML = """
model: {name: vit_classifier, image_size: 16, patch_size: 4, in_chans: 1, width: 16, layers: 1, heads: 2,
        num_classes: 5}
task:
  name: classification
  range_augment:
    enabled: true
    ops: [brightness, contrast, noise, rotate]
    target_psnr: 25
    loss_weight: 0.5
    init_ranges: {noise: [-0.05, 0.05]}
"""


def build(task_section: dict | None = None):
    from corefm.train.build import build_task
    from corefm.train.config import parse_recipe

    return build_task(parse_recipe({"model": MODEL, "task": {"name": "classification", **(task_section or {})}}))


def batch(b: int = 6) -> dict:
    return {"image": (textured(b, 1) - 0.5) / 0.5, "label": torch.arange(b) % 5}


def test_the_recipe_section_parses_and_survives_a_resume_check():
    from corefm.train import recipe_diff
    from corefm.train.config import parse_recipe, recipe_to_dict

    recipe = parse_recipe(yaml.safe_load(RECIPE_YAML))
    ra = recipe.task.range_augment
    assert isinstance(ra, RangeAugmentConfig) and ra.enabled and ra.ops == ["brightness", "contrast", "noise", "rotate"]
    assert (ra.target_psnr, ra.loss_weight, ra.init_ranges) == (25.0, 0.5, {"noise": [-0.05, 0.05]})
    stored = recipe_to_dict(recipe)  # what a checkpoint keeps; a resume parses it again and compares
    assert recipe_diff.recipe_changes(recipe_to_dict(parse_recipe(stored)), stored) == ({}, {})
    off = parse_recipe({"model": MODEL, "task": {"name": "classification"}})
    assert off.task.range_augment.enabled is False
    bad = yaml.safe_load(RECIPE_YAML)
    bad["task"]["range_augment"]["ops"] = ["brightness", "blurr"]
    with pytest.raises(ConfigError, match=r"task\.range_augment\.ops\[1\]: 'blurr' is not one of"):
        parse_recipe(bad)


def test_off_by_default_the_task_is_unchanged():
    task = build()
    assert task.range_augment is None and task.parameter_bounds() == {}
    assert all(k.startswith("model.") for k in task.state_dict())  # old checkpoints still fit
    assert set(task(batch())) == {"loss", "acc"}


def test_the_task_trains_the_ranges_with_the_model_on_train_batches_only():
    from corefm.train.bounds import clamp_bounded
    from corefm.train.config import OptimConfig
    from corefm.train.optim import build_optimizer
    from corefm.train.step_metrics import MetricWindow

    task = build({"range_augment": {"enabled": True, "ops": ["brightness", "noise", "rotate"], "loss_weight": 0.5,
                                    "apply_prob": 1.0}})
    data = batch()
    out = task(data)
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 0.5 * out["ra_loss"].item(), rel=1e-5)
    assert out["ra_loss"].item() > 0 and 0 < out["ra_psnr"].item() < PSNR_CAP
    assert out["ra_brightness_lo"].item() == pytest.approx(0.5) and out["ra_noise_hi"].item() == pytest.approx(0.1)
    window = MetricWindow(torch.device("cpu"))
    window.add(out)  # every extra key is a one-element tensor the trainer logs
    assert {"ce", "ra_loss", "ra_psnr", "ra_rotate_hi"} <= set(window.sums)
    out["loss"].backward()
    params = dict(task.named_parameters())
    for name in ("range_augment.brightness_lo", "range_augment.noise_hi", "range_augment.rotate_lo",
                 "model.head.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    # the trainer's optimizer holds the ranges; its clamp keeps them in bounds; export leaves them out
    optimizer = build_optimizer(task, OptimConfig(lr=100.0))
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    ranges = {f"range_augment.{op}_{end}" for op in ("brightness", "noise", "rotate") for end in ("lo", "hi")}
    assert set(task.parameter_bounds()) == ranges and all(id(params[n]) in held for n in ranges)
    optimizer.step()
    clamp_bounded(task, task.parameter_bounds())
    for name, (low, high) in task.parameter_bounds().items():
        assert low - EPS <= params[name].item() <= high + EPS, name
    exported = task.export_state_dict(task.state_dict())
    assert exported and not [k for k in exported if "range_augment" in k or "_lo" in k or "_hi" in k]
    # eval batches are not augmented: the eval loss is the model's on the images as given
    with torch.no_grad():
        sums = task(data, mode="eval")
        want = F.cross_entropy(task.model(data["image"]).float(), data["label"], reduction="sum")
    assert sums["loss_sum"].item() == pytest.approx(want.item(), rel=1e-5)


def test_the_task_denormalises_for_the_ops_and_renormalises_after():
    task = build({"mean": 0.25, "std": 2.0, "range_augment": {"enabled": True}})
    seen = {}

    def halve(x: torch.Tensor):  # stands in for RangeAugment.forward: records what the ops would see
        seen["ops"] = x
        return 0.5 * x, x.new_zeros(()), {"psnr": x.new_zeros(())}

    task.range_augment.forward = halve
    task.model.register_forward_pre_hook(lambda m, args: seen.setdefault("model", args[0]))
    images01 = textured(4, 1)
    task({"image": (images01 - 0.25) / 2.0, "label": torch.zeros(4, dtype=torch.long)})
    assert torch.allclose(seen["ops"], images01, atol=1e-6)  # the ops get [0, 1] images
    assert torch.allclose(seen["model"], (0.5 * images01 - 0.25) / 2.0, atol=1e-6)  # the model normalised ones


def test_colour_ops_on_a_grey_model_are_refused_at_build():
    with pytest.raises(ConfigError, match=r"^task\.range_augment\.ops: 'saturation' needs RGB images, but they have 1"):
        build({"range_augment": {"enabled": True, "ops": ["saturation"]}})


def test_lr_scale_gives_the_ranges_their_own_learning_rate():
    from corefm.train.config import OptimConfig
    from corefm.train.optim import build_optimizer

    task = build({"range_augment": {"enabled": True, "lr_scale": 10.0}})
    optimizer = build_optimizer(task, OptimConfig(lr=1e-3))
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(task.range_augment.noise_hi)] == pytest.approx(1e-2)
    assert lrs[id(task.model.head.weight)] == pytest.approx(1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_task_with_range_augment_runs_on_a_stand_in_cuda_device(dtype):
    from tests.stand_in_device import check_task_on_cuda

    task = build({"range_augment": {"enabled": True, "ops": GREY_OPS}})
    outs = check_task_on_cuda(task, batch(4), dtype)
    assert {"ra_loss", "ra_psnr", "ra_scale_hi"} <= set(outs["train"])
