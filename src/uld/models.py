"""Model registry and loading (Hub id or local folder), tokenizer pad/EOS handling.

The registry (``experiments/models.yaml``) maps short names to Hub ids and per-model settings. A model
is read from, in order: ``ModelConfig.path`` (explicit local folder), ``$ULD_MODELS_DIR/<name>`` (a
folder of local models, matched on the short name or the Hub id's basename, case-insensitively), a
local folder given as the name itself, and finally the Hub id. Weights are loaded as safetensors only,
and ``trust_remote_code`` stays off unless the config asks for it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

import yaml

from uld.config import ModelConfig, from_dict
from uld.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

MODELS_DIR_ENV = "ULD_MODELS_DIR"
REGISTRY_ENV = "ULD_MODEL_REGISTRY"
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = _REPO_ROOT / "experiments" / "models.yaml"


@dataclass
class ModelEntry:
    """One registry entry (see the header of ``experiments/models.yaml``)."""

    hub_id: str = ""
    kind: Literal["chat", "base"] = "base"
    arch: Literal["decoder", "encoder-decoder"] = "decoder"
    dtype: str = "float32"
    max_length: int = 2048
    system_role: bool = True
    chat_template: Optional[str] = None
    shots: dict[str, int] = field(default_factory=dict)
    title: dict[str, bool] = field(default_factory=dict)


@dataclass
class ResolvedModel:
    """A model config resolved against the registry and the local-folder overrides."""

    name: str  # registry short name, or the Hub id / path when not registered
    entry: ModelEntry
    source: str  # what from_pretrained receives: a local folder or a Hub id
    revision: Optional[str]
    dtype: str
    trust_remote_code: bool = False

    @property
    def is_encoder_decoder(self) -> bool:
        return self.entry.arch == "encoder-decoder"

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "hub_id": self.entry.hub_id,
            "source": self.source,
            "revision": self.revision,
            "dtype": self.dtype,
            "arch": self.entry.arch,
        }


def registry_path() -> Path:
    return Path(os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY))


@lru_cache(maxsize=8)
def _load_registry_cached(path: str, mtime: float) -> dict[str, ModelEntry]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the model registry must be a mapping of short names")
    out = {}
    for name, raw in data.items():
        out[name] = from_dict(ModelEntry, raw, source=path, prefix=name)
        if not out[name].hub_id:
            raise ConfigError(f"'{name}.hub_id' in {path}: every registry entry needs a hub_id")
    return out


def load_registry(path: str | os.PathLike | None = None) -> dict[str, ModelEntry]:
    """Parse and validate the model registry (unknown fields are errors naming entry and file)."""
    p = Path(path) if path is not None else registry_path()
    if not p.is_file():
        raise ConfigError(f"model registry not found: {p} (set {REGISTRY_ENV})")
    return _load_registry_cached(str(p), p.stat().st_mtime)


def _find_local(names: list[str]) -> Optional[str]:
    root = os.environ.get(MODELS_DIR_ENV)
    if not root:
        return None
    root_p = Path(root)
    if not root_p.is_dir():
        raise ConfigError(f"{MODELS_DIR_ENV}={root} is not a folder")
    children = {c.name.lower(): c for c in root_p.iterdir() if c.is_dir()}
    for n in names:
        hit = children.get(n.lower())
        if hit is not None:
            return str(hit)
    return None


def run_checkpoint(store: str | os.PathLike, run: str) -> Path:
    """The weights a ``from_run`` reference names: ``<store>/runs/<run>/checkpoints/best`` of a finished run."""
    folder = Path(store) / "runs" / run
    best = folder / "checkpoints" / "best"
    if not (folder / "train_summary.json").is_file() or not best.is_dir():
        raise ConfigError(
            f"from_run={run!r}: {folder} is not a finished training run (no train_summary.json and "
            "checkpoints/best); run the experiment that trains it first"
        )
    return best


def bind_run_models(cfg):
    """A copy of an ``ExperimentConfig`` whose ``from_run`` models point at their run's checkpoint
    (``path``, which is not part of any id) in the config's store (``output_dir``)."""
    out = cfg
    for side in ("teacher", "student"):
        m: ModelConfig = getattr(cfg, side)
        if m.from_run and not m.path:
            out = dataclasses.replace(out, **{side: dataclasses.replace(m, path=str(run_checkpoint(cfg.output_dir, m.from_run)))})
    return out


def resolve_model(cfg: ModelConfig, registry: dict[str, ModelEntry] | None = None) -> ResolvedModel:
    """Resolve a ``ModelConfig`` to a loadable source plus its registry settings."""
    if not cfg.name and not cfg.path:
        raise ConfigError("model config needs 'name' (registry short name or Hub id) or 'path'")
    if cfg.from_run and not cfg.path:
        raise ConfigError(f"model {cfg.name!r} comes from run {cfg.from_run!r}: bind it first (uld.models.bind_run_models)")
    registry = load_registry() if registry is None else registry
    name = cfg.name or cfg.path or ""
    entry = registry.get(name)
    if entry is None:
        # A Hub id that is registered under a short name keeps that entry's settings.
        entry = next((e for e in registry.values() if e.hub_id == name), None)
        if entry is not None:
            name = next(k for k, e in registry.items() if e is entry)
    registered = entry is not None
    if entry is None:
        entry = ModelEntry(hub_id=name)
    if cfg.path:
        if not Path(cfg.path).is_dir():
            raise ConfigError(f"model path {cfg.path!r} (for {name!r}) is not a folder")
        source = cfg.path
    else:
        candidates = [name, entry.hub_id.split("/")[-1], entry.hub_id.replace("/", "--")]
        source = _find_local(candidates) or (name if Path(name).is_dir() else entry.hub_id)
    if Path(source).is_dir():
        folder_config(Path(source))
    if Path(source).is_dir() and not registered:
        entry = _complete_entry_from_folder(entry, Path(source))
    dtype = cfg.dtype or entry.dtype
    return ResolvedModel(name, entry, source, cfg.revision, dtype, cfg.trust_remote_code)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


def has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def folder_config(folder: Path) -> dict:
    """A model folder's ``config.json`` ({} when it has none); one that does not parse is an error
    naming the file, before any library reads it."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        return {}
    try:
        conf = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{cfg_file}: not a model config (invalid JSON: {exc})") from None
    if not isinstance(conf, dict):
        raise ModelLoadError(f"{cfg_file}: not a model config (a JSON {type(conf).__name__}, not an object)")
    return conf


def _complete_entry_from_folder(entry: ModelEntry, folder: Path) -> ModelEntry:
    """For unregistered local folders, read the architecture from config.json."""
    conf = folder_config(folder)
    if conf.get("is_encoder_decoder"):
        entry = dataclasses.replace(entry, arch="encoder-decoder")
    return entry


def torch_dtype(name: str):
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "auto": "auto",
    }
    if name not in table:
        raise ConfigError(f"unknown dtype {name!r} (one of {sorted(table)})")
    return table[name]


def _offline_hint(resolved: ResolvedModel) -> str:
    return (
        f"could not load {resolved.name!r} from {resolved.source!r}. Offline? Point at a local folder with "
        f"'<teacher|student>.path=/dir' or set {MODELS_DIR_ENV} to a folder holding '{resolved.name}' "
        f"or '{resolved.entry.hub_id.split('/')[-1]}'."
    )


def load_tokenizer(resolved: ResolvedModel, *, padding_side: str | None = None):
    """Load the tokenizer; give it a pad token (EOS) when it has none, so batching works."""
    from transformers import AutoTokenizer

    if Path(resolved.source).is_dir() and not has_tokenizer_files(Path(resolved.source)):
        # a library would fall back to some default tokenizer: every answer would then tokenize wrongly
        raise ModelLoadError(f"{resolved.source}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) in the "
                             f"model folder of {resolved.name!r}; copy the tokenizer the model was trained with into it")
    try:
        tok = AutoTokenizer.from_pretrained(
            resolved.source, revision=resolved.revision, trust_remote_code=resolved.trust_remote_code
        )
    except OSError as exc:
        raise ConfigError(_offline_hint(resolved) + f" ({exc})") from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"tokenizer of {resolved.name!r} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    if padding_side is not None:
        tok.padding_side = padding_side
    return tok


def load_model(resolved: ResolvedModel, *, dtype: str | None = None, device: str | None = None):
    """Load weights (safetensors only) as a causal LM or a seq2seq LM according to the registry."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if resolved.is_encoder_decoder else AutoModelForCausalLM
    try:
        model, info = cls.from_pretrained(
            resolved.source,
            revision=resolved.revision,
            dtype=torch_dtype(dtype or resolved.dtype),
            use_safetensors=True,
            trust_remote_code=resolved.trust_remote_code,
            output_loading_info=True,
        )
    except OSError as exc:
        raise ConfigError(_offline_hint(resolved) + f" ({exc})") from exc
    except Exception as exc:  # a damaged safetensors header or a config that does not parse
        if Path(resolved.source).is_dir():
            raise ModelLoadError(f"{resolved.source}: the weights do not load ({type(exc).__name__}: {exc})") from None
        raise
    _check_loading(resolved, info)
    if device is not None:
        model.to(device)
    return model


def _check_loading(resolved: ResolvedModel, info: dict) -> None:
    """Weights that leave parameters at their random initialisation (or bring tensors the model has no
    place for) would be trained or scored as if they were the model: refuse them, naming the folder."""
    problems = []
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"), ("mismatched_keys", "of the wrong shape")):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in (info.get(key) or []))
        if names:
            problems.append(f"{len(names)} {what} tensor(s) ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")
    if info.get("error_msgs"):
        problems.append("; ".join(map(str, info["error_msgs"]))[:300])
    if problems:
        raise ModelLoadError(f"{resolved.source}: weights do not match the model: {'; '.join(problems)}")


def shots_for(entry: ModelEntry, task: str, override: int | None = None) -> int:
    """Teacher few-shot count for a task: explicit override, else the registry's paper value, else 0."""
    if override is not None:
        return override
    return int(entry.shots.get(task, 0))


def title_for(entry: ModelEntry, task: str, override: bool | None = None) -> bool:
    if override is not None:
        return override
    return bool(entry.title.get(task, False))
