"""The machine a benchmark ran on, as its JSON records it: the CPU behind a VM's model name.

No flags here (unlike bench.py), so tests and other tools can import it.
"""
import os

# AMD's CPU families (cpuinfo's "cpu family") by core generation. Which one a cloud VM
# runs on decides the ratio more than anything else: Zen 5 executes AVX-512 at full
# width, and XLA:CPU's kernels use it; MKL, torch's BLAS, runs AVX2 code on AMD CPUs.
AMD_FAMILIES = {23: "Zen / Zen 2", 25: "Zen 3 / Zen 4", 26: "Zen 5"}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni",
             "avx512_vp2intersect", "amx_tile", "amx_bf16")


def machine_description(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """What a CPU ratio depends on and a reader needs to compare runs across machines: the
    CPU (model name, vendor, family and model numbers, its core generation where known,
    vector extensions), cores, and the load while the bench ran. A VM may hide the model
    name ("AMD EPYC"); the family number still tells Zen 4 from Zen 5."""
    info = {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    try:
        with open(cpuinfo_path) as f:
            text = f.read()
    except OSError:
        return info
    return {**describe_cpu(text), **info}


def describe_cpu(cpuinfo_text: str) -> dict:
    """The first processor's entry of a /proc/cpuinfo text."""
    fields = {}
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the end of the first processor's entry
            continue
        fields.setdefault(key.strip(), value.strip())
    vendor = fields.get("vendor_id", "")
    family = _number(fields, "cpu family")
    flags = fields.get("flags", "").split()
    generation = AMD_FAMILIES.get(family, "") if vendor == "AuthenticAMD" else ""
    if generation == "Zen 3 / Zen 4":
        generation = "Zen 4" if "avx512f" in flags else "Zen 3"
    return {"cpu_model": fields.get("model name", ""), "cpu_vendor": vendor, "cpu_family": family,
            "cpu_model_number": _number(fields, "model"),
            "cpu_generation": generation, "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def _number(fields: dict, key: str) -> int | None:
    value = fields.get(key, "")
    return int(value) if value.isdigit() else None
