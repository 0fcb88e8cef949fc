"""Small networks with the shapes real graphs have and nn.Sequential lacks.

Referenced as `toy_models:NAME` (the tests put this folder on the import path).
"""

import torch
from torch import nn

from swapnet_core import model_factory, output_adapter
from swapnet_core.adapters import ClassScores


class ClassToken(nn.Module):
    """ViT-like: a container's own tensors used after a child ran, and an unused one."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 16, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 17, 16))
        self.unused = nn.Parameter(torch.randn(16))
        self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.GELU()) for _ in range(4)])
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = self.proj(x).flatten(2).transpose(1, 2)[:, :16]
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.blocks(t)[:, 0])


class SharedHead(nn.Module):
    """RetinaNet/RPN-like: one head applied to every pyramid level (interleaved repeated calls)."""

    def __init__(self):
        super().__init__()
        self.levels = nn.ModuleList([nn.Conv2d(3 if i == 0 else 8, 8, 3, stride=2, padding=1) for i in range(3)])
        self.head_conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head_cls = nn.Conv2d(8, 4, 1)
        self.tail = nn.Linear(4, 2)

    def forward(self, x):
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        scores = [self.head_cls(torch.relu(self.head_conv(f))).mean((2, 3)) for f in feats]
        return self.tail(torch.stack(scores).sum(0))


class Tied(nn.Module):
    """One Parameter in two modules (tied embedding / output projection)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(12, 24, bias=False)
        self.mid = nn.Linear(24, 24)
        self.out = nn.Linear(12, 24, bias=False)
        self.out.weight = self.embed.weight
        self.back = nn.Linear(24, 5)

    def forward(self, x):
        x = x.flatten(1)[:, :12]
        h = torch.relu(self.mid(self.embed(x)))
        return self.back(h + self.out(x))


class Escaping(nn.Module):
    """A view of one module's weight outlives that module's call."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        x = x.flatten(1)[:, :8]
        y = self.a(x)
        bias_view = self.a.bias[:4]  # taken inside a's window... (a has just run)
        y = self.b(y)
        return y[:, :4] + bias_view  # ...used after b ran


class Branchy(nn.Module):
    """Data-dependent control flow: `rare` runs only for bright images; BatchNorm buffers; a
    non-persistent buffer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.rare = nn.Conv2d(8, 8, 3, padding=1)
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
                                    for _ in range(4)])
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1), persistent=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        if x.mean() > 1.0:
            x = self.rare(x)
        x = self.body(x) * self.scale
        return self.head(x.mean((2, 3)))


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@model_factory
def class_token():
    return ClassToken()


@model_factory
def shared_head():
    return SharedHead()


@model_factory
def tied():
    return Tied()


@model_factory
def escaping():
    return Escaping()


@model_factory
def branchy():
    return _randomize_bn(Branchy())


@model_factory
def broken():
    raise RuntimeError("this factory always fails")


class Detour(nn.Module):
    """A unit whose own forward calls a data-dependent child, then uses its own weight again."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(8, 8))
        self.child = nn.Linear(8, 8)
        self.post = nn.Linear(8, 8)

    def forward(self, x):
        x = self.pre(x.flatten(1)[:, :8])
        h = x @ self.w
        if h.mean() > 5:
            h = self.child(h)
        return self.post(h @ self.w)


class FetchBefore(nn.Module):
    """Takes another module's weight before a third unit runs, computes with it after."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        wb = self.b.weight
        h = self.a(x.flatten(1)[:, :8])
        return torch.nn.functional.linear(h, wb)


class Counter(nn.Module):
    """State a forward updates in place (a step counter)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("steps", torch.zeros(1))

    def forward(self, x):
        self.steps.add_(1)
        return self.lin(x.flatten(1)[:, :8]) * self.steps


class ListHolder(nn.Module):
    """Keeps a tensor in a plain list attribute: cannot be rebuilt without weights."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.table = [torch.randn(8)]

    def forward(self, x):
        return self.lin(x.flatten(1)[:, :8]) + self.table[0]


@model_factory
def detour():
    return Detour()


@model_factory
def fetch_before():
    return FetchBefore()


@model_factory
def counter():
    return Counter()


@model_factory
def list_holder():
    return ListHolder()


class SlowToInit(nn.Module):
    """Takes `seconds` to initialise its weights for real (as a large network does), none on meta."""

    def __init__(self, seconds):
        super().__init__()
        if torch.empty(0).device.type != "meta":
            import time

            time.sleep(seconds)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))

    def forward(self, x):
        return self.body(x)


@model_factory(task="segmentation")
def slow(seconds=5.0):
    return SlowToInit(seconds)


class TwoImages(nn.Module):
    """Takes two image batches (as optical flow and stereo networks do): one encoder for both."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1))
        self.fuse = nn.Sequential(*[nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()) for _ in range(4)])
        self.head = nn.Conv2d(32, 2, 1)

    def forward(self, image1, image2):
        return self.head(self.fuse(torch.cat([self.encoder(image1), self.encoder(image2)], 1)))


@model_factory(example_input="random:1x3x32x32,random:1x3x32x32")
def two_images():
    return TwoImages()


@output_adapter
def scores_of_the_first_image(output, input_size, info):
    """A user's own adapter: the network's raw (N, C, H, W) output as class scores."""
    return ClassScores(output[0])
