"""ipex-llm backend (ipex env only): bigdl-llm's successor, the same low-bit API under ``ipex_llm``.

bigdl-llm 2.4 (medwb.backends.bigdl) stays for the case study's own tools, but its
transformers 4.31 cannot load the families hospitals bring now (Qwen2/Qwen2.5, Llama-3.x's
RoPE base, native GLM-4). ipex-llm 2.2.0, its renamed successor, runs here on transformers
4.47 in an environment of its own (requirements/ipex.txt). It is the last release: the
project is archived upstream (no fixes, no security updates), which ``medwb doctor`` and the
recommendation say.

What differs from bigdl, measured on tiny checkpoints of each family (2026-12-05, AMD EPYC):
- Qwen2's fused attention calls the rotary embedding with ``seq_len``, which transformers
  4.47 removed (TypeError at generate): for the families the registry marks so, the model
  loads with ``optimize_model=False`` (linear layers low-bit, attention transformers' own)
  and the record's ``load`` says so.
- Folders saved by transformers 5 name ``TokenizersBackend`` and list extra special tokens,
  which 4.47 cannot read: the tokenizer is then built from tokenizer.json and the special
  tokens of tokenizer_config.json (the same ids, checked against the main env in the tests;
  ``medwb.backends.bigdl.tokenizer_from_files``, which bigdl's 4.31 needs too).
- Its kernels are bigdl's per-ISA builds under ``ipex_llm/libs``, chosen by CPU vendor as
  bigdl's are: the ``kernel_build`` knob applies the same way.
"""
from __future__ import annotations

from pathlib import Path

from medwb.backends.bigdl import BigDL, BigDLBackend, save_low_bit_main
from medwb.backends.registry import register
from medwb.errors import MedwbError

ARCHIVED = ("ipex-llm 2.2.0 (April 2025) is the last release and the project is archived upstream: no "
            "fixes and no security updates; prefer a maintained route when it is about as fast")


class IpexBackend(BigDLBackend):
    name = "ipex-llm"
    package, dist = "ipex_llm", "ipex-llm"

    @classmethod
    def fused(cls, model_dir: Path) -> bool:
        from medwb.models import architectures
        try:
            return not architectures.detect(model_dir).unfused.get(cls.name)
        except MedwbError:  # a low-bit folder whose config names no known family: the library decides
            return True


@register
class IpexLLM(BigDL):
    name, env, family, route = "ipex-llm", "ipex", "ipex-llm", "ipex-llm-api"
    imports = ("torch", "transformers", "ipex_llm.transformers")
    kernel_package = IpexBackend.package   # its kernel libraries are under its own package
    stands_in_for = "bigdl"
    caveat = ARCHIVED
    runtime = IpexBackend

    def model_problems(self, model_dir: Path) -> list[str]:
        # transformers 4.47 reads rope_theta and Llama-3's rope_scaling: none of bigdl's refusals;
        # what the family needs is the registry's (medwb.models.architectures).
        return []


if __name__ == "__main__":
    import sys
    save_low_bit_main(IpexBackend, sys.argv[1:])
