"""`bench report` on hostile records: run directories are shared between people, so every value a
record holds (method, dataset, run id, settings, notes, changes, metric values, artifact file
names) must reach the page as text, and a protocol or metric key that is not a plain name makes
its record unreadable. The page is opened in headless Chromium (the harness of test_report.py);
no injected element may exist in its DOM and no injected script may run.
"""

from __future__ import annotations

import html
import os
import subprocess
from html.parser import HTMLParser

import pytest
from test_report import _chromium, _record

# each payload, if it ran, would mark <body> with data-pwned
MARK = "document.body.setAttribute('data-pwned','{}')"
IMG = f'<img src=x onerror="{MARK.format("img")}">'
SCRIPT = f"<script>{MARK.format('script')}</script>"
DQ = f'" autofocus onfocus="{MARK.format("dq")}" x="'  # breaks a double-quoted attribute
SQ = "' autofocus onfocus='" + MARK.format("sq").replace("'", "`") + "' x='"
JS = f"javascript:{MARK.format('js')}"
CLOSE = f'</td></tr></table></style></title><svg onload="{MARK.format("svg")}">'
RUN_ID = f"<img src=x onerror={MARK.format('runid')}>"  # a directory name: no slash
FILE = f"<img src=x onerror={MARK.format('file')}>"
PAYLOADS = (IMG, SCRIPT, DQ, SQ, JS, CLOSE, RUN_ID, FILE)

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360"
    "f8cfc0f01f0005000201ff2cb6f7b90000000049454e44ae426082"
)


def _hostile_records() -> list[dict]:
    """Two seeds of a hostile method (a seed group), a hostile-valued run, and two records whose
    protocol or metric key is hostile (refused on load)."""
    recs = []
    for seed, run_id in ((0, RUN_ID), (1, f"{DQ}-seed1")):
        rec = _record(
            run_id, IMG, dataset=SCRIPT, seed=seed, clean=0.9 - seed / 10, pgd=0.3, fid=50.0
        )
        rec.update(
            arch=DQ,
            preset=SQ,
            message=JS,
            changes={IMG: SCRIPT, "optim.lr": JS, "method.note": CLOSE},
            preset_variant={DQ: SQ},
            sources={IMG: CLOSE},
            created_at=CLOSE,
            environment={"plugins": [{"kind": "method", "name": IMG, "package": SCRIPT}]},
            training={"history": [{"step": s, IMG: 1.0 / s, "loss": 2.0 / s} for s in (1, 2)]},
            artifacts={"buffer_grid": f"samples/{FILE}.png", "checkpoint": JS},
            evaluation_skipped={"standard": {"kid": IMG}},
        )
        std = rec["evaluations"]["standard"]
        std["pgd"].update(settings={"eps": IMG, "norm": SCRIPT}, note=CLOSE, protocol=DQ)
        std["energy"] = {
            "gap_adv": 1.0,
            "w1_adv": 1.0,
            "gap_gen": 2.0,
            "w1_gen": 2.0,
            "n_examples": 10,
            "artifacts": {"energy_values": f"{FILE}.npz", "energy_histogram": f"{SQ}.png"},
        }
        recs.append(rec)
    values = _record("r3-values", "ce", clean=0.7, pgd=0.1)
    values["evaluations"]["standard"]["clean"].update(note=IMG, settings={"batch": SCRIPT})
    values["evaluations"]["standard"]["pgd"].update(accuracy=DQ, reliable=SQ, n_examples=CLOSE)
    recs.append(values)
    for key in ("protocol", "metric"):
        rec = _record(f"r4-bad-{key}", "ce", clean=0.5)
        ev = rec["evaluations"]
        rec["evaluations"] = {IMG: ev["standard"]} if key == "protocol" else ev
        if key == "metric":
            ev["standard"][SCRIPT] = {"accuracy": 0.5, "n_examples": 10}
        recs.append(rec)
    return recs


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


def _injected(dom: str) -> list[str]:
    """Every element or attribute in ``dom`` the page itself never writes."""
    parser = _Elements()
    parser.feed(dom)
    found = []
    scripts = [tag for tag, _ in parser.elements if tag == "script"]
    if len(scripts) != 1:  # the page's own check
        found.append(f"{len(scripts)} <script> elements")
    for tag, attrs in parser.elements:
        if tag in ("svg", "iframe", "object", "embed", "b"):
            found.append(f"<{tag}>")
        for name in attrs:
            if name.startswith("on") or name in ("autofocus", "x", "data-pwned"):
                found.append(f"<{tag} {name}>")
        if tag == "img" and not (attrs.get("src") or "").startswith("data:image/png;base64,"):
            found.append(f"<img src={attrs.get('src')!r}>")
        if tag == "a" and not (attrs.get("href") or "").startswith("#"):
            found.append(f"<a href={attrs.get('href')!r}>")
    return found


def test_hostile_records_inject_nothing_into_the_report(tmp_path, bench_cli):
    from bench.core.io import write_json

    out = tmp_path / "results"
    for rec in _hostile_records():
        run_dir = out / "runs" / rec["run_id"]
        write_json(run_dir / "record.json", rec)
        (run_dir / "samples").mkdir()
        for name in (f"{FILE}.png", f"sample-{FILE}.png", f"sample-{SQ}.png"):
            (run_dir / "samples" / name).write_bytes(PNG)
    page_path = tmp_path / "page" / "index.html"
    res = bench_cli("report", "--out", out, "--html", page_path, "--no-reference")
    assert res.exit_code == 0, res.stderr
    refused = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: skipped")]
    assert len(refused) == 2 and all("is not a plain name" in ln for ln in refused), res.stderr
    page = page_path.read_text()
    assert not [p for p in PAYLOADS if p in page]  # nothing verbatim ...
    assert html.escape(IMG) in page and html.escape(SCRIPT) in page  # ... but shown as text
    assert "r3-values" in page and "r4-bad" not in page
    assert not _injected(page), _injected(page)

    dom = _dom(page_path, tmp_path)
    assert 'data-errors="0"' in dom and 'data-broken-images="0"' in dom
    assert "data-pwned=" not in dom  # no injected script ran
    assert not _injected(dom), _injected(dom)


def _dom(page, tmp_path) -> str:
    """The page's DOM after Chromium loaded it and ran its scripts."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("BENCH_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def test_the_check_catches_a_value_that_was_not_escaped(tmp_path):
    """Each payload, put into a page raw, leaves an element the check finds; those that run
    mark <body>, which the browser check finds."""
    from bench.leaderboard.report.page import Section, render_page

    for i, payload in enumerate(PAYLOADS):
        sec = Section("raw")
        quote = {DQ: '"', SQ: "'"}.get(payload)
        sec.parts.append(f"<p class={quote}{payload}{quote}>.</p>" if quote else payload)
        if payload == JS:
            sec.parts[-1] = f'<a href="{payload}">link</a>'
        page = tmp_path / f"raw{i}.html"
        page.write_text(render_page("t", [], [sec]))
        assert _injected(page.read_text()), payload
    for payload in (IMG, SCRIPT, RUN_ID, CLOSE):
        sec = Section("raw")
        sec.parts.append(payload)
        page = tmp_path / "ran.html"
        page.write_text(render_page("t", [], [sec]))
        assert "data-pwned=" in _dom(page, tmp_path), payload
