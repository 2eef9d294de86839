"""Stage 3: the style judge and the object judge (small CNNs trained on procedural images).

They play UnlearnCanvas's two classifiers. Training uses mild degradations (blur, noise, brightness,
shifts) so that the judges read generated images as well as clean renders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ._train import lr_at, run_steps, step_rng, to_float_images
from .concepts import OBJECTS, STYLES


@dataclass(frozen=True)
class JudgeConfig:
    """CNN widths and training schedule of one judge."""

    widths: tuple[int, ...] = (32, 64, 128, 128)
    batch_size: int = 128
    steps: int = 300
    lr: float = 2e-3


class JudgeNet(nn.Module):
    """conv3x3-GN-ReLU + 2x2 max-pool per width, global average pool, linear head."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.GroupNorm(8, w), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) in [-1, 1] -> logits (N, C)."""
        return self.head(self.features(x).mean(dim=(2, 3)))


class Judge:
    """A trained classifier: ``judge(images) -> probabilities``.

    Attributes:
        classes: canonical class names, in the order of :data:`STYLES` or :data:`OBJECTS`.
        net: the underlying :class:`JudgeNet`.
    """

    def __init__(self, net: JudgeNet, classes: tuple[str, ...]) -> None:
        self.net = net.eval()
        self.classes = tuple(classes)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: float (N, 3, H, W) in [0, 1] -> class probabilities (N, C) on the judge's device."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"Judge expects float images (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}"
            )
        p = next(self.net.parameters())
        x = images.to(device=p.device, dtype=p.dtype) * 2 - 1
        return F.softmax(self.net(x), dim=-1)

    def to(self, device: torch.device | str) -> Judge:
        """A judge on ``device`` (the network is moved in place)."""
        self.net.to(device)
        return self

    def save(self, directory: Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()},
            str(directory / "model.safetensors"),
        )
        widths = [m.out_channels for m in self.net.features if isinstance(m, nn.Conv2d)]
        (directory / "config.json").write_text(
            json.dumps({"classes": list(self.classes), "widths": widths}, indent=2)
        )

    @classmethod
    def load(cls, directory: Path, *, device: torch.device | str = "cpu") -> Judge:
        """Read a judge written by :meth:`save`."""
        cfg = json.loads((directory / "config.json").read_text())
        net = JudgeNet(len(cfg["classes"]), tuple(cfg["widths"]))
        state = {k: v.float() for k, v in load_file(str(directory / "model.safetensors")).items()}
        net.load_state_dict(state)
        return cls(net.to(device), tuple(cfg["classes"]))


def degrade(x: torch.Tensor, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Random mild degradations of float images (N, 3, H, W) in [0, 1]: shift, blur, brightness, noise."""
    n = x.shape[0]
    dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    blur = torch.from_numpy(rng.random(n) < 0.35)
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        xb = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
        x = torch.where(blur[:, None, None, None], xb, x)
    gain = torch.from_numpy(rng.uniform(0.9, 1.1, (n, 1, 1, 1))).float()
    bias = torch.from_numpy(rng.uniform(-0.04, 0.04, (n, 1, 1, 1))).float()
    sigma = torch.from_numpy(rng.uniform(0.0, 0.04, (n, 1, 1, 1))).float()
    x = x * gain + bias + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def train_judge(
    kind: str,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: JudgeConfig,
    seed: int,
    device: torch.device,
    ckpt_dir: Path | None = None,
    progress: bool = True,
) -> Judge:
    """Train the ``"style"`` or ``"object"`` judge on uint8 images (N, H, W, 3) with integer labels (N,)."""
    classes = {"style": STYLES, "object": OBJECTS}[kind]
    torch.manual_seed(seed)
    net = JudgeNet(len(classes), cfg.widths).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    x_all = to_float_images(images)
    y_all = torch.from_numpy(labels)

    def step_fn(step: int) -> float:
        rng, gen = step_rng(seed, step, stream=3 if kind == "style" else 4)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base_lr=cfg.lr, warmup=30, total=cfg.steps, final_frac=0.02)
        idx = rng.integers(len(images), size=cfg.batch_size)
        x = degrade(x_all[idx], rng, gen).to(device) * 2 - 1
        loss = F.cross_entropy(net(x), y_all[idx].to(device), label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    net.train()
    run_steps(
        name=f"judge[{kind}]",
        steps=cfg.steps,
        step_fn=step_fn,
        ckpt_dir=ckpt_dir,
        modules={"net": net},
        opt=opt,
        progress=progress,
    )
    return Judge(net.eval(), classes)


@torch.no_grad()
def judge_accuracy(judge: Judge, images: torch.Tensor, labels: np.ndarray, *, batch: int = 512) -> float:
    """Top-1 accuracy of ``judge`` on float images (N, 3, H, W) in [0, 1]."""
    pred = torch.cat([judge(images[i : i + batch]).argmax(1).cpu() for i in range(0, len(images), batch)])
    return float((pred.numpy() == labels).mean())


def config_dict(cfg: JudgeConfig) -> dict:
    return asdict(cfg)
