"""Train the demo's gap detector with ``fused_losses.GapDetectionLoss`` and evaluate it.

* **Loss.** ``fused_losses.GapDetectionLoss``: focal heatmap loss (weighted up, ``--w-heatmap``),
  offset smooth-L1, angle cosine loss and the hard-negative margin of the gap heatmap against the
  confusers and the piece (the other jigsaw shape in the image), all masked by the padding weight.
  Trained with Adam (warm-up, then cosine decay). Where the hardware has fast bf16 (CUDA, or a CPU
  with AMX) the network runs under bf16 autocast; the loss always gets fp32 tensors.
* **Evaluation.** On held-out images (fixed seed) the gap centre is decoded as the argmax cell of
  the gap heatmap plus its predicted offset, and the mean Euclidean error in pixels is compared
  with the error of a uniformly random guess inside the image area.
* **Output.** The run ends with ``mean gap error: <float> px (random guess: <float> px)`` and a last
  line naming the files written to ``--out``: ``predictions.png``, ``loss_curve.svg`` and
  ``metrics.json``.

The final error depends on the number of torch CPU threads (the order of float reductions), so
``--threads`` defaults to a fixed 2: the default run gives the same numbers on any machine with the
same torch build.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

import fused_losses
from fused_losses import backend as backend_mod

from .data import STRIDE, make_batch
from .figures import write_loss_curve, write_predictions
from .model import GapNet, _net_input, decode

DEFAULT_THREADS = 2
N_EXAMPLES = 6  # held-out images shown in predictions.png
DEVICE_CHOICES = "cpu, cuda, cuda:N (gpu is an alias of cuda)"


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Held-out metrics and the first few examples (CPU tensors) for the figure."""

    mean_error: float  # px
    random_error: float  # px, uniform guess inside the valid image area
    hit_rate: float  # fraction within 8 px
    images: torch.Tensor  # [N,3,H,W]
    gap_logits: torch.Tensor  # [N,1,H/4,W/4]
    truth: torch.Tensor  # [N,2] (x, y) px
    pred: torch.Tensor  # [N,2]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    n_images: int,
    seed: int,
    device: torch.device,
    bf16: bool = False,
    batch_size: int = 16,
    n_examples: int = N_EXAMPLES,
) -> EvalResult:
    """Mean gap-centre error (px), the random-guess error (px), the fraction within 8 px, and the
    first ``n_examples`` images with their gap logits, true and predicted centres.

    The held-out images depend only on ``seed``, ``n_images`` and ``batch_size`` (not on training).
    """
    model.eval()
    g = torch.Generator().manual_seed(seed)
    errs, rand_errs = [], []
    keep: dict[str, list[torch.Tensor]] = {"images": [], "gap_logits": [], "truth": [], "pred": []}
    kept = 0
    done = 0
    bar = tqdm(
        total=n_images,
        desc="eval",
        unit="img",
        mininterval=0.5,
        dynamic_ncols=True,
        postfix={"seed": seed},
    )
    while done < n_images:
        b = min(batch_size, n_images - done)
        batch = make_batch(g, b, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            hg, _, off, _ = model(_net_input(batch))
        pred = decode(hg.float(), off.float(), batch.padding_mask)
        errs.append((pred - batch.gap_center).norm(dim=-1).cpu())
        if kept < n_examples:
            k = min(b, n_examples - kept)
            keep["images"].append(batch.image[:k].cpu())
            keep["gap_logits"].append(hg[:k].float().cpu())
            keep["truth"].append(batch.gap_center[:k].cpu())
            keep["pred"].append(pred[:k].cpu())
            kept += k
        # random guess: uniform points in the valid image area (64 draws per image, averaged)
        box = batch.valid_box.cpu()
        t = torch.rand((b, 64, 2), generator=g)
        guess = box[:, None, :2] + t * (box[:, None, 2:] - box[:, None, :2])
        rand_errs.append((guess - batch.gap_center.cpu()[:, None]).norm(dim=-1).mean(1))
        done += b
        bar.update(b)
    bar.close()
    err = torch.cat(errs)
    model.train()
    return EvalResult(
        mean_error=err.mean().item(),
        random_error=torch.cat(rand_errs).mean().item(),
        hit_rate=(err <= 8).float().mean().item(),
        **{name: torch.cat(parts) for name, parts in keep.items()},
    )


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to run the network under bf16 autocast."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # oneDNN runs bf16 convolutions on AMX tiles several times faster than fp32; elsewhere it
    # would be slower, so stay in fp32
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return device.type == "cpu" and amx is not None and bool(amx())


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (``--help`` lists them with their defaults)."""
    p = argparse.ArgumentParser(
        prog="python -m fused_losses.demo",
        description="Train a small slider-captcha gap detector on synthetic images with "
        "fused_losses.GapDetectionLoss, evaluate it on held-out images and write a loss curve, "
        "a figure of predictions and the metrics to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--steps", type=_positive_int, default=200, help="training steps")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per training step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate")
    p.add_argument("--device", default="cpu", help=f"where to train: {DEVICE_CHOICES}")
    p.add_argument("--seed", type=int, default=0, help="seed for the model and the training data")
    p.add_argument(
        "--eval-images", type=_positive_int, default=256, help="number of held-out images"
    )
    p.add_argument("--eval-seed", type=int, default=12345, help="seed of the held-out images")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=DEFAULT_THREADS,
        help="torch CPU threads; fixed by default because the final error depends on it",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="network precision; auto = bf16 autocast where the hardware has fast bf16 "
        "(CUDA, or a CPU with AMX), else fp32. The loss always runs in fp32.",
    )
    p.add_argument(
        "--backend",
        choices=list(backend_mod.BACKENDS),
        default="auto",
        help="loss backend: the Triton kernels (CUDA, or CPU with TRITON_INTERPRET=1), the "
        "pure-PyTorch torch backend, or auto (triton on CUDA, else torch; the environment "
        "variable FUSED_LOSSES_BACKEND replaces auto)",
    )
    # The focal terms are averaged over all ~8k cells of a map (normalize="weight"), which makes
    # them ~1e-3 next to the offset / angle terms (averaged over the few positive cells); an
    # up-weighting lets the heatmaps drive the shared features.
    p.add_argument(
        "--w-heatmap", type=float, default=20.0, help="weight of the focal heatmap terms"
    )
    p.add_argument(
        "--out",
        default="demo_out",
        help="folder (relative to the current directory) for predictions.png, loss_curve.svg "
        "and metrics.json; created if missing",
    )
    return p.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device name``; ``SystemExit`` with a one-line message if it is
    unknown or not available here. ``gpu`` (and ``gpu:N``) is an alias of ``cuda``."""
    text = name.strip().lower()
    if text == "gpu" or text.startswith("gpu:"):
        text = "cuda" + text[3:]
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise SystemExit(
            f"--device {name}: unknown device; choose one of {DEVICE_CHOICES}"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(
            f"--device {name}: not supported by the demo; choose one of {DEVICE_CHOICES}"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            )
            raise SystemExit(
                f"--device {name}: CUDA is not available here (torch {torch.__version__}, {build}, "
                "no usable GPU); run with --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SystemExit(
                f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s); "
                "use --device cuda or cuda:0"
            )
    return device


def check_backend(backend: str, device: torch.device) -> str:
    """The concrete loss backend ("torch" or "triton") for ``device``, checked before training;
    ``SystemExit`` with a one-line message saying what to do instead if it cannot run there."""
    try:
        return backend_mod.resolve_backend(backend, device)
    except (ValueError, RuntimeError) as e:
        reason = " ".join(str(e).split())
        if device.type == "cuda":
            hint = "use --backend torch (or auto)"
        else:
            hint = (
                "use --backend torch (or auto), --device cuda on a GPU, or set TRITON_INTERPRET=1 "
                "to run the Triton kernels in Triton's (slow) interpreter"
            )
        raise SystemExit(f"--backend {backend} cannot run on {device}: {reason}; {hint}") from None


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> float:
    """Train the gap detector, evaluate it, write the figures and metrics to ``--out``, print the
    summary lines (the last names the files written) and return the mean gap error in px."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    loss_backend = check_backend(args.backend, device)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)

    bf16 = _use_bf16(args.precision, device)
    model = GapNet().to(device, memory_format=torch.channels_last)
    criterion = fused_losses.GapDetectionLoss(
        stride=STRIDE, from_logits=True, w_heatmap=args.w_heatmap, backend=args.backend
    )
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = max(1, min(50, args.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, s / max(1, args.steps))))
        ),
    )

    history: list[torch.Tensor] = []  # per step: total and components, detached, on the device
    components: list[str] = []
    t0 = time.perf_counter()
    bar = tqdm(range(args.steps), desc="train", mininterval=0.5, dynamic_ncols=True)
    for step in bar:
        b = args.batch_size
        batch = make_batch(g, b, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(_net_input(batch))
        hg, hp, off, ang = (o.float() for o in outputs)
        # hard negatives for the gap heatmap: the fake gaps, and the piece (the other jigsaw shape)
        negatives = torch.cat([batch.confusers, batch.piece_center[:, None]], 1)
        negative_mask = torch.cat([batch.confuser_mask, batch.confuser_mask.new_ones(b, 1)], 1)
        loss, comps = criterion(
            hg,
            hp,
            off,
            ang,
            batch.gap_center,
            batch.piece_center,
            batch.gap_angle,
            confusers=negatives,
            confuser_mask=negative_mask,
            padding_mask=batch.padding_mask,
            return_components=True,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        # no host sync here: the values stay on the device until the run is over
        components = list(comps)
        history.append(torch.stack([loss.detach(), *comps.values()]))
        if step % 5 == 0 or step == args.steps - 1:  # .item() syncs a GPU: not every step
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                hg=f"{comps['heatmap_gap'].item():.4f}",
                hp=f"{comps['heatmap_piece'].item():.4f}",
                off=f"{comps['offset'].item():.3f}",
                ang=f"{comps['angle'].item():.3f}",
                hn=f"{comps['hard_negative'].item():.3f}",
                refresh=False,
            )
    bar.close()
    train_s = time.perf_counter() - t0
    losses = torch.stack(history).float().cpu()  # [steps, 1 + components], one transfer

    res = evaluate(model, args.eval_images, args.eval_seed, device, bf16)
    print(
        f"trained {args.steps} steps x {args.batch_size} images in {train_s:.1f} s "
        f"({args.threads} CPU threads, {device}, {loss_backend} loss); "
        f"{args.eval_images} held-out images: {100 * res.hit_rate:.1f}% within 8 px"
    )
    print(f"mean gap error: {res.mean_error:.2f} px (random guess: {res.random_error:.2f} px)")

    os.makedirs(args.out, exist_ok=True)
    paths = {
        name: os.path.join(args.out, name)
        for name in ("predictions.png", "loss_curve.svg", "metrics.json")
    }
    write_predictions(paths["predictions.png"], res.images, res.gap_logits, res.truth, res.pred)
    title = f"training loss per step (total with w_heatmap={args.w_heatmap:g}; parts unweighted)"
    write_loss_curve(paths["loss_curve.svg"], losses, ["total", *components], title=title)
    metrics = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "threads": args.threads,
        "device": str(device),
        "backend": loss_backend,
        "bf16": bf16,
        "lr": args.lr,
        "w_heatmap": args.w_heatmap,
        "eval_images": args.eval_images,
        "eval_seed": args.eval_seed,
        "train_seconds": round(train_s, 3),
        "mean_error_px": res.mean_error,
        "random_guess_error_px": res.random_error,
        "hit_rate_8px": res.hit_rate,
        "final_loss": {n: float(v) for n, v in zip(["total", *components], losses[-1])},
        "torch": torch.__version__,
    }
    with open(paths["metrics.json"], "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print("wrote " + ", ".join(paths.values()))
    return res.mean_error
