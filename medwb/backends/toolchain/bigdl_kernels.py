"""Which native kernel build bigdl-llm (or ipex-llm) loads, and an opt-in way to choose it.

bigdl-llm 2.4.0 ships one build of its low-bit kernels per instruction set
(``libs/lib<family>_{avx,avx2,avxvnni,avx512,amx}.so``); ``lib<family>-api.so`` picks one
at load time. It decides by the CPU's *vendor string*, so on a non-Intel CPU it loads the
plain-AVX build even when AVX-512 and VNNI are present (seen here on AMD EPYC), and
decode runs far slower than the hardware allows. Its successor ipex-llm 2.2.0 ships the same
libraries under ``ipex_llm/libs`` and picks the same way (its llama kernels loaded
``libllama_avx.so`` on this AMD EPYC, 2026-12-05): ``package`` names which one.

:func:`loaded_builds` reports what really got loaded (from /proc/self/maps, not assumed).
:func:`use_build` is the opt-in override: it never touches the installed package. It makes
a private folder of symlinks in the medwb cache in which every ISA name points at the
requested build, and points bigdl's library locator there. It must run before bigdl's
ggml bindings are imported (so: at the start of a fresh process or kernel).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import cache_dir

BUILDS = ("avx", "avx2", "avxvnni", "avx512", "amx")
# lib<family>_<build>.so: one kernel library per model family and instruction set.
_LIB_NAME = r"lib(?P<family>[a-z]+)_(?P<build>avx|avx2|avxvnni|avx512|amx)\.so$"
_BUILD_RE = re.compile(r"/(?:bigdl/llm|ipex_llm)/libs/" + _LIB_NAME)
# The import name of each library that ships these kernels -> its distribution on PyPI.
PACKAGES = {"bigdl.llm": "bigdl-llm", "ipex_llm": "ipex-llm"}


def libs_dir(package: str = "bigdl.llm") -> Path:
    import importlib.util
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MedwbError(f"{PACKAGES[package]} is not installed in this environment: use the environment "
                         "of its backend")
    return Path(list(spec.submodule_search_locations)[0]) / "libs"


def loaded_builds() -> dict[str, str]:
    """{model family: ISA build} of the bigdl kernel libraries mapped into this process.

    Symlinked libraries show their real file in /proc/self/maps, so an override shows up
    as the build it really is.
    """
    found = {}
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            for line in f:
                m = _BUILD_RE.search(line.strip())
                if m:
                    found[m["family"]] = m["build"]
    except OSError:
        pass
    return found


def matching_build(flags: set[str] | None = None) -> str:
    """The build the CPU's own flags support (what bigdl would pick on an Intel CPU)."""
    from medwb.sysinfo import cpu_flags
    flags = cpu_flags() if flags is None else flags
    if {"amx_int8", "amx_bf16", "avx512_vnni"} <= flags:
        return "amx"
    if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vnni"} <= flags:
        return "avx512"
    if {"avx_vnni", "avx2"} <= flags:
        return "avxvnni"
    return "avx2" if "avx2" in flags else "avx"


def shadow_libs(build: str, parameter: str = "kernel_build", package: str = "bigdl.llm") -> Path:
    """A private copy of bigdl's (or ipex-llm's) libs/ in which every ISA build name is ``build``.

    Libraries are symlinks; the ``main-*`` executables (what llm-cli runs) are copied,
    because they find their kernel library next to their own resolved path.
    """
    if build not in BUILDS:
        raise MedwbError(f"{parameter}: {build!r} is not a bigdl build; use one of {', '.join(BUILDS)}")
    import importlib.metadata
    import shutil
    import hashlib
    src = libs_dir(package)
    # Keyed by the environment it links into as well: the cache is shared by every checkout
    # on the machine, and a shadow made by a clone that was deleted links to nothing.
    where = hashlib.sha256(str(src).encode()).hexdigest()[:10]
    dist = PACKAGES[package]
    shadow = cache_dir() / "bigdl-libs" / f"{'' if dist == 'bigdl-llm' else dist + '-'}" \
        f"{importlib.metadata.version(dist)}-{build}-{where}"
    if shadow.exists():
        if all(p.exists() for p in shadow.iterdir()):  # exists() follows the links
            return shadow
        shutil.rmtree(shadow, ignore_errors=True)  # dangling: made again, never trusted
    tmp = shadow.with_name(shadow.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    for item in src.iterdir():
        m = re.match(_LIB_NAME, item.name)
        if m:
            (tmp / item.name).symlink_to(src / f"lib{m['family']}_{build}.so")
        elif item.name.startswith("main-"):
            shutil.copy2(item, tmp / item.name)
        else:
            (tmp / item.name).symlink_to(item)
    try:
        os.rename(tmp, shadow)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return shadow


def use_build(build: str, parameter: str = "kernel_build", package: str = "bigdl.llm") -> Path:
    """Make this process's bigdl (transformers API) load ``build``; return the folder.
    ``package``: "bigdl.llm" or "ipex_llm" (the same locator, under its own name)."""
    if any(m.startswith(f"{package}.ggml.model") for m in sys.modules):
        raise MedwbError(f"{parameter}: {PACKAGES[package]}'s kernels are already loaded in this process; set "
                         f"it before anything imports {package}.transformers (restart the kernel)")
    shadow = shadow_libs(build, parameter, package)
    import importlib
    bigdl_utils = importlib.import_module(f"{package}.utils.utils")
    original = bigdl_utils.get_shared_lib_info

    def get_shared_lib_info(lib_base_name: str):
        _, paths = original(lib_base_name)
        return shadow, [shadow / p.name for p in paths]

    bigdl_utils.get_shared_lib_info = get_shared_lib_info
    return shadow


def build_of_library(path: str) -> str | None:
    """ISA build of a kernel library path (symlinks resolved)."""
    m = _BUILD_RE.search(os.path.realpath(path))
    return m["build"] if m else None
