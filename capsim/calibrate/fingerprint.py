"""Hardware and runtime fingerprint stored with every profile."""

from __future__ import annotations

import os
import platform
import socket
import subprocess


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def fingerprint(device: str, threads: int | None) -> dict:
    """What the measurement ran on: CPU, cores and threads used, GPU, driver, CUDA, host."""
    hw = {
        "device": device,
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads_used": threads,
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "gpu_name": None,
        "gpu_driver": None,
        "cuda_version": None,
    }
    if device == "cuda":
        try:
            import torch

            if torch.cuda.is_available():
                hw["gpu_name"] = torch.cuda.get_device_name(0)
                hw["gpu_memory_mib"] = int(torch.cuda.get_device_properties(0).total_memory // 2**20)
            hw["cuda_version"] = torch.version.cuda
        except Exception:  # noqa: BLE001 - a fingerprint must not fail the calibration
            pass
        hw["gpu_name"] = hw["gpu_name"] or _nvidia_smi("name")
        hw["gpu_driver"] = _nvidia_smi("driver_version")
    return hw
