"""The trainable augmentation channel P(T|X, eta): a softmax over a grid of crops.

T ranges over K crops t_k of a canvas: 28x28 windows at stride 4 (8 x 8 = 64 crops of
a 56x56 canvas, 3 x 3 = 9 of a 36x36 one), so every expectation over T is an exact sum.
The channel is a small CNN whose receptive field is one crop: logit k scores the
pixels of crop k, and a log-softmax over the K logits gives log P(t_k | x).
Shapes: B batch, C canvas side, G crops per side, K = G * G crops.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

CROP = 28  # side of a crop t_k: an MNIST digit's
STRIDE = 4  # between neighbouring crops: a multiple of the encoder's total stride


def check_canvas(canvas, crop=CROP, stride=STRIDE):
    """Refuse a canvas the crop grid does not tile: it must be crop + a multiple of stride."""
    if canvas < crop:
        raise ValueError(f"canvas {canvas} is smaller than the {crop}x{crop} crop")
    if (canvas - crop) % stride:
        raise ValueError(f"canvas {canvas} is not on the crop grid: canvas - {crop} must be a "
                         f"multiple of the stride {stride} "
                         f"(try {canvas - (canvas - crop) % stride})")


def grid_offsets(canvas, crop=CROP, stride=STRIDE):
    """(K, 2) top-left (row, col) of every grid crop, row-major like the encoder's output."""
    check_canvas(canvas, crop, stride)
    steps = torch.arange(0, canvas - crop + 1, stride)  # (G,)
    return torch.cartesian_prod(steps, steps)  # (K, 2)


def crops_at(x, offsets, crop=CROP):
    """The crops of each canvas at its own offsets: x (B, 1, C, C), offsets (B, m, 2) -> the
    (B, m, crop, crop) crops, which for m = 1 is a batch of one-channel images."""
    r = offsets[..., :1].to(x.device) + torch.arange(crop, device=x.device)  # (B, m, crop)
    c = offsets[..., 1:].to(x.device) + torch.arange(crop, device=x.device)  # (B, m, crop)
    b = torch.arange(len(x), device=x.device)[:, None, None, None]  # (B, 1, 1, 1)
    return x[b, 0, r[..., :, None], c[..., None, :]]  # (B, m, crop, crop)


class Channel(nn.Module):
    """x -> log P(t | x, eta) over the K grid crops; uniform at initialization."""

    def __init__(self, width=32):
        super().__init__()
        # 28 -pool-> 14 -conv5-> 10 -pool-> 5 -conv5-> 1: one logit per crop, seeing that crop only
        self.net = nn.Sequential(
            nn.AvgPool2d(2), nn.Conv2d(1, width, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(width, 1, 5, bias=False))  # a bias would shift every logit: softmax drops it
        self.to(memory_format=torch.channels_last)  # as the encoder (model.py)
        nn.init.zeros_(self.net[-1].weight)  # all logits equal: training starts at SimCLR

    def forward(self, x):
        """x (B, 1, C, C) in [0, 1] -> logp (B, K)."""
        return self.net(x).flatten(1).to(x.dtype).log_softmax(1)  # (B, K) x's dtype under bf16


def entropy(logp):
    """H(T|X) = -E_x sum_k p log p, in nats; log K for the uniform channel."""
    return -(logp.exp() * logp).sum(1).mean()


def digit_coverage(logp, x):
    """E_{T ~ P(T|X)} of the fraction of the canvas's ink inside the crop, mean over the batch."""
    ink = F.avg_pool2d(x, CROP, STRIDE).flatten(1) * CROP**2  # (B, K) ink inside crop k
    return (logp.exp() * ink / x.sum((1, 2, 3))[:, None]).sum(1).mean()
