"""Universal Logit Distillation (ULD): cross-tokenizer knowledge distillation for LLMs.

For use inside your own training loop::

    from uld import ULDLoss, TeacherSignalStore     # the loss, and the cache `uld generate` writes

The command line (``uld --help``) runs the whole reproduction. Importing ``uld`` itself is cheap: the
names below load their modules (and torch) on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "ULDLoss": "uld.losses",
    "KDLoss": "uld.losses",
    "LossParts": "uld.losses",
    "TeacherSignal": "uld.losses",
    "uld_loss": "uld.losses",
    "TeacherSignalStore": "uld.signal",
    "online_teacher_signal": "uld.signal",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'uld' has no attribute {name!r}")
