"""Which machine measured a table: the device fingerprint in its header, and the check that
tells a user when the machine they predict on is another one.

A measured table's latencies describe the machine that timed its blocks: another CPU (a
different model, core count or instruction set), another torch build or another GPU runs the
same blocks at other speeds, and by different factors per block type (an AVX-512 machine
gains more on convolutions than on normalisations), so both the values and the ranking move.
:func:`device_fingerprint` is what a profile run writes under ``fingerprint:``;
:func:`check_table_device` compares a table's with this machine's and words the difference
in one line. Estimated and imported tables (the Neural Engine, phones) are exempt: their
device is elsewhere by design. A table written before fingerprints (only a ``device:`` line)
is compared on what that line says (CPU model and cores, or the GPU's name) and the torch
version in ``versions:``; a table with neither is from an unknown device.

    fp = device_fingerprint("cpu", threads=1)      # {'cpu': 'AMD EPYC', 'cores': 2, ...}
    check = check_table_device(load_table(path))   # .status: same | differs | unknown | exempt
    if check.warning: print(check.warning)        # one line, with the command that fixes it
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FINGERPRINT_FIELDS",
    "FOREIGN_DEVICE_LABEL",
    "DeviceCheck",
    "check_table_device",
    "cpu_cores",
    "cpu_model",
    "describe_fingerprint",
    "device_fingerprint",
    "fingerprint_differences",
    "table_fingerprint",
]

#: what a report writes next to latencies predicted from a table measured on another machine
FOREIGN_DEVICE_LABEL = "measured on another device"

#: the fields of a fingerprint (those that apply: the GPU's only on cuda)
FINGERPRINT_FIELDS = ("cpu", "cores", "cpu_capability", "cpu_flags", "threads", "torch", "torch_build",
                      "gpu", "gpu_driver", "platform")

#: instruction-set flags that decide which kernels torch runs (x86 ``flags``, ARM ``Features``);
#: the rest of /proc/cpuinfo's list (security mitigations, virtualisation) does not time a block
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
              "asimd", "asimdhp", "asimddp", "sve", "sve2", "bf16", "i8mm")

#: targets whose rows a GPU times (the others: this CPU, or a Mac's chip)
_GPU_TARGETS = ("cuda",)
#: targets whose older tables name the CPU on their ``device:`` line (``AMD EPYC (2 cores)``)
_CPU_NAMED = ("cpu", "xnnpack")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty off Linux)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    if out:
                        break
                    continue
                k, _, v = line.partition(":")
                out.setdefault(k.strip().lower(), v.strip())
    except OSError:
        pass
    return out


def _sysctl(name: str) -> str:
    try:
        res = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; ``sysctl`` on macOS), whitespace folded."""
    info = _cpuinfo()
    name = info.get("model name") or ""
    if not name and platform.system() == "Darwin":
        name = _sysctl("machdep.cpu.brand_string")
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return re.sub(r"\s+", " ", name).strip()


def cpu_cores() -> int:
    """The logical CPUs this process sees."""
    return int(os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> str:
    info = _cpuinfo()
    have = set((info.get("flags") or info.get("features") or "").split())
    if not have and platform.system() == "Darwin":
        have = {f.lower().replace("feat_", "") for f in _sysctl("machdep.cpu.features").split()}
    return " ".join(f for f in _ISA_FLAGS if f in have)


def _cpu_capability() -> str:
    """The kernels ATen dispatches to on this CPU (``AVX512``, ``AVX2``, ``DEFAULT``...)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return ""


def _torch_build() -> str:
    """What the torch build runs kernels with: CUDA/ROCm version, oneDNN, MKL, parallel backend."""
    import torch

    parts = []
    if torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
    if getattr(torch.version, "hip", None):
        parts.append(f"ROCm {torch.version.hip}")
    if torch.backends.mkldnn.is_available():
        parts.append("oneDNN")
    if torch.backends.mkl.is_available():
        parts.append("MKL")
    try:
        info = torch.__config__.parallel_info()
        m = re.search(r"ATen parallel backend: (\S+)", info)
        if m:
            parts.append(m.group(1))
    except (AttributeError, RuntimeError):
        pass
    return ", ".join(parts)


def _gpu_driver() -> str:
    """The NVIDIA driver's version (``/proc/driver/nvidia/version``, else ``nvidia-smi``)."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as fh:
            m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", fh.read())
            if m:
                return m.group(1)
    except OSError:
        pass
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout.strip().splitlines()[0].strip() if res.returncode == 0 and res.stdout.strip() else ""


@functools.lru_cache(maxsize=4)
def _machine(target: str) -> tuple[tuple[str, Any], ...]:
    """This machine's fingerprint without the thread count (cached: it does not change)."""
    import torch

    fp: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": cpu_cores(),
        "cpu_capability": _cpu_capability(),
        "cpu_flags": _cpu_flags(),
        "torch": str(torch.__version__),
        "torch_build": _torch_build(),
    }
    if target in _GPU_TARGETS:
        if torch.cuda.is_available():
            fp["gpu"] = torch.cuda.get_device_name(0)
            fp["gpu_driver"] = _gpu_driver()
        else:
            fp["gpu"] = "none"
    fp["platform"] = f"{platform.system()} {platform.machine()}"
    return tuple(fp.items())


def device_fingerprint(target: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """This machine as a measured table's header records it: ``cpu`` (model name), ``cores``,
    ``cpu_capability`` (the kernels ATen picks), ``cpu_flags`` (the instruction sets of
    :data:`_ISA_FLAGS` it has), ``threads`` (the measurement's), ``torch`` and ``torch_build``,
    and on ``cuda`` the ``gpu`` and its ``gpu_driver``; ``platform``."""
    fp = dict(_machine(target))
    if threads:
        fp["threads"] = int(threads)
    return fp


def _legacy(meta: dict[str, Any]) -> dict[str, Any]:
    """What a table written before fingerprints says about its device (its ``device:`` line,
    ``threads:`` and ``versions: torch``); ``{}`` if nothing."""
    fp: dict[str, Any] = {}
    device = str(meta.get("device") or "").strip()
    target = str(meta.get("target") or "cpu")
    if device and target in _GPU_TARGETS:
        fp["gpu"] = device
    elif device and target in _CPU_NAMED:  # mps / Core ML lines name no chip ("arm64 Mac (ALL)")
        m = re.match(r"^(.*?) \((\d+) cores\)", device)
        if m:
            fp["cpu"], fp["cores"] = m.group(1).strip(), int(m.group(2))
        else:
            fp["cpu"] = device
    torch_version = (meta.get("versions") or {}).get("torch") if isinstance(meta.get("versions"), dict) else None
    if fp and torch_version:
        fp["torch"] = str(torch_version)
    if fp and meta.get("threads"):
        fp["threads"] = meta["threads"]
    return fp


def table_fingerprint(meta: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the device fingerprint a table's header records, whether it is a full one): the
    ``fingerprint:`` mapping, else what an older header's ``device:`` line says (not full),
    else ``{}`` (an unknown device)."""
    fp = meta.get("fingerprint")
    if isinstance(fp, dict) and fp:
        return dict(fp), True
    return _legacy(meta), False


def _base_version(v: Any) -> str:
    return str(v).split("+", 1)[0]


def fingerprint_differences(recorded: dict[str, Any], current: dict[str, Any], target: str = "cpu") -> list[str]:
    """What differs between two fingerprints that changes a block's latency on ``target``,
    one short phrase each (``CPU model``, ``torch 2.14.1 vs 2.9.0``...); only fields both
    have count. CPU tables compare the CPU (model, cores, kernels, instruction sets) and
    torch's version (its ``+cu130``/``+cpu`` suffix does not change CPU kernels); cuda tables
    the GPU, its driver, and torch with its build."""
    out: list[str] = []

    def both(k: str) -> bool:
        return recorded.get(k) not in (None, "") and current.get(k) not in (None, "")

    if target in _GPU_TARGETS:
        if both("gpu") and str(recorded["gpu"]) != str(current["gpu"]):
            out.append("GPU")
        if both("gpu_driver") and str(recorded["gpu_driver"]) != str(current["gpu_driver"]):
            out.append(f"driver {recorded['gpu_driver']} vs {current['gpu_driver']}")
        if both("torch") and str(recorded["torch"]) != str(current["torch"]):
            out.append(f"torch {recorded['torch']} vs {current['torch']}")
        elif both("torch_build") and str(recorded["torch_build"]) != str(current["torch_build"]):
            out.append("torch build")
        return out
    if both("cpu") and str(recorded["cpu"]) != str(current["cpu"]):
        out.append("CPU model")
    if both("cores") and int(recorded["cores"]) != int(current["cores"]):
        out.append(f"{recorded['cores']} vs {current['cores']} cores")
    if both("cpu_capability") and str(recorded["cpu_capability"]) != str(current["cpu_capability"]):
        out.append(f"kernels {recorded['cpu_capability']} vs {current['cpu_capability']}")
    if both("cpu_flags"):
        a, b = set(str(recorded["cpu_flags"]).split()), set(str(current["cpu_flags"]).split())
        if a != b:
            gained = "".join(f" +{f}" for f in sorted(b - a))
            lost = "".join(f" -{f}" for f in sorted(a - b))
            out.append(f"CPU flags{gained}{lost}")
    if both("torch") and _base_version(recorded["torch"]) != _base_version(current["torch"]):
        out.append(f"torch {_base_version(recorded['torch'])} vs {_base_version(current['torch'])}")
    return out


def describe_fingerprint(fp: dict[str, Any], target: str = "cpu") -> str:
    """``AMD EPYC (2 cores, torch 2.14.1)``; ``NVIDIA H100 (driver 550.54, torch 2.5.1+cu124)``
    on cuda; ``an unknown device`` for an empty fingerprint."""
    if not fp:
        return "an unknown device"
    if target in _GPU_TARGETS and fp.get("gpu"):
        bits = [f"driver {fp['gpu_driver']}"] if fp.get("gpu_driver") else []
        if fp.get("torch"):
            bits.append(f"torch {fp['torch']}")
        return f"{fp['gpu']}" + (f" ({', '.join(bits)})" if bits else "")
    bits = [f"{fp['cores']} cores"] if fp.get("cores") else []
    if fp.get("torch"):
        bits.append(f"torch {_base_version(fp['torch'])}")
    return f"{fp.get('cpu') or 'an unknown CPU'}" + (f" ({', '.join(bits)})" if bits else "")


@dataclass(frozen=True)
class DeviceCheck:
    """A table's device against this machine's (:func:`check_table_device`).

    ``status``: ``same``, ``differs`` (a measured table from another machine: ``differences``
    says what), ``unknown`` (a measured table that records no device) or ``exempt`` (an
    estimated or imported table: its device is elsewhere by design). ``recorded`` and
    ``current``: the two fingerprints; ``legacy``: the table's is read off an older header's
    ``device:`` line. ``warning``: the one line to show a user ('' unless ``differs``);
    ``label``: what to write next to the table's latencies ('' unless ``differs``).
    """

    status: str
    table: str
    target: str
    recorded: dict[str, Any] = field(default_factory=dict)
    current: dict[str, Any] = field(default_factory=dict)
    differences: tuple[str, ...] = ()
    legacy: bool = False

    @property
    def differs(self) -> bool:
        return self.status == "differs"

    @property
    def recorded_text(self) -> str:
        return describe_fingerprint(self.recorded, self.target)

    @property
    def current_text(self) -> str:
        return describe_fingerprint(self.current, self.target)

    @property
    def label(self) -> str:
        return f"{FOREIGN_DEVICE_LABEL}: {self.recorded_text}" if self.differs else ""

    @property
    def warning(self) -> str:
        if not self.differs:
            return ""
        return (f"{self.table} was measured on {self.recorded_text}; this machine is {self.current_text} "
                f"(differs: {', '.join(self.differences)}): its latencies describe that machine — run "
                f"archsearch profile --recalibrate {self.table} -n 8")


def _measured(table: Any) -> bool:
    """Whether any of the table's latencies was timed by a machine (a measured row)."""
    src = table.source
    if src == "mixed":
        return "measured" in set(table.df["source"])
    return src == "measured"


def check_table_device(table: Any, current: dict[str, Any] | None = None) -> DeviceCheck:
    """Compare the device ``table`` (a :class:`LatencyTable`) was measured on with this
    machine (``current``: a fingerprint, default :func:`device_fingerprint` of the table's
    target and threads). See :class:`DeviceCheck`."""
    meta = table.meta
    target = str(meta.get("target") or "cpu")
    name = str(table.path) if table.path is not None else "the latency table"
    if not _measured(table):
        return DeviceCheck("exempt", name, target)
    recorded, full = table_fingerprint(meta)
    if current is None:
        current = device_fingerprint(target, meta.get("threads"))
    if not recorded:
        return DeviceCheck("unknown", name, target, {}, current)
    diffs = fingerprint_differences(recorded, current, target)
    return DeviceCheck("differs" if diffs else "same", name, target, recorded, current, tuple(diffs), not full)
