"""Draw the figures of the concepts page with the library itself.

Run by ``docs/conf.py`` at the start of every build (``python docs/make_figures.py OUT``
works too). Each figure is computed by the public API on a small fixed example, so the
pictures show what the code does today:

* ``attention_mask.png``: :func:`hybridmatch.denoising_hybrid_mask` for the layout
  ``[dn | o2o | o2m]``;
* ``assignments.png``: one synthetic image's ground truth and query boxes, matched by
  :class:`hybridmatch.HungarianMatcher` (one-to-one) and by
  :class:`hybridmatch.OneToManyMatcher` (K = 3);
* ``convergence.png``: AP per epoch of each scheme, from ``benchmarks/convergence.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def attention_mask(path: Path) -> None:
    from hybridmatch import denoising_hybrid_mask

    plt = _pyplot()
    # 2 denoising groups of 4, 6 one-to-one and 12 one-to-many queries.
    mask = denoising_hybrid_mask(2, 4, 6, 12)
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    ax.imshow(mask.numpy(), cmap="Greys", interpolation="nearest")
    edges = [4, 8, 14]
    for edge in edges:
        ax.axhline(edge - 0.5, color="tab:red", lw=0.8)
        ax.axvline(edge - 0.5, color="tab:red", lw=0.8)
    centres = [2, 6, 11, 20]
    names = ["dn0", "dn1", "o2o", "o2m"]
    ax.set_xticks([c - 0.5 for c in centres], names)
    ax.set_yticks([c - 0.5 for c in centres], names)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title("denoising_hybrid_mask(2, 4, 6, 12)\nblack = blocked", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _synthetic_image():
    """Three objects and 24 query boxes scattered around them (fixed seed)."""
    generator = torch.Generator().manual_seed(0)
    gt = torch.tensor([[0.28, 0.32, 0.30, 0.34], [0.70, 0.35, 0.26, 0.30], [0.50, 0.75, 0.40, 0.26]])
    labels = torch.tensor([0, 1, 2])
    centres = gt[torch.arange(24) % 3]
    noise = torch.randn(24, 4, generator=generator) * torch.tensor([0.06, 0.06, 0.05, 0.05])
    boxes = (centres + noise).clamp(0.05, 0.95)
    logits = torch.randn(24, 3, generator=generator)
    logits[torch.arange(24), torch.arange(24) % 3] += 1.5
    outputs = {"pred_logits": logits[None], "pred_boxes": boxes[None]}
    return outputs, [{"labels": labels, "boxes": gt}]


def assignments(path: Path) -> None:
    from matplotlib.patches import Rectangle

    from hybridmatch import HungarianMatcher, OneToManyMatcher

    plt = _pyplot()
    outputs, targets = _synthetic_image()
    colours = ["tab:blue", "tab:orange", "tab:green"]
    panels = [
        ("one-to-one: HungarianMatcher()", HungarianMatcher()),
        ("one-to-many: OneToManyMatcher(k=3)", OneToManyMatcher(k=3)),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.9))
    for ax, (title, matcher) in zip(axes, panels):
        (queries, matched), = matcher(outputs, targets)
        target_of = dict(zip(queries.tolist(), matched.tolist()))
        for q, (cx, cy, w, h) in enumerate(outputs["pred_boxes"][0].tolist()):
            t = target_of.get(q)
            ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fill=False,
                                   lw=1.4 if t is not None else 0.6,
                                   ec=colours[t] if t is not None else "0.75",
                                   ls="-" if t is not None else ":"))
        for t, (cx, cy, w, h) in enumerate(targets[0]["boxes"].tolist()):
            ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fill=True, alpha=0.18, fc=colours[t],
                                   ec=colours[t], lw=2.5))
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title}\n{len(queries)} of 24 queries matched", fontsize=9)
    fig.text(0.5, 0.02, "filled: ground truth; outlined in its colour: the queries matched to it; "
             "dotted grey: 'no object'", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def convergence(path: Path) -> None:
    plt = _pyplot()
    data = json.loads((ROOT / "benchmarks" / "convergence.json").read_text())
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for scheme, result in data["ap_per_epoch"].items():
        # convergence.json stores AP as a fraction; every table of the project uses %.
        mean = [100 * value for value in result["mean"]]
        epochs = range(1, len(mean) + 1)
        ax.plot(epochs, mean, marker="o", ms=3, label=scheme)
        runs = 100 * torch.tensor(result["runs"])
        ax.fill_between(epochs, runs.min(0).values, runs.max(0).values, alpha=0.15)
    settings = data["settings"]
    ax.set_xlabel("epoch")
    ax.set_ylabel("COCO AP (%), validation")
    ax.set_title(f"benchmarks/convergence.json: {settings['train_images']} synthetic images, "
                 f"seeds {data['seeds']}", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    attention_mask(out / "attention_mask.png")
    assignments(out / "assignments.png")
    convergence(out / "convergence.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "_figures")
