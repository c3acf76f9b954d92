"""The overview's figures: volumes, deny rates and unknown-NIN rates per administration over 24 hours and
7 days, from the index's hourly counts (`audit_rollup`), never from the events themselves. The
arithmetic is pure (`summarise`); the charts are pygal's, rendered on the server as SVG with no script.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pygal
from pygal.style import Style
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.console.alerts import CHECKS, UNKNOWN
from gateway.storage.tables import audit_rollup

HOUR_FORMAT = "%Y-%m-%dT%H"


@dataclass
class Rates:
    events: int = 0
    denied: int = 0
    checks: int = 0
    unknown: int = 0

    @property
    def deny_rate(self) -> float:
        return self.denied / self.events if self.events else 0.0

    @property
    def unknown_rate(self) -> float:
        return self.unknown / self.checks if self.checks else 0.0


@dataclass
class Overview:
    hours: list[str]  # the last 24 hours, oldest first (YYYY-MM-DDTHH)
    days: list[str]  # the last 7 days, oldest first (YYYY-MM-DD)
    hourly: dict[str, list[int]] = field(default_factory=dict)  # administration: events per hour
    daily: dict[str, list[int]] = field(default_factory=dict)
    day: dict[str, Rates] = field(default_factory=dict)  # administration: the last 24 hours
    week: dict[str, Rates] = field(default_factory=dict)


async def rollup_rows(
    engine: AsyncEngine, since_hour: str, administration: str | None, hidden_prefix: str | None
) -> list[tuple[str, str, int, int, int, int]]:
    """(hour, administration, events, denied, checks, unknown) since an hour, summed over origins,
    operations and reasons in the database: a few thousand rows for a week, whatever the traffic."""
    r = audit_rollup.c
    checks = r.operation.in_(sorted(CHECKS))
    query = (
        select(
            r.hour,
            r.administration,
            func.sum(r.count),
            func.sum(case((r.decision == "deny", r.count), else_=0)),
            func.sum(case((checks, r.count), else_=0)),
            func.sum(case((checks & r.reason.in_(sorted(UNKNOWN)), r.count), else_=0)),
        )
        .where(r.hour >= since_hour)
        .group_by(r.hour, r.administration)
    )
    if administration is not None:
        query = query.where(r.administration == administration)
    if hidden_prefix is not None:
        query = query.where(r.operation.not_like(hidden_prefix.replace("_", "\\_") + "%", escape="\\"))
    async with engine.connect() as connection:
        return [
            (row[0], row[1], int(row[2]), int(row[3]), int(row[4]), int(row[5]))
            for row in await connection.execute(query)
        ]


def window_start(now: datetime) -> str:
    """The first hour the overview reads: 7 days of hours, this one included."""
    return (now - timedelta(hours=7 * 24 - 1)).strftime(HOUR_FORMAT)


def summarise(rows: Iterable[Sequence[Any]], now: datetime) -> Overview:
    now = now.astimezone(UTC)
    hours = [(now - timedelta(hours=23 - i)).strftime(HOUR_FORMAT) for i in range(24)]
    days = [(now - timedelta(days=6 - i)).strftime("%Y-%m-%d") for i in range(7)]
    hour_at = {hour: i for i, hour in enumerate(hours)}
    day_at = {day: i for i, day in enumerate(days)}
    view = Overview(hours, days)
    hourly: dict[str, list[int]] = defaultdict(lambda: [0] * 24)
    daily: dict[str, list[int]] = defaultdict(lambda: [0] * 7)
    for hour, administration, events, denied, checks, unknown in rows:
        name = administration or "—"
        day_i = day_at.get(hour[:10])
        if day_i is None:
            continue
        daily[name][day_i] += events
        in_day = hour in hour_at
        if in_day:
            hourly[name][hour_at[hour]] += events
        for rates, counted in ((view.week, True), (view.day, in_day)):
            if counted:
                figures = rates.setdefault(name, Rates())
                figures.events += events
                figures.denied += denied
                figures.checks += checks
                figures.unknown += unknown
    view.hourly = dict(sorted(hourly.items()))
    view.daily = dict(sorted(daily.items()))
    view.day = dict(sorted(view.day.items()))
    view.week = dict(sorted(view.week.items()))
    return view


# High contrast, the page's own font, no web fonts or scripts fetched from anywhere.
_STYLE = Style(
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#1a1a1a",
    foreground_strong="#000000",
    foreground_subtle="#4a4a4a",
    font_family="system-ui, sans-serif",
    colors=("#0b5394", "#b45f06", "#38761d", "#741b47", "#134f5c", "#990000", "#7f6000", "#351c75"),
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
    title_font_size=14,
)


def _config(title: str, labels: list[str]) -> dict[str, Any]:
    return {
        "js": [],
        "disable_xml_declaration": True,
        "style": _STYLE,
        "title": title,
        "x_labels": labels,
        "width": 640,
        "height": 300,
        "explicit_size": False,
        "show_legend": True,
        "legend_at_bottom": True,
        "legend_at_bottom_columns": 4,
        "truncate_legend": 30,
        "x_label_rotation": 0,
        "print_values": False,
    }


def volume_chart(title: str, labels: list[str], series: dict[str, list[int]], *, area: bool = False) -> str:
    """Stacked volumes per administration: bars, or an area (a quarter of the SVG for 24 points a series)."""
    chart = (
        pygal.StackedLine(**_config(title, labels), fill=True, show_dots=False)
        if area
        else pygal.StackedBar(**_config(title, labels))
    )
    for name, values in series.items():
        chart.add(name, values)
    return _svg(chart)


def rates_chart(title: str, day: dict[str, Rates], week: dict[str, Rates], rate: str, labels: tuple[str, str]) -> str:
    names = sorted(set(day) | set(week))
    chart = pygal.Bar(**{**_config(title, names), "range": (0, 100)}, value_formatter=lambda v: f"{v:.1f} %")
    chart.add(labels[0], [round(100 * getattr(day.get(n, Rates()), rate), 2) for n in names])
    chart.add(labels[1], [round(100 * getattr(week.get(n, Rates()), rate), 2) for n in names])
    return _svg(chart)


def _svg(chart: Any) -> str:
    """The chart as inline SVG, labelled for screen readers by its title (a table beside it holds the
    same figures)."""
    svg: str = _SCRIPT.sub("", _COMMENT.sub("", chart.render(is_unicode=True)))  # pygal's inline config script
    title = chart.config.title or ""
    return svg.replace("<svg ", f'<svg role="img" aria-label="{_escape(title)}" focusable="false" ', 1)


_SCRIPT = re.compile(r"<script\b.*?</script>", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
