"""ULD in a plain PyTorch loop: the loss and the teacher cache, nothing else of uld.

Same inputs as ``examples/trainer_uld.py`` (a teacher stage written by ``uld generate``)::

    python examples/loop_uld.py --stage results/teacher/<id> --student HuggingFaceTB/SmolLM2-135M-Instruct --steps 50

With an online teacher instead of the cache, pass the teacher's logits and labels:
``loss_fn(student_logits, labels, teacher_logits, teacher_labels=teacher_labels)``; for a teacher that
shares the student's tokenizer, :class:`uld.KDLoss` takes the same arguments (the KL baseline).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from uld import TeacherSignalStore, ULDLoss

from trainer_uld import collate, student_rows  # noqa: E402  (the example beside this one)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", required=True, type=Path)
    p.add_argument("--student", required=True)
    p.add_argument("--task", default="squad")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--lam", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.student)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.student, use_safetensors=True).train()
    rows = student_rows(args.stage, tok, args.task)
    store = TeacherSignalStore(args.stage)
    loss_fn = ULDLoss(lam=args.lam, student_eos_id=tok.eos_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    for step in range(args.steps):
        start = (step * args.batch_size) % len(rows)
        batch = collate((rows + rows)[start : start + args.batch_size], tok.pad_token_id)
        teacher, lengths = store.get(batch["row_ids"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        parts = loss_fn(logits, batch["labels"], teacher, teacher_lengths=lengths, return_parts=True)
        opt.zero_grad()
        parts.loss.backward()
        opt.step()
        print(f"step {step + 1}: loss {parts.loss.item():.4f}  ce {parts.ce.item():.4f}  uld {parts.distill.item():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
