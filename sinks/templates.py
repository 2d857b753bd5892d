"""Rendering a DeliveryRequest for a channel: Jinja2 templates in a sandbox, then the channel's limits.

Which template: for each part a channel needs (email: ``subject``, ``text``, ``html``; push: ``title``,
``body``; SMS: ``body``) the first file found of ``<channel>/<name>[.<locale>].<part>.j2`` with ``<name>`` in
``<TYPE>.<KIND>``, ``<TYPE>``, ``default.<KIND>``, ``default`` and the locale tried as given (``pt-BR``),
then its language (``pt``), then none. ``HERALD_TEMPLATES_DIR`` is searched before the shipped
``sinks/templates``, so a file there overrides one of ours of the same name. A locale that is not a plain
BCP 47 tag is ignored (it never reaches a file path).

The environment is Jinja2's ``SandboxedEnvironment``; files ending ``.html.j2`` are autoescaped. Text the
producer wrote has its control characters removed (tab and newline stay), so a stray byte can neither
break a header nor reach a phone. Any error while rendering is a ``PermanentError('TEMPLATE', ...)``: the
request fails, the sink goes on.

Limits, applied after rendering and cut honestly (an ellipsis marks a cut): an email subject is one line of
at most 200 characters; a push title 100 and body 1,000 characters; an SMS one segment: 160 GSM-7 septets
(the extension characters count two) or, with any other character, 70 UCS-2 code units.

Variables: the request's fields (``title``, ``body``, ``type``, ``kind``, ``priority``, ``data``,
``event_ids``, ``user_id``, ``delivery_id``, ``created_at``), ``locale``, and ``groups``: for a digest or
batch the items grouped by type, each ``{"type", "name", "items": [{"title", "url"}], "line"}``, from
``data`` keys ``item.<n>.type``, ``item.<n>.title``, ``item.<n>.action_url`` when the pipeline gives them,
else one group per line of the body.
"""
from __future__ import annotations

import re
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from sinks.provider import PermanentError

SHIPPED = Path(__file__).resolve().parent / "templates"
PARTS = {"EMAIL": ("subject", "text", "html"), "PUSH": ("title", "body"), "SMS": ("body",)}
_LOCALE = re.compile(r"^[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

GSM7 = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
           "¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXT = set("^{}\\[~]|€\f")


def clean(text: str) -> str:
    """``text`` without control characters other than tab and newline."""
    return _CONTROL.sub("", text)


def cut(text: str, limit: int, ellipsis: str = "…") -> str:
    return text if len(text) <= limit else text[: max(limit - len(ellipsis), 0)] + ellipsis


def sms_segment(text: str) -> str:
    """``text`` cut to one SMS segment: 160 GSM-7 septets, or 70 UCS-2 code units when any character is
    outside GSM-7. A cut ends in "..." (GSM-7) or "…" (UCS-2)."""
    if all(c in GSM7 or c in GSM7_EXT for c in text):
        size = lambda s: sum(2 if c in GSM7_EXT else 1 for c in s)  # noqa: E731
        if size(text) <= 160:
            return text
        out, used = [], 0
        for c in text:
            w = 2 if c in GSM7_EXT else 1
            if used + w > 157:
                break
            out.append(c)
            used += w
        return "".join(out) + "..."
    units = lambda s: sum(2 if ord(c) > 0xFFFF else 1 for c in s)  # noqa: E731
    if units(text) <= 70:
        return text
    out, used = [], 0
    for c in text:
        w = 2 if ord(c) > 0xFFFF else 1
        if used + w > 69:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


def groups_of(request: dict) -> list[dict]:
    data = request.get("data") or {}
    items: dict[int, dict] = {}
    for key, value in data.items():
        if key.startswith("item."):
            parts = key.split(".", 2)
            if len(parts) == 3 and parts[1].isdigit():
                items.setdefault(int(parts[1]), {})[parts[2]] = clean(value)
    if items:
        groups: dict[str, dict] = {}
        for n in sorted(items):
            it = items[n]
            t = it.get("type") or request.get("type") or ""
            g = groups.setdefault(t, {"type": t, "name": t.replace("_", " ").capitalize(), "items": [], "line": ""})
            g["items"].append({"title": it.get("title", ""), "url": it.get("action_url")})
        for g in groups.values():  # a digest says how many of each type it holds; the items may be fewer
            g["line"] = f"{g['name']} ({data.get('count.' + g['type'], len(g['items']))})"
        return list(groups.values())
    return [{"type": "", "name": line, "items": [], "line": line}
            for line in clean(request.get("body") or "").splitlines() if line.strip()]


class Templates:
    def __init__(self, override_dir: str | None = None) -> None:
        paths = [str(Path(override_dir))] if override_dir else []
        self.env = SandboxedEnvironment(loader=jinja2.FileSystemLoader(paths + [str(SHIPPED)]),
                                        autoescape=lambda name: bool(name) and name.endswith(".html.j2"),
                                        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
        self._cache: dict[tuple, jinja2.Template] = {}

    def _find(self, channel: str, type_: str, kind: str, locale: str | None, part: str) -> jinja2.Template:
        key = (channel, type_, kind, locale, part)
        found = self._cache.get(key)
        if found is not None:
            return found
        locales: list[str | None] = []
        if locale and _LOCALE.match(locale):
            locales.append(locale)
            lang = re.split(r"[-_]", locale)[0]
            if lang != locale:
                locales.append(lang)
        locales.append(None)
        safe_type = type_ if re.match(r"^[A-Za-z0-9_\-]+$", type_ or "") else "_"
        names = [f"{safe_type}.{kind}", safe_type, f"default.{kind}", "default"]
        candidates = [f"{channel.lower()}/{n}{'.' + loc if loc else ''}.{part}.j2" for n in names for loc in locales]
        template = self.env.select_template(candidates)
        self._cache[key] = template
        return template

    def render(self, channel: str, request: dict, contact: dict | None) -> dict[str, str]:
        """The channel's parts for ``request``, limits applied; raises ``PermanentError('TEMPLATE', ...)``."""
        locale = (contact or {}).get("locale")
        ctx = {k: (clean(v) if isinstance(v, str) else v) for k, v in request.items()}
        ctx["data"] = {k: clean(v) for k, v in (request.get("data") or {}).items()}
        ctx["locale"] = locale
        ctx["groups"] = groups_of(request)
        out: dict[str, str] = {}
        try:
            for part in PARTS[channel]:
                out[part] = self._find(channel, request.get("type") or "", request.get("kind") or "SINGLE",
                                       locale, part).render(ctx)
        except PermanentError:
            raise
        except Exception as exc:  # noqa: BLE001 - a template's mistake fails this request, never the sink
            raise PermanentError("TEMPLATE", f"{type(exc).__name__}: {exc}"[:300]) from None
        if channel == "EMAIL":
            out["subject"] = cut(" ".join(out["subject"].split()), 200)
            out["text"] = clean(out["text"]).strip() + "\n"
        elif channel == "PUSH":
            out["title"] = cut(" ".join(out["title"].split()), 100)
            out["body"] = cut(clean(out["body"]).strip(), 1000)
        elif channel == "SMS":
            out["body"] = sms_segment(clean(out["body"]).strip())
        return out
