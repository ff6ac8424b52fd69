"""The digest as Markdown, as one self-contained HTML page (charts as inline SVG) and as plain
text (the e-mail's text part)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from app.digests.schemas import Digest, DigestCluster, DigestWeek

LABEL_COLOURS = {"UX": "#3b6fd4", "CX": "#d9822b", "none": "#9aa5b1", "mixed": "#8e6bbf"}
UNLABELLED = "#d8dde3"


def pct(value: float | None, signed: bool = False) -> str:
    """A share as a whole percentage (`signed`: with its sign); n/a for none."""
    if value is None:
        return "n/a"
    return f"{value * 100:+.0f}%" if signed else f"{value * 100:.0f}%"


def growth_text(c: DigestCluster) -> str:
    """How this week compares with the 4 weeks before, in words."""
    if c.growth is None:
        return "new volume" if c.count else "-"
    return f"{c.growth:.1f}x its 4-week mean ({c.previous_mean:g}/week)"


def _spark_text(values: list[int]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    top = max(values) or 1
    return "".join(bars[min(len(bars) - 1, round(v / top * (len(bars) - 1)))] for v in values)


# ---- Markdown -----------------------------------------------------------------------------

# Every ASCII punctuation character may be backslash-escaped in CommonMark; these are the ones
# that start emphasis, code, links, images, headings, lists, tables, strikethrough, mentions,
# math or a URL scheme ("javascript:"). <, > and & become entities instead, because renderers
# older than CommonMark (Markdown.pl) pass "\<script>" through as a tag.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~:@^$=])")


def md_text(value: str) -> str:
    """Text from customers or people (titles, quotes, labels, teams) as Markdown that any
    renderer shows as exactly that text: one line, no tags, no links, no emphasis."""
    line = " ".join(value.split())
    return _MD_SPECIAL.sub(r"\\\1", escape(line, quote=False))


def _one_line(value: str) -> str:
    return " ".join(value.split())


@dataclass(frozen=True, slots=True)
class _Style:
    """How the digest's text is written: Markdown, or the plain text of the e-mail."""

    text: Callable[[str], str]  # applied to every string that did not come from this module
    strong: str
    code: str


_MARKDOWN = _Style(text=md_text, strong="**", code="`")
_PLAIN = _Style(text=_one_line, strong="", code="")


def _md_cluster(c: DigestCluster, st: _Style) -> list[str]:
    b, t = st.strong, st.text
    lines = [
        f"{b}{t(c.title or 'untitled')}{b} (#{c.id}) · {t(c.label)} · {t(c.team)} · "
        f"{c.count} this week · {growth_text(c)} · trend {st.code}{_spark_text(c.trend)}"
        f"{st.code} · negative {pct(c.negative_share)}",
    ]
    if c.key_phrases:
        lines.append(f"  key phrases: {', '.join(t(p) for p in c.key_phrases)}")
    for q in c.quotes:
        lines.append(f"  > {t(q.text)} ({t(q.source)}, {q.created_at:%a %d %b})")
    return lines


def _render_lines(d: Digest, st: _Style) -> str:
    h, b, t = d.headline, st.strong, st.text
    scope = f" · team {t(d.team)}" if d.team else ""
    out = [
        f"# Weekly issues digest: {d.week}{scope}",
        "",
        f"{d.start:%d %b %Y} to {d.end:%d %b %Y} (UTC). "
        f"Generated {d.generated_at:%Y-%m-%d %H:%M} UTC.",
        "",
        f"- {b}{h.messages}{b} messages ({pct(h.change, signed=True)} vs "
        f"{h.previous_messages} the week before)",
        f"- {b}{pct(h.negative_share)}{b} negative",
        f"- UX {pct(h.ux_share)} · CX {pct(h.cx_share)} · no problem {pct(h.none_share)}",
        "",
        "| week | messages | UX | CX | none | negative |",
        "|---|---|---|---|---|---|",
    ]
    out += [
        f"| {w.week} | {w.messages} | {w.ux} | {w.cx} | {w.none} | {pct(w.negative_share)} |"
        for w in d.weekly
    ]
    sections = [
        ("Rising", d.rising, "Nothing is growing past its 4-week mean."),
        ("New", d.new, "No new recurring issue."),
        ("Top issues by volume", d.top, "No clustered messages this week."),
        ("Gone quiet", d.quiet, "No issue went quiet."),
    ]
    for title, items, empty in sections:
        out += ["", f"## {title}", ""]
        if not items:
            out.append(f"_{empty}_")
        for c in items:
            out += [f"- {line}" if i == 0 else line for i, line in enumerate(_md_cluster(c, st))]
    by_id = {c.id: c for c in [*d.top, *d.rising, *d.new]}
    if d.teams:
        out += ["", "## By team", ""]
        for team in d.teams:
            names = ", ".join(
                f"{t(by_id[i].title)} ({by_id[i].count})" for i in team.clusters[:8] if i in by_id
            )
            out.append(
                f"- {b}{t(team.team)}{b}: {team.messages} messages in {len(team.clusters)} "
                f"clusters. {names}"
            )
    return "\n".join(out) + "\n"


def render_markdown(d: Digest) -> str:
    """The digest for a chat, a wiki or a repository; text from customers and people is
    escaped, so no renderer turns it into HTML, links or formatting."""
    return _render_lines(d, _MARKDOWN)


def render_text(d: Digest) -> str:
    """Plain text: the e-mail's text part (nothing there is rendered, so nothing is escaped)."""
    return _render_lines(d, _PLAIN)


# ---- HTML with inline SVG -----------------------------------------------------------------


def _svg_weekly(weeks: list[DigestWeek]) -> str:
    width, height, pad = 560, 180, 28
    top = max((w.messages for w in weeks), default=0) or 1
    bar = (width - 2 * pad) / max(len(weeks), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 36}" '
        f'role="img" aria-label="Messages per week by label">'
    ]
    for i, w in enumerate(weeks):
        x = pad + i * bar + 4
        y: float = pad + height - pad
        for value, colour in (
            (w.ux, LABEL_COLOURS["UX"]),
            (w.cx, LABEL_COLOURS["CX"]),
            (w.none, LABEL_COLOURS["none"]),
            (w.unlabelled, UNLABELLED),
        ):
            h = (height - 2 * pad) * value / top
            y -= h
            if value:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 8:.1f}" height="{h:.1f}" '
                    f'fill="{colour}"><title>{escape(w.week)}: {value}</title></rect>'
                )
        parts.append(
            f'<text x="{x + (bar - 8) / 2:.1f}" y="{height + 12}" font-size="10" '
            f'text-anchor="middle" fill="#445">{escape(w.week[-3:])}</text>'
        )
        parts.append(
            f'<text x="{x + (bar - 8) / 2:.1f}" y="{y - 3:.1f}" font-size="10" '
            f'text-anchor="middle" fill="#223">{w.messages}</text>'
        )
    legend_x = pad
    for name, colour in (
        ("UX", LABEL_COLOURS["UX"]),
        ("CX", LABEL_COLOURS["CX"]),
        ("no problem", LABEL_COLOURS["none"]),
        ("not analysed", UNLABELLED),
    ):
        parts.append(
            f'<rect x="{legend_x}" y="{height + 22}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{height + 31}" font-size="11" fill="#334">{name}</text>'
        )
        legend_x += 110
    parts.append("</svg>")
    return "".join(parts)


def _svg_sentiment(weeks: list[DigestWeek]) -> str:
    width, height, pad = 560, 140, 28
    points = [
        (pad + i * (width - 2 * pad) / max(len(weeks) - 1, 1), w.negative_share)
        for i, w in enumerate(weeks)
    ]
    known = [(x, v) for x, v in points if v is not None]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="Share of negative messages per week">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#ccd"/>',
    ]
    if known:
        coords = " ".join(f"{x:.1f},{height - pad - v * (height - 2 * pad):.1f}" for x, v in known)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="#c0392b" stroke-width="2"/>')
        for (x, v), w in zip(
            known, [w for w in weeks if w.negative_share is not None], strict=True
        ):
            y = height - pad - v * (height - 2 * pad)
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#c0392b">'
                f"<title>{escape(w.week)}: {pct(v)} negative</title></circle>"
                f'<text x="{x:.1f}" y="{y - 6:.1f}" font-size="10" text-anchor="middle" '
                f'fill="#622">{pct(v)}</text>'
            )
    for i, w in enumerate(weeks):
        x = pad + i * (width - 2 * pad) / max(len(weeks) - 1, 1)
        parts.append(
            f'<text x="{x:.1f}" y="{height - 10}" font-size="10" text-anchor="middle" '
            f'fill="#445">{escape(w.week[-3:])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _svg_top(clusters: list[DigestCluster]) -> str:
    rows = clusters[:8]
    width, row_h, label_w = 560, 22, 240
    height = max(len(rows), 1) * row_h + 10
    top = max((c.count for c in rows), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="Largest clusters this week">'
    ]
    for i, c in enumerate(rows):
        y = 5 + i * row_h
        w = (width - label_w - 40) * c.count / top
        title = (c.title or "untitled")[:34]
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" font-size="11" text-anchor="end" '
            f'fill="#223">{escape(title)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
            f'fill="{LABEL_COLOURS.get(c.label, "#999")}"><title>{escape(c.label)}</title></rect>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" font-size="11" fill="#223">'
            f"{c.count}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def sparkline_svg(values: list[int], colour: str = "#3b6fd4") -> str:
    """A small inline trend line of weekly counts."""
    width, height = 96, 22
    top = max(values, default=0) or 1
    step = width / max(len(values) - 1, 1)
    coords = " ".join(
        f"{i * step:.1f},{height - 2 - v / top * (height - 4):.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="weekly trend {", ".join(map(str, values))}">'
        f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.6"/></svg>'
    )


def _html_cluster(c: DigestCluster, link: str | None) -> str:
    colour = LABEL_COLOURS.get(c.label, "#999")
    title = escape(c.title or "untitled")
    if link:
        title = f'<a href="{escape(link)}/clusters/{c.id}">{title}</a>'
    quotes = "".join(
        f'<blockquote>{escape(q.text)} <span class="meta">{escape(q.source)}, '
        f"{q.created_at:%a %d %b}</span></blockquote>"
        for q in c.quotes
    )
    phrases = escape(", ".join(c.key_phrases))
    return (
        '<tr class="cluster"><td>'
        f'<div class="title">{title} <span class="id">#{c.id}</span></div>'
        f'<div class="meta"><span class="badge" style="background:{colour}">'
        f"{escape(c.label)}</span> "
        f"{escape(c.team)} · {phrases}</div>{quotes}</td>"
        f'<td class="num"><b>{c.count}</b><div class="meta">{escape(growth_text(c))}</div></td>'
        f"<td>{sparkline_svg(c.trend, colour)}</td>"
        f'<td class="num">{pct(c.negative_share)}</td></tr>'
    )


def _html_section(title: str, clusters: list[DigestCluster], empty: str, link: str | None) -> str:
    if not clusters:
        return f'<h2>{escape(title)}</h2><p class="empty">{escape(empty)}</p>'
    rows = "".join(_html_cluster(c, link) for c in clusters)
    return (
        f"<h2>{escape(title)}</h2><table><thead><tr><th>issue</th><th>this week</th>"
        f"<th>8 weeks</th><th>negative</th></tr></thead><tbody>{rows}</tbody></table>"
    )


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#1d2733;
max-width:860px;margin:24px auto;padding:0 16px;line-height:1.4}
h1{font-size:22px;margin-bottom:4px}
h2{font-size:17px;margin-top:28px;border-bottom:1px solid #e3e7ec;padding-bottom:4px}
.sub{color:#5b6775;font-size:13px}
.kpis{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.kpi{border:1px solid #e3e7ec;border-radius:6px;padding:10px 14px;min-width:150px}
.kpi b{font-size:22px;display:block}
table{border-collapse:collapse;width:100%}th{text-align:left;font-size:12px;color:#5b6775;
border-bottom:1px solid #e3e7ec;padding:4px}td{vertical-align:top;padding:8px 4px;
border-bottom:1px solid #f0f2f5}.num{text-align:right;white-space:nowrap}
.title{font-weight:600}.id{color:#8a96a3;font-weight:400;font-size:12px}
.meta{color:#5b6775;font-size:12px}.badge{color:#fff;border-radius:3px;padding:0 5px;font-size:11px}
blockquote{margin:6px 0 0 0;padding:2px 8px;border-left:3px solid #dfe4ea;font-size:13px;color:#334}
.empty{color:#7b8794;font-style:italic}a{color:#2a5bb8}
"""


def render_html(d: Digest, *, link: str | None = None) -> str:
    """One self-contained page (inline CSS and SVG, no scripts) for a browser or an e-mail."""
    h = d.headline
    scope = f" · team {escape(d.team)}" if d.team else ""
    kpis = (
        f'<div class="kpi"><b>{h.messages}</b>messages ({pct(h.change, signed=True)} vs '
        f"{h.previous_messages})</div>"
        f'<div class="kpi"><b>{pct(h.negative_share)}</b>negative</div>'
        f'<div class="kpi"><b>{pct(h.ux_share)} / {pct(h.cx_share)}</b>UX / CX '
        f"(no problem {pct(h.none_share)})</div>"
        f'<div class="kpi"><b>{len(d.rising)} / {len(d.new)}</b>rising / new issues</div>'
    )
    by_id = {c.id: c for c in [*d.top, *d.rising, *d.new]}
    teams = "".join(
        f"<tr><td><b>{escape(t.team)}</b></td><td class='num'>{t.messages}</td><td>"
        + escape(
            ", ".join(f"{by_id[i].title} ({by_id[i].count})" for i in t.clusters[:8] if i in by_id)
        )
        + "</td></tr>"
        for t in d.teams
    )
    body = (
        f"<h1>Weekly issues digest: {escape(d.week)}{scope}</h1>"
        f'<div class="sub">{d.start:%d %b %Y} to {d.end:%d %b %Y} (UTC) · generated '
        f"{d.generated_at:%Y-%m-%d %H:%M} UTC</div>"
        f'<div class="kpis">{kpis}</div>'
        f"<h2>Messages per week</h2>{_svg_weekly(d.weekly)}"
        f"<h2>Share negative</h2>{_svg_sentiment(d.weekly)}"
        f"<h2>Largest issues this week</h2>{_svg_top(d.top)}"
        + _html_section("Rising", d.rising, "Nothing is growing past its 4-week mean.", link)
        + _html_section("New", d.new, "No new recurring issue.", link)
        + _html_section("Top issues by volume", d.top, "No clustered messages this week.", link)
        + _html_section("Gone quiet", d.quiet, "No issue went quiet.", link)
        + (
            "<h2>By team</h2><table><thead><tr><th>team</th><th>messages</th><th>issues</th>"
            f"</tr></thead><tbody>{teams}</tbody></table>"
            if d.teams
            else ""
        )
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Issues digest {escape(d.week)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>"
    )
