"""The encoder h (28x28 crop -> 256 features) and the projection head f (-> d unit vectors).

h is a CNN without padding whose total stride, 4, divides the crop grid's stride, so
one pass over a whole canvas yields h of every grid crop at once, exactly equal to
encoding each crop on its own (translation equivariance; METHOD.md, section 2).
Each max-pool comes before its ReLU: the same function (ReLU is monotone), on a quarter of
the values. The weights are held channels-last, where a CPU max-pools 9x faster.
Shapes: B batch, C canvas side, G crops per side, K = G * G crops, d = dim of z.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURES = 256  # 256 read higher than 128 on the validation split (NOTES.md)


class Encoder(nn.Module):
    def __init__(self, dim=50):
        super().__init__()
        # 28 -conv5-> 24 -pool-> 12 -conv3-> 10 -pool-> 5 -conv5-> 1; a canvas: (C - 28) / 4 + 1
        self.h = nn.Sequential(
            nn.Conv2d(1, 32, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 64, 3), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(64, FEATURES, 5), nn.ReLU())
        self.f = nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.ReLU(), nn.Linear(FEATURES, dim))
        self.to(memory_format=torch.channels_last)  # convolutions then run channels-last too

    def forward(self, x):
        """x (B, 1, C, C) in [0, 1] -> h (B, K, 256), z = f(h) / |f(h)| (B, K, d), row-major."""
        h = self.h(x).flatten(2).transpose(1, 2)  # (B, K, 256)
        z = F.normalize(self.f(h).to(x.dtype), dim=-1)  # (B, K, d) unit, x's dtype under bf16
        return h, z


# of the weights, the canvases, z and log P: "bf16" keeps float32 weights and autocasts the passes;
# "float64" is for checking numerics, where float32 rounding would hide what the math guarantees
DTYPES = {"float32": torch.float32, "bf16": torch.float32, "float64": torch.float64}


def resolve_precision(precision, device):
    """"auto" -> "bf16" where the device has bf16 arithmetic units, else "float32" (without them
    bf16 is emulated); "float32", "bf16" and "float64" are kept."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "float32"
    # torch.cpu's private checks are the only ones there are of the CPU's bf16 units; a torch
    # without them is taken to have none
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return "bf16" if native else "float32"


def autocast(device, precision):
    """The networks' passes in bfloat16 ("bf16") or not; z and log P come out in the input's
    dtype."""
    return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")
