"""Built-in model zoo: real computer-vision architectures in plain PyTorch.

The zoo lets ``capsim calibrate`` time realistic models without downloading anything:
every architecture is written out layer by layer with the standard shapes, so parameter
counts and FLOPs match the published ones (torchvision's for the classifiers), while the
weights are random but deterministic for a given seed.  BatchNorm layers are kept (in
eval mode) so that ONNX export, graph fusion and quantization see what they would see in
a trained model; their running statistics are set by one seeded forward pass so that
activations keep a trained network's O(1) scale (see ``_set_batchnorm_statistics``).
Classifiers return logits (no softmax).

Models (``names()``):

- ``resnet18``, ``resnet50`` - torchvision ResNet (v1.5: stride on the 3x3 conv).
- ``mobilenet_v3_small`` - torchvision MobileNetV3-Small (SE with hardsigmoid, hardswish).
- ``yolo_small`` - YOLOv3-tiny layout (Darknet-tiny backbone, two detection scales), with
  the box decoding inside the model; output ``[B, N_anchors, 4 + 1 + num_classes]`` =
  box centre x, y, width, height in input pixels, objectness and per-class scores (both
  sigmoid probabilities).  Thresholding and NMS are post-processing, outside the model.
- ``unet_small`` - U-Net (Ronneberger et al.) with 16 base channels instead of 64, BN;
  output ``[B, num_classes, H, W]`` logits.
- ``tiny_cnn`` - a 3-conv toy classifier at 3x32x32 for fast tests.

torch is imported lazily: ``ModelSpec``, ``MODELS`` and ``names()`` work without it;
``build()`` needs the ``calibrate`` extra.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ModelSpec", "MODELS", "build", "names", "count_parameters"]


@dataclass(frozen=True)
class ModelSpec:
    """What a zoo model is: its name, task, default input shape (C, H, W) and classes."""

    name: str
    task: str  # "classification" | "detection" | "segmentation"
    input_shape: tuple[int, int, int]
    num_classes: int
    description: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "resnet18",
            "classification",
            (3, 224, 224),
            1000,
            "ResNet-18 (torchvision layout), 11,689,512 parameters, ~1.8 GFLOPs (MACs) at 224x224",
        ),
        ModelSpec(
            "resnet50",
            "classification",
            (3, 224, 224),
            1000,
            "ResNet-50 v1.5 (torchvision layout), 25,557,032 parameters, ~4.1 GFLOPs (MACs) at 224x224",
        ),
        ModelSpec(
            "mobilenet_v3_small",
            "classification",
            (3, 224, 224),
            1000,
            "MobileNetV3-Small (torchvision layout), 2,542,856 parameters, ~0.06 GFLOPs (MACs) at 224x224",
        ),
        ModelSpec(
            "yolo_small",
            "detection",
            (3, 416, 416),
            80,
            "YOLOv3-tiny layout (Darknet-tiny backbone, detection at strides 16 and 32, 3 anchors each), "
            "~8.9M parameters, ~5.6 GFLOPs at 416x416; output [B, 2535, 85] = decoded xywh (pixels), "
            "objectness, 80 class scores; NMS is post-processing",
        ),
        ModelSpec(
            "unet_small",
            "segmentation",
            (3, 256, 256),
            2,
            "U-Net with 16 base channels (4 down/up levels, BatchNorm, transposed-conv upsampling), "
            "~1.9M parameters; output [B, 2, H, W] per-pixel logits",
        ),
        ModelSpec(
            "tiny_cnn",
            "classification",
            (3, 32, 32),
            10,
            "Toy 3-conv classifier (16-32-64 channels, BatchNorm, global average pool, linear), for fast tests",
        ),
    )
}


def names() -> list[str]:
    """Names of the built-in models, in a stable order."""
    return list(MODELS)


def _require_torch():
    from capsim.calibrate import require

    require("torch")  # MissingExtra (a CapsimError) with the install hint when absent
    import torch

    return torch


def build(name: str, seed: int = 0) -> "torch.nn.Module":
    """Build zoo model ``name`` with deterministic random weights for ``seed``.

    The model is float32, on the CPU and in ``eval()`` mode.  Parameters follow
    torchvision's initialisation; BatchNorm running statistics are measured on one seeded
    random input.  The global torch RNG state (CPU; CUDA is never touched) is left
    exactly as it was.  Unknown names raise ``ValueError`` listing the valid ones.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; built-in models are: {', '.join(names())}")
    torch = _require_torch()
    spec = MODELS[name]
    arch = _arch()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))  # CPU generator only; CUDA state untouched
        model = arch.builders[name](spec).float()
        _set_batchnorm_statistics(torch, model, spec.input_shape)
    return model.eval()


def _set_batchnorm_statistics(torch, model, input_shape, batch: int = 1) -> None:
    """Give every BatchNorm the running statistics of its own input, as training would.

    With freshly initialised weights and the default statistics (mean 0, variance 1),
    activations drift in scale layer after layer (MobileNetV3's logits come out around
    1e-10, ResNet-50's in the tens), which no trained model does and which would make
    INT8 calibration and FP16 behave unlike the real thing.  One forward pass in train
    mode on a standard-normal input (like a normalised image), with cumulative averaging,
    sets each layer's mean/variance so that activations stay O(1) as in a trained net.
    Only buffers change; the parameters keep their torchvision-style initialisation.
    The input comes from the seeded generator and the pass runs on one thread, so the
    statistics are bit-identical for a seed whatever the thread count, on a given CPU type
    and torch build (other CPUs' kernels may round the last bits differently).
    """
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: one batch -> exactly its statistics
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same summation order whatever the thread setting: same statistics
    try:
        with torch.no_grad():
            model(torch.randn(batch, *input_shape))
    finally:
        torch.set_num_threads(threads)
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.zero_()
        model.eval()


def count_parameters(model) -> int:
    """Number of parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# Architectures.  Defined on first use so that importing this module does not import torch.
# --------------------------------------------------------------------------------------


@functools.cache
def _arch() -> SimpleNamespace:
    torch = _require_torch()
    from torch import nn

    # ---------------------------------------------------------------- ResNet (torchvision)

    def conv3x3(cin, cout, stride=1):
        return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

    def conv1x1(cin, cout, stride=1):
        return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, cin, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = conv3x3(cin, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = conv1x1(cin, planes)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = conv3x3(planes, planes, stride)  # v1.5: stride on the 3x3 conv
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = conv1x1(planes, planes * 4)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, block, layers, num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, 64, layers[0])
            self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
            self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
            self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512 * block.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def _make_layer(self, block, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    conv1x1(self.inplanes, planes * block.expansion, stride),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    # ------------------------------------------------------ MobileNetV3-Small (torchvision)

    def make_divisible(v, divisor=8):
        new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
        if new_v < 0.9 * v:
            new_v += divisor
        return new_v

    def conv_bn_act(cin, cout, kernel, stride=1, groups=1, act=None):
        layers = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=0.001, momentum=0.01),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        return nn.Sequential(*layers)

    class SqueezeExcitation(nn.Module):
        def __init__(self, channels, squeeze):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(channels, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, channels, 1)
            self.activation = nn.ReLU()
            self.scale_activation = nn.Hardsigmoid()

        def forward(self, x):
            scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
            return scale * x

    class InvertedResidual(nn.Module):
        def __init__(self, cin, kernel, expanded, cout, use_se, act, stride):
            super().__init__()
            self.use_res_connect = stride == 1 and cin == cout
            layers = []
            if expanded != cin:
                layers.append(conv_bn_act(cin, expanded, 1, act=act))
            layers.append(conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act))
            if use_se:
                layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
            layers.append(conv_bn_act(expanded, cout, 1))
            self.block = nn.Sequential(*layers)

        def forward(self, x):
            out = self.block(x)
            return out + x if self.use_res_connect else out

    class MobileNetV3Small(nn.Module):
        # input channels, kernel, expanded channels, output channels, SE, activation, stride
        CONFIG = [
            (16, 3, 16, 16, True, "RE", 2),
            (16, 3, 72, 24, False, "RE", 2),
            (24, 3, 88, 24, False, "RE", 1),
            (24, 5, 96, 40, True, "HS", 2),
            (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1),
            (48, 5, 144, 48, True, "HS", 1),
            (48, 5, 288, 96, True, "HS", 2),
            (96, 5, 576, 96, True, "HS", 1),
            (96, 5, 576, 96, True, "HS", 1),
        ]
        LAST_CHANNEL = 1024

        def __init__(self, num_classes=1000, dropout=0.2):
            super().__init__()
            acts = {"RE": nn.ReLU, "HS": nn.Hardswish}
            layers = [conv_bn_act(3, 16, 3, stride=2, act=nn.Hardswish)]
            for cin, k, exp, cout, se, act, stride in self.CONFIG:
                layers.append(
                    InvertedResidual(
                        make_divisible(cin), k, make_divisible(exp), make_divisible(cout), se, acts[act], stride
                    )
                )
            last_in = make_divisible(self.CONFIG[-1][3])
            layers.append(conv_bn_act(last_in, 6 * last_in, 1, act=nn.Hardswish))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(
                nn.Linear(6 * last_in, self.LAST_CHANNEL),
                nn.Hardswish(inplace=True),
                nn.Dropout(p=dropout, inplace=True),
                nn.Linear(self.LAST_CHANNEL, num_classes),
            )
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = torch.flatten(self.avgpool(self.features(x)), 1)
            return self.classifier(x)

    # ------------------------------------------------------------------- YOLOv3-tiny style

    def conv_bn_leaky(cin, cout, kernel):
        return nn.Sequential(
            nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03),
            nn.LeakyReLU(0.1, inplace=True),
        )

    class DetectHead(nn.Module):
        """1x1 prediction conv + YOLO decoding for one scale (3 anchors)."""

        def __init__(self, cin, num_classes, anchors, stride, grid_hw):
            super().__init__()
            self.na = len(anchors)
            self.no = num_classes + 5
            self.stride = stride
            self.conv = nn.Conv2d(cin, self.na * self.no, 1)
            self.register_buffer(
                "anchor_wh", torch.tensor(anchors, dtype=torch.float32).view(1, self.na, 1, 1, 2), persistent=False
            )
            self.register_buffer("grid", self._make_grid(*grid_hw), persistent=False)
            # YOLOv5-style prior on the biases: few objects per cell, uniform classes.
            with torch.no_grad():
                b = self.conv.bias.view(self.na, self.no)
                b[:, 4] += math.log(8 / (640 / stride) ** 2)
                b[:, 5:] += math.log(0.6 / (num_classes - 0.99))

        def _make_grid(self, ny, nx):
            yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            return torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float()

        def forward(self, x):
            ny, nx = x.shape[2], x.shape[3]
            grid = self.grid
            if grid.shape[2] != ny or grid.shape[3] != nx:  # non-default input size
                grid = self._make_grid(ny, nx).to(x.device)
            p = self.conv(x).unflatten(1, (self.na, self.no)).permute(0, 1, 3, 4, 2)
            xy, wh, conf = p.sigmoid().split((2, 2, self.no - 4), -1)
            # YOLOv5 decoding (bounded, unlike exp): centre in pixels, size relative to anchors.
            xy = (xy * 2 - 0.5 + grid) * self.stride
            wh = (wh * 2) ** 2 * self.anchor_wh
            out = torch.cat((xy, wh, conf), -1)
            return out.flatten(1, 3)  # [B, na*ny*nx, no]

    class YoloTiny(nn.Module):
        # YOLOv3-tiny anchors (pixels at 416x416): small for stride 16, large for stride 32.
        ANCHORS_16 = [(10, 14), (23, 27), (37, 58)]
        ANCHORS_32 = [(81, 82), (135, 169), (344, 319)]

        def __init__(self, num_classes=80, input_hw=(416, 416)):
            super().__init__()
            pool = nn.MaxPool2d(2, 2)
            self.backbone16 = nn.Sequential(  # -> 256 channels at stride 16
                conv_bn_leaky(3, 16, 3), pool,
                conv_bn_leaky(16, 32, 3), pool,
                conv_bn_leaky(32, 64, 3), pool,
                conv_bn_leaky(64, 128, 3), pool,
                conv_bn_leaky(128, 256, 3),
            )  # fmt: skip
            self.backbone32 = nn.Sequential(  # -> 256 channels at stride 32
                nn.MaxPool2d(2, 2),
                conv_bn_leaky(256, 512, 3),
                nn.ZeroPad2d((0, 1, 0, 1)),
                nn.MaxPool2d(2, 1),
                conv_bn_leaky(512, 1024, 3),
                conv_bn_leaky(1024, 256, 1),
            )
            self.head32 = nn.Sequential(conv_bn_leaky(256, 512, 3))
            self.lateral = nn.Sequential(conv_bn_leaky(256, 128, 1), nn.Upsample(scale_factor=2, mode="nearest"))
            self.head16 = nn.Sequential(conv_bn_leaky(384, 256, 3))
            h, w = input_hw
            self.detect16 = DetectHead(256, num_classes, self.ANCHORS_16, 16, (h // 16, w // 16))
            self.detect32 = DetectHead(512, num_classes, self.ANCHORS_32, 32, (h // 32, w // 32))
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            f16 = self.backbone16(x)
            f32 = self.backbone32(f16)
            out32 = self.detect32(self.head32(f32))
            out16 = self.detect16(self.head16(torch.cat((self.lateral(f32), f16), 1)))
            return torch.cat((out16, out32), 1)

    # ------------------------------------------------------------------------- U-Net

    def double_conv(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self, in_channels=3, num_classes=2, base=16, depth=4):
            super().__init__()
            chs = [base * 2**i for i in range(depth + 1)]
            self.inc = double_conv(in_channels, chs[0])
            self.downs = nn.ModuleList(
                nn.Sequential(nn.MaxPool2d(2), double_conv(chs[i], chs[i + 1])) for i in range(depth)
            )
            self.ups = nn.ModuleList(
                nn.ConvTranspose2d(chs[i + 1], chs[i], 2, stride=2) for i in reversed(range(depth))
            )
            self.up_convs = nn.ModuleList(double_conv(2 * chs[i], chs[i]) for i in reversed(range(depth)))
            self.outc = nn.Conv2d(chs[0], num_classes, 1)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

        def forward(self, x):
            skips = [self.inc(x)]
            for down in self.downs:
                skips.append(down(skips[-1]))
            x = skips.pop()
            for up, conv in zip(self.ups, self.up_convs):
                x = conv(torch.cat((skips.pop(), up(x)), 1))
            return self.outc(x)

    # --------------------------------------------------------------------- tiny CNN

    class TinyCNN(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1),
            )  # fmt: skip
            self.classifier = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    builders = {
        "resnet18": lambda s: ResNet(BasicBlock, [2, 2, 2, 2], s.num_classes),
        "resnet50": lambda s: ResNet(Bottleneck, [3, 4, 6, 3], s.num_classes),
        "mobilenet_v3_small": lambda s: MobileNetV3Small(s.num_classes),
        "yolo_small": lambda s: YoloTiny(s.num_classes, s.input_shape[1:]),
        "unet_small": lambda s: UNet(s.input_shape[0], s.num_classes),
        "tiny_cnn": lambda s: TinyCNN(s.num_classes),
    }
    assert set(builders) == set(MODELS)
    return SimpleNamespace(builders=builders)
