"""ULD inside a transformers ``Trainer``: the loss and the teacher cache, without the rest of uld.

The teacher's answers and its sorted top-k probabilities come from a teacher stage (``uld generate
CONFIG`` writes ``<store>/teacher/<id>/``: ``answers.parquet`` and ``signal/``). The student is any causal
LM with its own tokenizer; the only change to a standard ``Trainer`` is ``compute_loss``::

    python examples/trainer_uld.py --stage results/teacher/<id> --student HuggingFaceTB/SmolLM2-135M-Instruct \
        --out /tmp/uld-student --steps 50

Each training row is the student's prompt + the teacher's answer; its ``row_id`` travels with the batch
(``remove_unused_columns=False``) so ``compute_loss`` fetches that row's cached teacher distributions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from uld import TeacherSignalStore, ULDLoss
from uld.answers import read_answers
from uld.data import Example, encode_pair, get_task
from uld.losses import TeacherSignal


def student_rows(stage: Path, tokenizer, task: str = "squad", max_length: int = 512) -> list[dict]:
    """One tokenized row per training answer of the stage: input_ids, labels (-100 on the prompt), row_id."""
    t = get_task(task)
    rows = []
    for rec in read_answers(stage).to_dict("records"):
        if rec["split"] != "train":
            continue
        ex = Example(id=str(rec["row_id"]), context=rec["context"], question=rec["question"], answers=tuple(rec["gold"]))
        enc = encode_pair(tokenizer, t.student_prompt(ex), rec["answer"], max_length=max_length, context=ex.context)
        rows.append({"input_ids": list(enc.input_ids), "labels": list(enc.labels), "row_id": ex.id})
    return rows


def collate(rows: list[dict], pad_id: int) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], attn[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels, "row_ids": [r["row_id"] for r in rows]}


class ULDTrainer(Trainer):
    """A ``Trainer`` whose loss is CE + λ·ULD against the cached teacher signal of each row."""

    def __init__(self, *args, signal: TeacherSignalStore, uld_loss: ULDLoss, **kwargs):
        super().__init__(*args, **kwargs)
        self.signal, self.uld_loss = signal, uld_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        row_ids = inputs.pop("row_ids")
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        teacher, lengths = self.signal.get(row_ids)
        device = outputs.logits.device
        teacher = TeacherSignal(teacher.probs.to(device), teacher.tail.to(device))
        loss = self.uld_loss(outputs.logits, labels, teacher, teacher_lengths=lengths.to(device))
        return (loss, outputs) if return_outputs else loss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", required=True, type=Path, help="a teacher-stage folder written by `uld generate`")
    p.add_argument("--student", required=True, help="student model folder or Hub id")
    p.add_argument("--out", required=True, type=Path, help="where the trained student goes")
    p.add_argument("--task", default="squad")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--lam", type=float, default=1.5)
    args = p.parse_args(argv)

    tok = AutoTokenizer.from_pretrained(args.student)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.student, use_safetensors=True)
    rows = student_rows(args.stage, tok, args.task)
    trainer = ULDTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(args.out), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                               learning_rate=args.lr, logging_steps=1, save_strategy="no", report_to=[],
                               remove_unused_columns=False, use_cpu=not torch.cuda.is_available()),
        train_dataset=rows,
        data_collator=lambda batch: collate(batch, tok.pad_token_id),
        signal=TeacherSignalStore(args.stage),
        uld_loss=ULDLoss(lam=args.lam, student_eos_id=tok.eos_token_id),
    )
    trainer.train()
    trainer.save_model(str(args.out))
    tok.save_pretrained(str(args.out))
    print(f"saved {args.out}; losses: {[round(h['loss'], 4) for h in trainer.state.log_history if 'loss' in h]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
