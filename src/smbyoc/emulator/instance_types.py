"""SageMaker ML instance types: vCPUs, memory, GPUs and Neuron devices, for limits and validation.

Figures are the published EC2 sizes of each family (vCPU count and GiB of memory); SageMaker's ``ml.``
types have the same shape. ``local`` and ``local_gpu`` are the SDK's local-mode pseudo types: no limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smbyoc.errors import ConfigError


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int | None  # None: no limit (local)
    memory_gib: float | None
    gpus: int = 0
    neuron_devices: int = 0
    arch: str = "x86_64"

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory_gib is None else int(self.memory_gib * 1024**3)

    @property
    def is_local(self) -> bool:
        return self.vcpus is None


# family -> size -> (vcpus, memory GiB, gpus, neuron devices)
_SIZES_GENERAL = {  # m5, m6i, m7i: 4 GiB per vCPU
    "large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "12xlarge": 48,
    "16xlarge": 64, "24xlarge": 96,
}
_FAMILIES: dict[str, tuple[float, dict[str, int]]] = {
    # family: (GiB per vCPU, {size: vcpus})
    "m5": (4, _SIZES_GENERAL), "m6i": (4, _SIZES_GENERAL), "m7i": (4, _SIZES_GENERAL),
    "m5d": (4, _SIZES_GENERAL),
    "c5": (2, {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "9xlarge": 36, "18xlarge": 72}),
    "c6i": (2, {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "16xlarge": 64}),
    "r5": (8, _SIZES_GENERAL),
    "t3": (4, {"medium": 2, "large": 2, "xlarge": 4, "2xlarge": 8}),
}
_SIZES_GRAVITON = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "12xlarge": 48,
                   "16xlarge": 64}
_ARM_FAMILIES: dict[str, tuple[float, dict[str, int]]] = {
    "m6g": (4, {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "12xlarge": 48,
                "16xlarge": 64}),
    "c6g": (2, {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "12xlarge": 48,
                "16xlarge": 64}),
    "c7g": (2, {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "12xlarge": 48,
                "16xlarge": 64}),
    # The other Graviton families of ProductionVariantInstanceType (contract-endpoints.md §8.1): compute 2 GiB,
    # general purpose 4 GiB, memory optimised 8 GiB per vCPU.
    **{family: (gib, _SIZES_GRAVITON) for family, gib in (
        ("c6gd", 2), ("c6gn", 2), ("c8g", 2), ("m6gd", 4), ("m8g", 4), ("r6g", 8), ("r6gd", 8), ("r7gd", 8),
        ("r8g", 8))},
}
# Accelerated types: name -> (vcpus, memory GiB, gpus, neuron devices)
_ACCELERATED: dict[str, tuple[int, float, int, int]] = {
    "ml.p3.2xlarge": (8, 61, 1, 0), "ml.p3.8xlarge": (32, 244, 4, 0), "ml.p3.16xlarge": (64, 488, 8, 0),
    "ml.p3dn.24xlarge": (96, 768, 8, 0),
    "ml.p4d.24xlarge": (96, 1152, 8, 0), "ml.p4de.24xlarge": (96, 1152, 8, 0),
    "ml.p5.48xlarge": (192, 2048, 8, 0),
    "ml.g4dn.xlarge": (4, 16, 1, 0), "ml.g4dn.2xlarge": (8, 32, 1, 0), "ml.g4dn.4xlarge": (16, 64, 1, 0),
    "ml.g4dn.8xlarge": (32, 128, 1, 0), "ml.g4dn.12xlarge": (48, 192, 4, 0),
    "ml.g4dn.16xlarge": (64, 256, 1, 0),
    "ml.g5.xlarge": (4, 16, 1, 0), "ml.g5.2xlarge": (8, 32, 1, 0), "ml.g5.4xlarge": (16, 64, 1, 0),
    "ml.g5.8xlarge": (32, 128, 1, 0), "ml.g5.12xlarge": (48, 192, 4, 0), "ml.g5.16xlarge": (64, 256, 1, 0),
    "ml.g5.24xlarge": (96, 384, 4, 0), "ml.g5.48xlarge": (192, 768, 8, 0),
    "ml.g6.xlarge": (4, 16, 1, 0), "ml.g6.2xlarge": (8, 32, 1, 0), "ml.g6.12xlarge": (48, 192, 4, 0),
    "ml.g6.48xlarge": (192, 768, 8, 0),
    "ml.trn1.2xlarge": (8, 32, 0, 1), "ml.trn1.32xlarge": (128, 512, 0, 16),
    "ml.trn1n.32xlarge": (128, 512, 0, 16), "ml.trn2.48xlarge": (192, 2048, 0, 16),
    "ml.inf1.xlarge": (4, 8, 0, 1), "ml.inf1.2xlarge": (8, 16, 0, 1), "ml.inf1.6xlarge": (24, 48, 0, 4),
    "ml.inf1.24xlarge": (96, 192, 0, 16),
    "ml.inf2.xlarge": (4, 16, 0, 1), "ml.inf2.8xlarge": (32, 128, 0, 1), "ml.inf2.24xlarge": (96, 384, 0, 6),
    "ml.inf2.48xlarge": (192, 768, 0, 12),
}

LOCAL_TYPES = ("local", "local_gpu")
_NAME_RE = re.compile(r"^ml\.([a-z0-9]+)\.([a-z0-9]+)$")


def _table() -> dict[str, InstanceType]:
    table: dict[str, InstanceType] = {
        "local": InstanceType("local", None, None),
        "local_gpu": InstanceType("local_gpu", None, None, gpus=-1),
    }
    for families, arch in ((_FAMILIES, "x86_64"), (_ARM_FAMILIES, "arm64")):
        for family, (gib_per_vcpu, sizes) in families.items():
            for size, vcpus in sizes.items():
                name = f"ml.{family}.{size}"
                table[name] = InstanceType(name, vcpus, vcpus * gib_per_vcpu, arch=arch)
    for name, (vcpus, mem, gpus, neuron) in _ACCELERATED.items():
        table[name] = InstanceType(name, vcpus, mem, gpus=gpus, neuron_devices=neuron)
    return table


def known_instance_types() -> dict[str, InstanceType]:
    return _table()


def lookup(name: str) -> InstanceType:
    """The instance type called ``name``; one clear error for a name that is not an ML instance type."""
    table = _table()
    if name in table:
        return table[name]
    if not _NAME_RE.match(name):
        raise ConfigError(
            "expected an ML instance type such as ml.m5.large, or 'local'", key=f"instance type {name!r}"
        )
    family = name.split(".")[1]
    similar = sorted(n for n in table if n.split(".")[1:2] == [family])[:6]
    hint = f" (known {family} sizes: {', '.join(similar)})" if similar else ""
    raise ConfigError(f"unknown instance type{hint}", key=f"instance type {name!r}")
