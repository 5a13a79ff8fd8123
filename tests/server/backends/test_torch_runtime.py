"""What the torch backends share that needs no torch: Triton's tensor naming rules."""

from __future__ import annotations

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import torch_runtime as rt


def test_indexed_names_give_positions() -> None:
    assert rt.positions(["OUTPUT__1", "OUTPUT__0"]) == [1, 0]
    assert rt.positions(["a__0", "b__1", "c__2"]) == [0, 1, 2]


def test_argument_names_give_positions() -> None:
    assert rt.positions(["y", "x"], ["x", "y"]) == [1, 0]


def test_otherwise_the_config_order_holds() -> None:
    assert rt.positions(["OUT__0", "OUT__2"]) == [0, 1]  # indices with a gap
    assert rt.positions(["a", "OUT__1"]) == [0, 1]  # mixed conventions
    assert rt.positions(["p", "q"], ["x", "y"]) == [0, 1]
    assert rt.positions([]) == []


def test_cpu_groups_put_instances_on_the_cpu() -> None:
    config = mc.ModelConfig(name="m")
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=2)
    assert [rt.device_for(config, i) for i in range(2)] == ["cpu", "cpu"]
