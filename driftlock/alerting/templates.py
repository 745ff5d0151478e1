"""Notification text from Jinja2 templates in a sandbox (a tenant's template can read the
incident but cannot reach Python internals), with defaults that read well in each medium."""

import functools
from datetime import UTC, datetime
from typing import Any

from jinja2 import Template, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

MAX_OUTPUT = 40_000
"""characters; longer renders are cut (Slack and most mail servers refuse huge bodies)"""

EMAIL_SUBJECT = "[DriftLock {{ change.kind | upper }}] {{ title }}"

EMAIL_BODY = """\
{{ title }}

Status:     {{ incident.status }}{% if incident.flapping %} (flapping: held open){% endif %}
Change:     {{ change.kind }}{% if change.step %} (escalation step {{ change.step }}){% endif %}
Tenant:     {{ incident.tenant }}
Route:      {{ incident.route }}
Group:      {% for k, v in incident.group.items() %}{{ k }}={{ v }} {% endfor %}
Opened:     {{ incident.created_at | datetime }}
Anomalies:  {{ incident.anomaly_count }} on {{ incident.metrics | join(", ") }}

Latest anomalies:
{% for a in anomalies | reverse %}  {{ a.detected_at | datetime }}  {{ a.metric }}  {{ a.kind }}  \
value {{ "%.4g" | format(a.value) }} (expected {{ "%.4g" | format(a.expected[0]) }}..\
{{ "%.4g" | format(a.expected[1]) }})  score {{ "%.2f" | format(a.score) }}
{% endfor %}
{% if links.ack %}Acknowledge: {{ links.ack }}
{% endif %}-- DriftLock incident {{ incident.id }}
"""

EMAIL_HTML = """\
<html><body style="font-family: sans-serif">
<h2 style="margin: 0 0 8px">{{ title }}</h2>
<p><b>{{ change.kind | capitalize }}</b>{% if change.step %} (escalation step {{ change.step }})\
{% endif %} &middot; status <b>{{ incident.status }}</b>{% if incident.flapping %} (flapping: held \
open){% endif %} &middot; route {{ incident.route }} &middot; opened \
{{ incident.created_at | datetime }}</p>
<table cellpadding="4" style="border-collapse: collapse">
<tr style="text-align: left"><th>detected</th><th>metric</th><th>kind</th><th>value</th>\
<th>expected</th><th>score</th></tr>
{% for a in anomalies | reverse %}<tr><td>{{ a.detected_at | datetime }}</td>\
<td>{{ a.metric }}</td><td>{{ a.kind }}</td><td>{{ "%.4g" | format(a.value) }}</td>\
<td>{{ "%.4g" | format(a.expected[0]) }}..{{ "%.4g" | format(a.expected[1]) }}</td>\
<td>{{ "%.2f" | format(a.score) }}</td></tr>
{% endfor %}</table>
{% if links.ack %}<p><a href="{{ links.ack }}">Acknowledge</a></p>{% endif %}
<p style="color: #888">DriftLock incident {{ incident.id }}</p>
</body></html>
"""

SLACK_TEXT = """\
*{{ change.kind | capitalize }}*: {{ title }}
{% for a in anomalies[-5:] | reverse %}• `{{ a.metric }}` {{ a.kind }}: \
{{ "%.4g" | format(a.value) }} (expected {{ "%.4g" | format(a.expected[0]) }}–\
{{ "%.4g" | format(a.expected[1]) }}), score {{ "%.2f" | format(a.score) }}
{% endfor %}"""

WEBHOOK_SUMMARY = "{{ title }}"


def _datetime(ts: float) -> str:
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment(autoescape: bool = False) -> SandboxedEnvironment:
    env = SandboxedEnvironment(autoescape=autoescape, keep_trailing_newline=True)
    env.filters["datetime"] = _datetime
    return env


_ENV = _environment()
_HTML_ENV = _environment(autoescape=True)


@functools.lru_cache(maxsize=512)
def _compiled(source: str, html: bool = False) -> Template:
    """Compiling costs far more than rendering; channels reuse a handful of templates.
    HTML templates escape what they insert."""
    return (_HTML_ENV if html else _ENV).from_string(source)


def syntax_error(source: str) -> str | None:
    """None when the template compiles, else what is wrong and on which line."""
    try:
        _ENV.parse(source)
    except TemplateSyntaxError as exc:
        return f"template syntax error on line {exc.lineno}: {exc.message}"
    return None


def render(source: str | None, default: str, context: dict[str, Any], *, html: bool = False) -> str:
    """The tenant's template, or the default when there is none or it fails at render time
    (a template that compiled can still fail, e.g. dividing by a string): a notification
    with default text beats no notification."""
    for candidate in (source, default):
        if candidate is None:
            continue
        try:
            text = _compiled(candidate, html).render(context)
        except Exception:
            if candidate is default:
                raise
            continue
        return text[:MAX_OUTPUT]
    raise AssertionError("unreachable")


def title(context: dict[str, Any]) -> str:
    inc = context["incident"]
    metrics = inc["metrics"]
    shown = ", ".join(metrics[:3]) + (f" and {len(metrics) - 3} more" if len(metrics) > 3 else "")
    n = inc["anomaly_count"]
    return (
        f"{inc['tenant']}: {shown}: {n} anomal{'y' if n == 1 else 'ies'} "
        f"(max score {inc['max_score']:.2f})"
    )
