"""ULD inside TRL's ``SFTTrainer``: CE + λ·ULD from an exported teacher signal, no teacher in memory.

The teacher ran once (``uld generate``) and its signal was exported (``uld signal export <stage> --out DIR``,
or downloaded: the export is an ordinary parquet dataset). The student is any causal LM with its own
tokenizer; it learns the teacher's answers by TRL's usual prompt/completion SFT, and ``compute_loss``
adds λ times the ULD distance to the teacher's cached sorted top-k probabilities of each row::

    python examples/trl_uld.py --signal DIR --student HuggingFaceTB/SmolLM2-135M-Instruct --out /tmp/uld-trl --steps 50

Each row's ``row_id`` rides with the batch (kept as a signature column, added by the collator) so the loss
fetches that row's teacher distributions. Needs ``pip install "uld-repro[trl]"``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from uld import TeacherSignalStore, ULDLoss
from uld.data import Example, get_task
from uld.losses import TeacherSignal


def sft_rows(signal_dir: str | Path, task: str, split: str = "train", cache_dir: str | None = None) -> Dataset:
    """TRL prompt/completion rows (plus ``row_id``) from an exported signal: the student's own zero-shot
    prompt for each item and the teacher's answer as the completion."""
    rows = load_dataset("parquet", data_dir=str(signal_dir), split=split, cache_dir=cache_dir)
    t = get_task(task)
    out = []
    for rec in rows.select_columns(["row_id", "context", "question", "gold", "answer"]):
        ex = Example(id=str(rec["row_id"]), context=rec["context"], question=rec["question"], answers=tuple(rec["gold"]))
        # uld's own tokenization puts one space between the prompt (ending "Answer:") and the answer
        out.append({"prompt": t.student_prompt(ex), "completion": " " + rec["answer"], "row_id": ex.id})
    return Dataset.from_list(out)


class _WithRowIds:
    """TRL's collator, plus the batch's row ids (the collator itself keeps only the model's inputs)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collate(examples)
        batch["row_ids"] = [e["row_id"] for e in examples]
        return batch


class ULDSFTTrainer(SFTTrainer):
    """An ``SFTTrainer`` whose loss is CE + λ·ULD against each row's cached teacher signal."""

    def __init__(self, *args, signal: TeacherSignalStore, uld_loss: ULDLoss, **kwargs):
        super().__init__(*args, **kwargs)
        self.signal, self.uld_loss = signal, uld_loss
        self.data_collator = _WithRowIds(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "row_id" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "row_id"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        row_ids = inputs.pop("row_ids")
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        teacher, lengths = self.signal.get(row_ids)
        device = outputs.logits.device
        teacher = TeacherSignal(teacher.probs.to(device), teacher.tail.to(device))
        loss = self.uld_loss(outputs.logits, labels, teacher, teacher_lengths=lengths.to(device))
        return (loss, outputs) if return_outputs else loss


def build_trainer(signal_dir: str | Path, student: str | Path, out: str | Path, *, task: str | None = None, steps: int = 50,
                  batch_size: int = 8, lr: float = 1e-5, lam: float = 1.5, seed: int = 0,
                  cache_dir: str | None = None) -> ULDSFTTrainer:
    signal = TeacherSignalStore.from_dataset(signal_dir)
    tok = AutoTokenizer.from_pretrained(student)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(student, use_safetensors=True)
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
                     logging_steps=1, save_strategy="no", report_to=[], seed=seed, completion_only_loss=True,
                     max_length=None, use_cpu=not torch.cuda.is_available())
    rows = sft_rows(signal_dir, task or signal.meta["task"], cache_dir=cache_dir)
    return ULDSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tok, signal=signal,
                         uld_loss=ULDLoss(lam=lam, student_eos_id=tok.eos_token_id))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--signal", required=True, type=Path, help="a folder written by `uld signal export`")
    p.add_argument("--student", required=True, help="student model folder or Hub id")
    p.add_argument("--out", required=True, type=Path, help="where the trained student goes")
    p.add_argument("--task", help="task of the prompts (default: the export's)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--lam", type=float, default=1.5)
    args = p.parse_args(argv)

    trainer = build_trainer(args.signal, args.student, args.out, task=args.task, steps=args.steps, batch_size=args.batch_size,
                            lr=args.lr, lam=args.lam)
    trainer.train()
    trainer.save_model(str(args.out))
    print(f"saved {args.out}; losses: {[round(h['loss'], 4) for h in trainer.state.log_history if 'loss' in h]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
