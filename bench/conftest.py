"""Records the device and its copy bandwidth in pytest-benchmark's machine_info (for bench.report)."""

from __future__ import annotations

import torch

from .cases import copy_bandwidth, default_device


def pytest_benchmark_update_machine_info(config, machine_info):
    device = default_device()
    machine_info["bench_device"] = device
    machine_info["torch_version"] = torch.__version__
    if torch.device(device).type == "cuda":
        machine_info["cuda_device_name"] = torch.cuda.get_device_name()
    if config.getoption("benchmark_disable", False):
        return
    machine_info["copy_bandwidth"] = copy_bandwidth(device)
