"""The README's short findings stay true to the pages they link: every decimal a "What we found" line
quotes appears on the page that line sends the reader to."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _found_lines() -> list[str]:
    readme = (REPO / "README.md").read_text()
    assert "\n## What we found\n" in readme, "README has no 'What we found' section"
    section = readme.split("\n## What we found\n", 1)[1].split("\n## ", 1)[0]
    return [re.sub(r"\s+", " ", b) for b in re.split(r"\n(?=- )", section.strip()) if b.startswith("- ")]


def test_every_finding_links_a_page_that_exists():
    lines = _found_lines()
    pages = [re.search(r"\]\((docs/[^)#]+\.md)\)", ln) for ln in lines]
    assert all(pages), [ln for ln, p in zip(lines, pages) if not p]
    assert {"docs/studies/micro.md", "docs/studies/headroom.md"} <= {p.group(1) for p in pages}
    for p in pages:
        assert (REPO / p.group(1)).is_file(), p.group(1)


def test_every_number_of_a_finding_is_on_its_page():
    quoted = 0
    for line in _found_lines():
        page = (REPO / re.search(r"\]\((docs/[^)#]+\.md)\)", line).group(1)).read_text()
        numbers = re.findall(r"[−+]?\d+\.\d+", line)
        quoted += len(numbers)
        missing = [n for n in numbers if n not in page]
        assert not missing, f"README quotes {missing}, which its page does not: {line[:80]}"
        # an estimate with its interval is quoted as one piece, so a number cannot pair with the wrong interval
        estimates = re.findall(r"[−+]?\d+\.\d+ \[[^\]]+\]", line)
        missing = [e for e in estimates if e not in page]
        assert not missing, f"README quotes {missing}, which its page does not: {line[:80]}"
    assert quoted >= 10


def test_throughput_page_quotes_the_committed_benchmark():
    """docs/throughput.md states the issue's targets against results/benchmarks/throughput.json: the page
    cannot keep numbers from an older run of the benchmark."""
    import json

    res = json.loads((REPO / "results" / "benchmarks" / "throughput.json").read_text())
    page = (REPO / "docs" / "throughput.md").read_text()
    ev, tr, sr, roof = res["evaluation"], res["training"], res["student_run"], res["roofline"]
    quoted = {
        "run speedup": f"{sr['speedup']:.2f}×",
        "training speedup": f"{tr['speedup']:.3f}×",
        "eval speedup": f"{ev['speedup']:.2f}×",
        "bf16 agreement": f"{100 * ev['bf16_agreement']:.0f} % identical",
        "bf16 F1 delta": f"{ev['bf16_f1_delta']:.2f} F1".replace("-", "−"),
        "bf16 roofline": f"{roof['bf16_matmul_gflops_1t']:,.0f}",
        "baseline run": f"{sr['baseline_s']:.0f} s",
    }
    missing = {k: v for k, v in quoted.items() if v not in page}
    assert not missing, f"docs/throughput.md does not quote {missing}"
