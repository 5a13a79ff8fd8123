"""ResNet-18 (He et al. 2015, torchvision's layout) as an ONNX model in a Triton repository.

The benchmark needs a compute-bound model of a size users actually serve; torchvision is
not installable here, so the architecture is written out: 11.69M parameters, random
weights from a fixed seed (throughput does not depend on the values).

    python bench/resnet.py --repo /tmp/repo      # writes /tmp/repo/resnet18/{config.pbtxt,1/}
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

MODEL_NAME = "resnet18"
CONFIG_PBTXT = """\
name: "resnet18"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "LOGITS" data_type: TYPE_FP32 dims: [ 1000 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_CPU } ]
"""


@dataclass(frozen=True)
class ResNetConfig:
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2)  # ResNet-18
    widths: tuple[int, ...] = (64, 128, 256, 512)
    n_classes: int = 1000


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.downsample(x))


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        c_in = 64
        for i, (n_blocks, width) in enumerate(
            zip(config.blocks_per_stage, config.widths, strict=True)
        ):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in, width, stride)]
            blocks += [BasicBlock(width, width, 1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, config.n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(images))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(ResNetConfig()).eval()


def export_onnx(
    model: nn.Module, example: torch.Tensor, input_name: str, output_name: str, path: Path
) -> None:
    """ONNX with a dynamic leading batch dim (the TorchScript exporter: it gives one
    self-contained file with a plain graph that every ONNX Runtime build runs)."""
    # The legacy exporter warns that it is deprecated; it still writes this graph fine.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )


def write_triton_model(
    repo: Path,
    name: str,
    model: nn.Module,
    example: torch.Tensor,
    io_names: tuple[str, str],
    config_pbtxt: str,
) -> Path:
    """``<repo>/<name>/config.pbtxt`` + ``<repo>/<name>/1/model.onnx``; returns the model dir."""
    version_dir = repo / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(model, example, *io_names, version_dir / "model.onnx")
    (repo / name / "config.pbtxt").write_text(config_pbtxt)
    return repo / name


def write_resnet18(repo: Path, seed: int = 0) -> Path:
    """Export ResNet-18 into ``repo`` unless it is already there; returns the model dir."""
    model_dir = repo / MODEL_NAME
    if (model_dir / "1" / "model.onnx").exists():
        return model_dir
    return write_triton_model(
        repo,
        MODEL_NAME,
        resnet18(seed),
        torch.zeros(1, 3, 224, 224),
        ("INPUT", "LOGITS"),
        CONFIG_PBTXT,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="Triton model repository")
    args = parser.parse_args()
    model_dir = write_resnet18(args.repo)
    n_params = sum(p.numel() for p in resnet18().parameters())
    print(f"wrote {model_dir} ({n_params / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
