"""Redaction measured on the written PII set, next to the patterns it replaced, and its speed.

    python bench/pii.py                 # dev and held-out halves, per type, and speed
    python bench/pii.py --split held    # one half only

`fixtures/pii/cases.jsonl` (356 cases written for the project without looking at the code:
220 with personal data, 136 true negatives such as order numbers, tracking codes, versions,
prices and dates) is split in two by a hash of each id. The patterns were developed looking
at the `dev` half only; `held` is the half they never saw, and is the number to quote.

- recall: a labelled item counts as found when every non-space character of it is inside a
  redacted span (of any kind: a phone number taken for a card is still not leaked);
- precision on true negatives: the share of negative cases left untouched;
- precision on spans: the share of redacted spans that overlap a labelled item.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.ingest import pii  # noqa: E402

CASES = Path(__file__).resolve().parent.parent / "fixtures" / "pii" / "cases.jsonl"


# --- the patterns the service used before (app/ingest/pii.py until issue 17), as a baseline ---

_OLD_EMAIL = re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OLD_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_OLD_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_OLD_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){1,4}(?!\w)"
)
_OLD_STREET = (
    "street|st|avenue|ave|road|rd|lane|ln|drive|dr|boulevard|blvd|court|ct|place|pl|square|sq|"
    "terrace|way|close|crescent|highway|hwy|parkway|pkwy"
)
_OLD_ADDRESS = re.compile(
    rf"\b\d{{1,5}}[A-Za-z]?(?:\s+[A-Z][a-zA-Z'-]+){{1,4}}\s+(?i:{_OLD_STREET})\b\.?"
)


def _old_luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _old_iban(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    return int("".join(str(int(ch, 36)) for ch in s[4:] + s[:4])) % 97 == 1


def _old_phone_like(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    if s.startswith("+") or "(" in s:
        return True
    if digits.startswith("0") and 10 <= len(digits) <= 11:
        return True
    return len(re.split(r"[\s.-]", s.strip())) >= 2 and len(digits) >= 9


def old_spans(text: str) -> list[pii.Span]:
    """Where the old patterns replaced text (applied in their order on the shrinking text,
    mapped back by masking with same-length placeholders)."""
    spans: list[pii.Span] = []
    masked = text

    def sub(pattern: re.Pattern[str], tag: str, keep: Callable[[str], bool] | None = None) -> None:
        nonlocal masked

        def repl(m: re.Match[str]) -> str:
            if keep is not None and not keep(m.group(0)):
                return m.group(0)
            spans.append(pii.Span(m.start(), m.end(), tag))
            return "\x00" * (m.end() - m.start())

        masked = pattern.sub(repl, masked)

    sub(_OLD_EMAIL, "EMAIL")
    sub(_OLD_IBAN, "IBAN", _old_iban)
    sub(_OLD_CARD, "CARD", lambda s: _old_luhn(re.sub(r"\D", "", s)))
    sub(_OLD_ADDRESS, "ADDRESS")
    sub(
        _OLD_PHONE,
        "PHONE",
        lambda s: 7 <= len(re.sub(r"\D", "", s)) <= 15 and _old_phone_like(s),
    )
    return sorted(spans, key=lambda s: s.start)


# --- scoring -------------------------------------------------------------------------------------


def split_of(case_id: str) -> str:
    return "dev" if int(hashlib.sha256(case_id.encode()).hexdigest(), 16) % 2 == 0 else "held"


def load(split: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if split is None or split_of(r["id"]) == split]


def _covered(text: str, start: int, end: int, spans: list[pii.Span]) -> bool:
    hit = [False] * (end - start)
    for s in spans:
        for i in range(max(s.start, start), min(s.end, end)):
            hit[i - start] = True
    return all(h or text[start + k].isspace() for k, h in enumerate(hit))


def score(cases: list[dict], finder: Callable[[str], list[pii.Span]]) -> dict:
    items = found = neg = neg_clean = spans_total = spans_true = 0
    per_type: dict[str, list[int]] = {}
    misses: list[str] = []
    false_hits: list[str] = []
    for case in cases:
        text = case["text"]
        spans = finder(text)
        labelled: list[tuple[int, int]] = []
        for item in case["pii"]:
            start = text.index(item["value"])
            end = start + len(item["value"])
            labelled.append((start, end))
            ok = _covered(text, start, end, spans)
            items += 1
            found += ok
            per_type.setdefault(item["type"], [0, 0])
            per_type[item["type"]][0] += ok
            per_type[item["type"]][1] += 1
            if not ok:
                misses.append(f"{case['id']} {item['type']} {item['value']!r}")
        for s in spans:
            spans_total += 1
            if any(s.start < e and st < s.end for st, e in labelled):
                spans_true += 1
            else:
                false_hits.append(f"{case['id']} {s.kind} {text[s.start : s.end]!r}")
        if not case["pii"]:
            neg += 1
            neg_clean += not spans
    return {
        "recall": found / items if items else 0.0,
        "negatives_untouched": neg_clean / neg if neg else 0.0,
        "span_precision": spans_true / spans_total if spans_total else 1.0,
        "items": items,
        "negatives": neg,
        "per_type": {k: f"{v[0]}/{v[1]}" for k, v in sorted(per_type.items())},
        "misses": misses,
        "false_hits": false_hits,
    }


def speed(finder: Callable[[str], list[pii.Span]], texts: list[str], rounds: int = 5) -> float:
    """Mean milliseconds per text."""
    t0 = time.perf_counter()
    for _ in range(rounds):
        for t in texts:
            finder(t)
    return (time.perf_counter() - t0) * 1000 / (rounds * len(texts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--split", choices=["dev", "held", "all"], default=None)
    ap.add_argument("--show", action="store_true", help="list misses and false hits")
    args = ap.parse_args()
    splits = [args.split] if args.split else ["dev", "held", "all"]
    print(
        f"{'split':<5} {'redactor':<14} {'recall':>7} {'neg clean':>9} {'span prec':>9}  per type"
    )
    for split in splits:
        cases = load(None if split == "all" else split)
        for name, finder in (("old patterns", old_spans), ("issuelens", pii.find)):
            r = score(cases, finder)
            print(
                f"{split:<5} {name:<14} {r['recall']:>7.4f} {r['negatives_untouched']:>9.4f} "
                f"{r['span_precision']:>9.4f}  {r['per_type']}  "
                f"({r['items']} items, {r['negatives']} negatives)"
            )
            if args.show and name == "issuelens":
                for line in r["misses"]:
                    print("   miss ", line)
                for line in r["false_hits"]:
                    print("   extra", line)
    texts = [c["text"] for c in load()]
    old_ms, new_ms = speed(old_spans, texts), speed(pii.find, texts)
    print(
        f"speed: old patterns {old_ms:.3f} ms/text, issuelens {new_ms:.3f} ms/text "
        f"(ratio {new_ms / old_ms:.1f}x) over {len(texts)} texts"
    )


if __name__ == "__main__":
    main()
