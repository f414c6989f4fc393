"""What a notification says: the webhook bodies (json, Slack, Teams, Google Chat, Mattermost)
and the mail's subject and text, all from one AlertMessage."""

from __future__ import annotations

import datetime as dt
from typing import Any

from central_sync.alert_rules import AlertMessage

SENDER_NAME = "central-sync"
# Teams and Slack colour their cards by these; unknown values fall back to the default.
_TEAMS_COLOUR = {"critical": "attention", "warning": "warning", "info": "accent"}
_SLACK_ICON = {"critical": ":red_circle:", "warning": ":large_orange_circle:",
               "info": ":large_blue_circle:"}
_MAX_DEVICES_LISTED = 20
MAX_SUBJECT_CHARS = 200


def _one_line(text: str) -> str:
    return " ".join(text.split())


def headline(message: AlertMessage) -> str:
    """`[CRITICAL] summary`, `[RESOLVED] summary` or `[TEST] summary`: the mail's subject and
    the first line everywhere."""
    tag = {"resolved": "RESOLVED", "test": "TEST"}.get(message.event, message.severity.upper())
    return f"[{tag}] {_one_line(message.summary)}"


def when(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def facts(message: AlertMessage) -> list[tuple[str, str]]:
    """(name, value) pairs every template shows, in this order."""
    devices = message.devices[:_MAX_DEVICES_LISTED]
    more = len(message.devices) - len(devices)
    rows = [("Severity", message.severity), ("Rule", f"{message.rule} ({message.kind})"),
            ("Devices", ", ".join(devices) + (f" and {more} more" if more else "") or "-"),
            ("Value", f"{_number(message.value)} (threshold {_number(message.threshold)})"),
            ("Fired", when(message.fired_at))]
    if message.resolved_at is not None:
        rows.append(("Resolved", when(message.resolved_at)))
    rows += [(name.capitalize(), value) for name, value in sorted(message.labels.items())]
    rows.append(("Central", message.central_id))
    return rows


def mail_subject(message: AlertMessage) -> str:
    subject = headline(message)
    return subject if len(subject) <= MAX_SUBJECT_CHARS else \
        subject[:MAX_SUBJECT_CHARS - 1] + "…"


def mail_text(message: AlertMessage) -> str:
    lines = [headline(message), ""]
    lines += [f"{name}: {value}" for name, value in facts(message)]
    if message.url:
        lines += ["", f"Open in central: {message.url}"]
    lines += ["", f"Alert {message.alert_id}, sent by {SENDER_NAME} at {when(message.sent_at)}."]
    return "\n".join(lines) + "\n"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def google_chat(message: AlertMessage) -> dict[str, Any]:
    lines = [f"*{headline(message)}*", *(f"{name}: {value}" for name, value in facts(message))]
    if message.url:
        lines.append(f"<{message.url}|Open in central>")
    return {"text": "\n".join(lines)}


def mattermost(message: AlertMessage) -> dict[str, Any]:
    lines = [f"**{headline(message)}**",
             *(f"{name}: {value}" for name, value in facts(message))]
    if message.url:
        lines.append(f"[Open in central]({message.url})")
    return {"text": "\n".join(lines), "username": SENDER_NAME}


def slack(message: AlertMessage) -> dict[str, Any]:
    title = f"{_SLACK_ICON.get(message.severity, '')} *{_slack_escape(headline(message))}*"
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{_slack_escape(value)}"}
              for name, value in facts(message)][:10]  # Slack takes at most 10 fields
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": title.strip()}},
        {"type": "section", "fields": fields}]
    if message.url:
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "text": {"type": "plain_text", "text": "Open in central"},
            "url": message.url}]})
    return {"text": headline(message), "blocks": blocks}


def teams(message: AlertMessage) -> dict[str, Any]:
    colour = "good" if message.event == "resolved" else _TEAMS_COLOUR.get(message.severity)
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard", "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": headline(message), "weight": "bolder",
             "size": "medium", "wrap": True, "color": colour},
            {"type": "FactSet", "facts": [{"title": name, "value": value}
                                          for name, value in facts(message)]}]}
    if message.url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in central",
                            "url": message.url}]
    return {"type": "message", "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
        "content": card}]}


def webhook_body(template: str, message: AlertMessage) -> dict[str, Any]:
    """The JSON body a webhook route of `template` POSTs."""
    if template == "json":
        return message.model_dump(mode="json")
    if template == "slack":
        return slack(message)
    if template == "teams":
        return teams(message)
    if template == "google_chat":
        return google_chat(message)
    if template == "mattermost":
        return mattermost(message)
    raise ValueError(f"unknown webhook template {template!r}: use json, slack, teams, "
                     "google_chat or mattermost")
