"""The report as pages: HTML (jinja2, every value escaped) and markdown."""

from __future__ import annotations

import datetime

from .model import Report, Table, fmt

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Tally benchmarks</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.num { text-align: right; }
th { background: #f2f2f2; }
caption { caption-side: top; text-align: left; color: #555; padding-bottom: 0.3em; }
figure { margin: 1em 0 0.3em; } img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
.missing { background: #fff6e0; padding: 0.5em 0.8em; border-left: 4px solid #e0a000; }
.problem { color: #a00; } .sources { color: #666; font-size: 0.85em; }
</style>
</head>
<body>
{%- macro render_table(t) %}
<table>
{%- if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
<tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{%- for row in t.rows %}
<tr>{% for v in row %}<td{% if t.numeric(loop.index0) %} class="num"{% endif %}>{{ v | fmt }}</td>{% endfor %}</tr>
{%- endfor %}
</table>
{%- endmacro %}
<h1>Tally benchmarks</h1>
<p>From <code>{{ report.folder }}</code>, rendered {{ now }}.</p>
<ul>
{%- for s in report.sections %}
<li><a href="#{{ s.name }}">{{ s.benchmark.title }}</a>{% if s.missing %} (not run yet){% endif %}</li>
{%- endfor %}
</ul>
{%- for s in report.sections %}
<section id="{{ s.name }}">
<h2>{{ s.benchmark.title }}</h2>
<p>{{ s.benchmark.about }}</p>
{%- if s.missing %}
{%- if s.unreadable %}
<p class="missing"><code>{{ s.missing }}</code> could not be read:
run <code>{{ s.command }}</code> to write it again.</p>
{%- else %}
<p class="missing">No <code>{{ s.missing }}</code> yet: run <code>{{ s.command }}</code> to write it.</p>
{%- endif %}
{%- endif %}
{%- for p in s.problems %}
<p class="problem">{{ p }}</p>
{%- endfor %}
{%- if s.sources %}
<p class="sources">From
{%- for path, when in s.sources %} <code>{{ path }}</code> ({{ when }}){% if not loop.last %},{% endif %}{% endfor %}</p>
{%- endif %}
{%- for n in s.notes %}
<p>{{ n }}</p>
{%- endfor %}
{%- for f in s.figures %}
<figure><img src="{{ f.file }}" alt="{{ f.caption }}"><figcaption>{{ f.caption }}</figcaption></figure>
{%- if f.table %}{{ render_table(f.table) }}{% endif %}
{%- endfor %}
{%- for t in s.tables %}{{ render_table(t) }}{% endfor %}
{%- for f in s.pictures %}
<figure><img src="{{ f.file }}" alt="{{ f.caption }}"><figcaption>{{ f.caption }}</figcaption></figure>
{%- endfor %}
</section>
{%- endfor %}
</body>
</html>
"""


def render_html(report: Report) -> str:
    """The page, every value escaped (jinja2's autoescape)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    return env.from_string(HTML).render(report=report, now=_now())


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def _markdown_table(t: Table) -> list[str]:
    def cell(v) -> str:
        return fmt(v).replace("|", "\\|").replace("\n", " ")

    lines = [f"*{t.caption}*", ""] if t.caption else []
    lines += ["| " + " | ".join(cell(c) for c in t.columns) + " |",
              "|" + "|".join("---:" if t.numeric(i) else "---" for i in range(len(t.columns))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in t.rows]
    return lines + [""]


def render_markdown(report: Report) -> str:
    lines = ["# Tally benchmarks", "", f"From `{report.folder}`, rendered {_now()}.", ""]
    for s in report.sections:
        lines += [f"## {s.benchmark.title}", "", s.benchmark.about, ""]
        if s.missing and s.unreadable:
            lines += [f"`{s.missing}` could not be read: run `{s.command}` to write it again.", ""]
        elif s.missing:
            lines += [f"No `{s.missing}` yet: run `{s.command}` to write it.", ""]
        lines += [f"**Problem:** {p}\n" for p in s.problems]
        if s.sources:
            lines += ["From " + ", ".join(f"`{path}` ({when})" for path, when in s.sources), ""]
        lines += [f"{n}\n" for n in s.notes]
        for f in s.figures:
            lines += [f"![{f.caption}]({f.file})", "", f"*{f.caption}*", ""]
            lines += _markdown_table(f.table) if f.table else []
        for t in s.tables:
            lines += _markdown_table(t)
        for f in s.pictures:
            lines += [f"![{f.caption}]({f.file})", ""]
    return "\n".join(lines)
