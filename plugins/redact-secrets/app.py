"""redact-secrets: redacts secrets from HTTP responses before the client sees them.

Because flowgate records the flow after the plugins ran, the recorded flow is redacted
too. What is replaced:

* In bodies of text-ish responses (content-type containing json, text/, javascript, xml
  or x-www-form-urlencoded, and no content-encoding):
  - the string value of JSON keys named token, access_token, refresh_token, password,
    secret, api_key, apikey, authorization (plus `extra_keys`) becomes "[REDACTED]".
    Key names match case-insensitively and ignoring `_` and `-`, so accessToken,
    ACCESS-TOKEN and access_token are all the same key. In form-urlencoded bodies the
    same names are redacted as `key=[REDACTED]`.
  - `Bearer <token>` becomes `Bearer [REDACTED]`.
  - AWS access key ids (AKIA followed by 16 upper-case letters or digits) become
    "[REDACTED]".
* In Set-Cookie response headers the cookie name and attributes stay, the value becomes
  "[REDACTED]" (cookies with an empty value, i.e. deletions, are left alone).

The number of replacements goes into flow metadata `redacted` (for every response the
plugin inspected, so "0" means "checked, nothing found") and, when it is above zero,
into a response header `x-redacted: N`.

Config:
  extra_keys  comma-separated extra JSON key names to redact (default: none)
  cookies     "true" (default) or "false": whether to redact Set-Cookie values
"""

import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, log, types

CONTINUE = types.Verdict_Continue()
REDACTED = "[REDACTED]"
BUILTIN_KEYS = [
    "token", "access_token", "refresh_token", "password", "secret",
    "api_key", "apikey", "authorization",
]
TEXT_TYPES = ("json", "text/", "javascript", "xml", "x-www-form-urlencoded")

# Compiled once, at build time: componentize-py snapshots the module after import.
BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
AWS_KEY_ID = re.compile(r"(?<![A-Z0-9])AKIA[0-9A-Z]{16}(?![A-Z0-9])")
# "key" : "value" -- the key group is checked against the configured names in code.
JSON_PAIR = re.compile(r'("((?:[^"\\]|\\.)*)"\s*:\s*")((?:[^"\\]|\\.)*)(")')
FORM_PAIR = re.compile(r"(^|[&?])([^=&\s]+)=([^&\s]*)")


def normalize(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def log_at(level, message: str) -> None:
    log.log(level, message)


class Settings:
    """The plugin's config, read lazily (this world has no configure hook)."""

    def __init__(self) -> None:
        extra = config.get("extra_keys") or ""
        self.keys = {normalize(k) for k in BUILTIN_KEYS}
        self.keys |= {normalize(k.strip()) for k in extra.split(",") if k.strip()}
        raw = (config.get("cookies") or "true").strip().lower()
        if raw not in ("true", "false"):
            log_at(log.Level.ERROR, f"cookies = {raw!r}: expected \"true\" or \"false\"; using true")
        self.cookies = raw != "false"
        self.source = (extra, raw)


_settings = None


def settings() -> Settings:
    global _settings
    current = (config.get("extra_keys") or "", (config.get("cookies") or "true").strip().lower())
    if _settings is None or _settings.source != current:
        _settings = Settings()
    return _settings


def redact_text(text: str, s: Settings, form: bool):
    """Returns (redacted text, number of replacements)."""
    count = 0

    def json_value(m: re.Match) -> str:
        nonlocal count
        if normalize(m.group(2)) not in s.keys or m.group(3) in ("", REDACTED):
            return m.group(0)
        count += 1
        return m.group(1) + REDACTED + m.group(4)

    def form_value(m: re.Match) -> str:
        nonlocal count
        if normalize(m.group(2)) not in s.keys or m.group(3) in ("", REDACTED):
            return m.group(0)
        count += 1
        return f"{m.group(1)}{m.group(2)}={REDACTED}"

    text = JSON_PAIR.sub(json_value, text)
    if form:
        text = FORM_PAIR.sub(form_value, text)
    text, n = BEARER.subn(lambda m: f"{m.group(1)} {REDACTED}", text)
    count += n
    text, n = AWS_KEY_ID.subn(REDACTED, text)
    count += n
    return text, count


def redact_cookie(value: str):
    """`name=value; attrs` -> `name=[REDACTED]; attrs`; returns (value, replaced?)."""
    pair, sep, attrs = value.partition(";")
    name, eq, cookie = pair.partition("=")
    if not eq or cookie.strip() in ("", REDACTED, f'"{REDACTED}"'):
        return value, False
    return f"{name.strip()}={REDACTED}{sep}{attrs}", True


def record(flow, response, count: int) -> None:
    """Stores the running total in the flow's metadata and, if above zero, a header."""
    try:
        flow.set_metadata("redacted", str(count))
        if count > 0:
            response.set_header("x-redacted", str(count))
    except Err as e:
        log_at(log.Level.ERROR, f"cannot record the redaction count: {e.value}")


def previous_count(flow) -> int:
    try:
        return int(flow.get_metadata("redacted") or "0")
    except ValueError:
        return 0


def is_text(response) -> bool:
    content_type = ",".join(response.get_header("content-type")).lower()
    encoding = ",".join(response.get_header("content-encoding")).strip().lower()
    return any(t in content_type for t in TEXT_TYPES) and encoding in ("", "identity")


class Http(exports.Http):
    def request_headers(self, flow, request):
        return CONTINUE

    def request_body_chunk(self, flow, request, chunk, end_of_stream):
        return chunk

    def request(self, flow, request):
        return CONTINUE

    def response_headers(self, flow, request, response):
        s = settings()
        # Set-Cookie values are redacted here, as soon as the headers arrive.
        if s.cookies and response.has_header("set-cookie"):
            count = 0
            fields = []
            for field in response.headers():
                if field.name.lower() == "set-cookie":
                    value, replaced = redact_cookie(field.value)
                    count += replaced
                    field = types.Header(name=field.name, value=value)
                fields.append(field)
            if count:
                try:
                    response.set_headers(fields)
                except Err as e:
                    log_at(log.Level.ERROR, f"cannot rewrite Set-Cookie: {e.value}")
                    count = 0
            record(flow, response, count)
        # The body is redacted in the `response` hook, once it is buffered.
        if is_text(response):
            try:
                response.set_body_mode(types.BodyMode.BUFFER)
            except Err as e:
                log_at(log.Level.ERROR, f"cannot buffer the body: {e.value}")
        return CONTINUE

    def response_body_chunk(self, flow, request, response, chunk, end_of_stream):
        return chunk

    def response(self, flow, request, response):
        if not is_text(response):
            return CONTINUE
        try:
            body = bytes(response.body())
        except Err as e:
            # limit-exceeded: bigger than max_body_bytes; the client gets it unredacted.
            log_at(log.Level.WARN, f"{request.url()}: cannot read the body, not redacted: {e.value}")
            return CONTINUE
        s = settings()
        form = "x-www-form-urlencoded" in ",".join(response.get_header("content-type")).lower()
        # surrogateescape round-trips bytes that are not UTF-8 unchanged.
        text, count = redact_text(body.decode("utf-8", "surrogateescape"), s, form)
        if count:
            try:
                response.set_body(text.encode("utf-8", "surrogateescape"))
            except Err as e:
                log_at(log.Level.ERROR, f"cannot replace the body: {e.value}")
                count = 0
            else:
                log_at(log.Level.INFO, f"{request.url()}: redacted {count} secret(s) in the body")
        record(flow, response, previous_count(flow) + count)
        return CONTINUE

    def error(self, flow, request, message):
        pass

    def http_connect(self, flow, request):
        return CONTINUE
