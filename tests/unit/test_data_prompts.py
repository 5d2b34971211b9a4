"""Chat rendering: llama-2 / mistral / plain templates (golden strings), system-role folding, errors;
and the `uld data summary` payload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uld.data import ChatTemplateError, Example, chat_prompt_ids, get_task, render_chat
from uld.data.summary import format_summary, summarize_task

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"

MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "Q2"},
]


def test_llama2_golden(shared_tokenizer):
    tok = shared_tokenizer("llama-2-7b")
    assert (
        render_chat(tok, MSGS, template="llama-2")
        == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"
    )
    ids = chat_prompt_ids(tok, MSGS, template="llama-2")
    assert ids.count(tok.bos_token_id) == 2 and ids[0] == tok.bos_token_id and ids.count(tok.eos_token_id) == 1


def test_mistral_golden_and_system_folding(shared_tokenizer):
    tok = shared_tokenizer("mistral-7b")
    assert (
        render_chat(tok, MSGS, system_role=False, template="mistral")
        == "<s>[INST] Be brief.\n\nQ1 [/INST]A1</s>[INST] Q2 [/INST]"
    )
    with pytest.raises(ChatTemplateError, match="no system role"):
        render_chat(tok, MSGS, template="mistral")


def test_plain_golden(shared_tokenizer):
    tok = shared_tokenizer("pythia")
    assert render_chat(tok, MSGS, template="plain") == "Be brief.\n\nQ1 A1\n\nQ2"
    assert render_chat(tok, MSGS, system_role=False, template="plain") == "Be brief.\n\nQ1 A1\n\nQ2"


def test_task_teacher_prompt_llama2(shared_tokenizer):
    tok = shared_tokenizer("llama-2-7b")
    task = get_task("dialogsum")
    ex = Example(id="d1", context="#Person1#: Hi Tom.\n#Person2#: Hi Ann.", question="", answers=("Ann and Tom greet.",))
    shot = Example(id="d0", context="#Person1#: Bye.", question="", answers=("#Person1# leaves.",))
    text = render_chat(tok, task.teacher_messages(ex, [shot], title=False), template="llama-2")
    assert text == (
        f"<s>[INST] <<SYS>>\n{task.system_prompt}\n<</SYS>>\n\nDialogue: #Person1#: Bye.\nSummary: [/INST] "
        "#Person1# leaves. </s><s>[INST] Dialogue: #Person1#: Hi Tom.\n#Person2#: Hi Ann.\nSummary: [/INST]"
    )


def test_tokenizer_own_template_and_errors(shared_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shared_dir / "tokenizers" / "gpt2")  # a fresh copy: we set a template
    with pytest.raises(ChatTemplateError, match="chat_template: plain"):
        render_chat(tok, MSGS)
    with pytest.raises(ChatTemplateError, match="unknown chat template 'chatml'"):
        render_chat(tok, MSGS, template="chatml")
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert render_chat(tok, MSGS) == "<system>Be brief.\n<user>Q1\n<assistant>A1\n<user>Q2\n<assistant>"
    assert render_chat(tok, MSGS, system_role=False) == "<user>Be brief.\n\nQ1\n<assistant>A1\n<user>Q2\n<assistant>"
    with pytest.raises(ChatTemplateError, match="alternate"):
        render_chat(tok, MSGS[:3], template="plain")


def test_summary_payload(shared_tokenizer):
    tok = shared_tokenizer("gpt2")
    d = summarize_task("squad", FIXTURES, {"gpt2": tok})
    json.dumps(d)  # one JSON object
    assert d["task"] == "squad" and d["splits"]["train"]["size"] == 4 and d["splits"]["test"]["size"] == 3
    assert d["splits"]["test"]["invalid"] == 0 and d["splits"]["test"]["n_answers"]["max"] == 3
    assert d["splits"]["test"]["tokens"]["gpt2"]["answer"]["n"] == 3
    assert d["prompts"]["student"].startswith("Context: Super Bowl 50")
    assert d["prompts"]["teacher"]["gpt2"].startswith(get_task("squad").system_prompt)  # plain fallback
    text = format_summary(d)
    assert "[train] 4 examples" in text and "--- student prompt" in text


def test_summary_counts_invalid_rows(tmp_path):
    import shutil

    shutil.copytree(FIXTURES, tmp_path / "d")
    path = tmp_path / "d" / "dialogsum" / "dialogsum.train.jsonl"
    path.write_text(path.read_text() + '{"fname": "train_9", "dialogue": "", "summary": "x"}\n')
    d = summarize_task("dialogsum", tmp_path / "d")
    assert d["splits"]["train"]["size"] == 3 and d["splits"]["train"]["invalid"] == 1
    assert "field 'dialogue'" in d["splits"]["train"]["problems"][0]


def test_summary_full_shared_sizes(shared_data_dir):
    d = summarize_task("dialogsum", shared_data_dir)
    assert d["splits"]["train"]["size"] == 12_460 and d["splits"]["test"]["size"] == 500
