"""Tiny, randomly initialised models with real (or freshly trained) tokenizers, for tests and demos.

``build_tiny_pair(dest)`` writes two local Hugging Face folders, a teacher and a student with
DIFFERENT tokenizers, small enough that a whole teacher -> train -> evaluate run takes seconds on a
CPU. Tokenizers come from ``../shared/tokenizers`` when that folder exists (Llama-2 for the teacher,
Pythia for the student), otherwise a byte-level BPE is trained on the fly so nothing needs a network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

SHARED_TOKENIZERS_ENV = "ULD_SHARED_TOKENIZERS"

# A minimal chat template for tiny teachers whose tokenizer has none.
SIMPLE_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<<SYS>> {{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_CORPUS = [
    "Context: The Eiffel Tower is in Paris. Question: Where is the Eiffel Tower? Answer: Paris",
    "Dialogue: #Person1#: Hello, how are you? #Person2#: Fine, thanks. Summary: Two people greet.",
    "Medical paper: Aspirin reduces the risk of stroke in adults. Question: Does aspirin help? Answer: yes",
    "The quick brown fox jumps over the lazy dog. 0123456789 Normans Normandy France century",
    "Which NFL team represented the AFC at Super Bowl 50? The Denver Broncos defeated the Panthers.",
]


def shared_tokenizers_dir() -> Path | None:
    """``../shared/tokenizers`` beside the checkout (or $ULD_SHARED_TOKENIZERS), when present."""
    env = os.environ.get(SHARED_TOKENIZERS_ENV)
    cands = [Path(env)] if env else []
    cands.append(Path(__file__).resolve().parents[3] / "shared" / "tokenizers")
    for c in cands:
        if c.is_dir():
            return c
    return None


def train_tiny_tokenizer(dest: str | os.PathLike, *, vocab_size: int = 400, seed_text: list[str] | None = None):
    """Train a small byte-level BPE tokenizer (with BOS/EOS/PAD) and save it to ``dest``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((seed_text or []) + _CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(dest)
    return fast


def _load_or_train_tokenizer(which: Literal["teacher", "student", "seq2seq"], dest: Path):
    from transformers import AutoTokenizer

    shared = shared_tokenizers_dir()
    if shared is not None:
        sub = {"teacher": "llama-2-7b", "student": "pythia", "seq2seq": "gpt2"}[which]
        tok = AutoTokenizer.from_pretrained(shared / sub)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok
    size = {"teacher": 500, "student": 350, "seq2seq": 300}[which]
    return train_tiny_tokenizer(dest, vocab_size=size)


def build_tiny_model(
    dest: str | os.PathLike,
    which: Literal["teacher", "student", "seq2seq"] = "student",
    *,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    chat_template: str | None = None,
) -> Path:
    """Write a tiny random model + tokenizer to ``dest`` (safetensors). Returns the folder."""
    import torch
    from transformers import (
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = _load_or_train_tokenizer(which, dest)
    vocab = len(tok)
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if which == "teacher":
        cfg = LlamaConfig(
            hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048, **common,
        )
        model = LlamaForCausalLM(cfg)
        tok.chat_template = chat_template or SIMPLE_CHAT_TEMPLATE
    elif which == "student":
        cfg = GPTNeoXConfig(
            hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=2, max_position_embeddings=2048, **common,
        )
        model = GPTNeoXForCausalLM(cfg)
        if chat_template:
            tok.chat_template = chat_template
    else:
        cfg = T5Config(
            d_model=hidden, d_ff=hidden * 2, d_kv=hidden // 2, num_layers=layers, num_decoder_layers=layers,
            num_heads=2, decoder_start_token_id=tok.pad_token_id, **common,
        )
        model = T5ForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


def build_tiny_pair(dest: str | os.PathLike, *, seq2seq: bool = False) -> dict[str, Path]:
    """Teacher and student folders with different tokenizers (and a seq2seq student if asked)."""
    dest = Path(dest)
    out = {
        "teacher": build_tiny_model(dest / "tiny-teacher", "teacher", seed=1),
        "student": build_tiny_model(dest / "tiny-student", "student", seed=2),
    }
    if seq2seq:
        out["seq2seq"] = build_tiny_model(dest / "tiny-seq2seq", "seq2seq", seed=3)
    return out


# --------------------------------------------------------------------------------------------------
# Tiny models of the paper's real architectures (the rehearsal of the paper grids)
# --------------------------------------------------------------------------------------------------

# registry name -> (architecture, tokenizer folder under ../shared/tokenizers, or None: a trained BPE)
PAPER_ARCHITECTURES = {
    "llama-2-7b-chat": ("llama", "llama-2-7b"),
    "mistral-7b-instruct": ("mistral", "mistral-7b"),
    "pythia-160m": ("gpt_neox", "pythia"),
    "pythia-410m": ("gpt_neox", "pythia"),
    "pythia-1b": ("gpt_neox", "pythia"),
    "opt-350m": ("opt", "gpt2"),  # OPT's BPE is GPT-2's
    "bloomz-560m": ("bloom", None),  # no Bloom tokenizer offline
    "mt0-base": ("mt5", None),  # nor mT5's sentencepiece model
    "all-MiniLM-L6-v2": ("bert", None),  # the embedding cost's sentence encoder
}


def _arch_tokenizer(source: str | None, dest: Path, seed: int):
    from transformers import AutoTokenizer

    shared = shared_tokenizers_dir()
    if source is not None and shared is not None and (shared / source).is_dir():
        tok = AutoTokenizer.from_pretrained(shared / source)
    else:
        tok = train_tiny_tokenizer(dest, vocab_size=600 + seed)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_arch_model(dest: str | os.PathLike, arch: str, tokenizer: str | None = None, *, hidden: int = 16,
                     layers: int = 2, seed: int = 0, max_positions: int = 4096) -> Path:
    """A tiny random model of architecture ``arch`` (llama, mistral, gpt_neox, opt, bloom, mt5, bert) with
    the real tokenizer ``tokenizer`` of ``../shared/tokenizers`` when it is there. Returns the folder."""
    import torch
    import transformers as tf

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = _arch_tokenizer(tokenizer, dest, seed)
    torch.manual_seed(seed)
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    heads = dict(num_attention_heads=2, num_hidden_layers=layers, hidden_size=hidden)
    if arch in ("llama", "mistral"):
        conf_cls = tf.LlamaConfig if arch == "llama" else tf.MistralConfig
        model = (tf.LlamaForCausalLM if arch == "llama" else tf.MistralForCausalLM)(
            conf_cls(intermediate_size=2 * hidden, num_key_value_heads=2, max_position_embeddings=max_positions, **heads, **ids))
    elif arch == "gpt_neox":
        model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(intermediate_size=2 * hidden, max_position_embeddings=max_positions, **heads, **ids))
    elif arch == "opt":
        model = tf.OPTForCausalLM(tf.OPTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, ffn_dim=2 * hidden,
                                               word_embed_proj_dim=hidden, max_position_embeddings=max_positions, **ids))
    elif arch == "bloom":
        model = tf.BloomForCausalLM(tf.BloomConfig(hidden_size=hidden, n_layer=layers, n_head=2, **ids))
    elif arch == "mt5":
        model = tf.MT5ForConditionalGeneration(tf.MT5Config(d_model=hidden, d_ff=2 * hidden, d_kv=hidden // 2, num_layers=layers,
                                                            num_decoder_layers=layers, num_heads=2,
                                                            decoder_start_token_id=tok.pad_token_id, **ids))
    elif arch == "bert":
        model = tf.BertModel(tf.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                           intermediate_size=2 * hidden, vocab_size=len(tok), pad_token_id=tok.pad_token_id))
    else:
        raise ValueError(f"unknown architecture {arch!r}")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


def build_paper_models(dest: str | os.PathLike) -> Path:
    """One tiny model per model of the paper grids, in folders named as the registry names them (a
    ``ULD_MODELS_DIR``). Existing folders are kept."""
    dest = Path(dest)
    for i, (name, (arch, tokenizer)) in enumerate(sorted(PAPER_ARCHITECTURES.items())):
        if not (dest / name / "config.json").is_file():
            build_arch_model(dest / name, arch, tokenizer, seed=i)
    return dest
