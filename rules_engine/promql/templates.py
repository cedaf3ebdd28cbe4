"""Prometheus alert annotation templates, rendered as Prometheus renders them.

Prometheus expands an annotation with Go's text/template, `missingkey=zero`, `$labels`/`.Labels` (a missing
label is ""), `$value`/`.Value` (a float64, printed with Go's `%v`) and its own template functions. The generated
promtool tests compare our rendering with Prometheus' byte for byte (`render_template`); the terminal report and
the export show a finding's summary and description as Prometheus would send them, with a bare `{{ $value }}` in
4 significant digits (`render_readable`), so both use this one renderer.

Supported: actions that are a pipeline (`{{ $value | humanize }}`, `{{ humanize $value }}`,
`{{ printf "%.2f" $value }}`, `{{ $labels.x | toUpper }}`) over `$value`, `.Value`, `$labels.NAME`,
`.Labels.NAME` and string literals, with the functions in FUNCTIONS, and `{{-`/`-}}` trim markers. Behaviour is
Prometheus 2.42's (template/template.go; e.g. `title` is Go's strings.Title there). Anything else -- control
structures, other functions or variables, printf verbs or flags not listed, non-ASCII text through the case
functions -- raises Unrenderable naming the action: a caller skips what it cannot render exactly rather than guess.
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable, Union

Value = Union[float, str]  # what a pipeline stage yields: a sample value or text


class Unrenderable(ValueError):
    """A template (action) this renderer cannot render exactly the way Prometheus would."""


def go_float(value: float, verb: str = "v", precision: int | None = None) -> str:
    """Go's fmt of a float64 for the verbs v, g, e, f (precision None: Go's default for the verb).

    `%v`/`%g` without precision print the shortest digits that round-trip, in exponent form when the decimal
    exponent is below -4 or at least 6 (hence `{{ $value }}` of 1e6 is "1e+06"); non-finite values are
    NaN, +Inf, -Inf for every verb."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if verb == "f":
        return f"{value:.{6 if precision is None else precision}f}"
    if verb == "e":
        return f"{value:.{6 if precision is None else precision}e}"
    if verb == "g" and precision is not None:
        return f"{value:.{precision}g}"
    if verb not in ("v", "g"):
        raise ValueError(f"unsupported float verb {verb!r}")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    shortest = Decimal(repr(value)).normalize()
    sign, digits, exponent = shortest.as_tuple()
    decimal_exponent = len(digits) + exponent - 1
    if -4 <= decimal_exponent < 6:
        return format(shortest, "f")
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if decimal_exponent < 0 else '+'}{abs(decimal_exponent):02d}"


def _scaled(value: float, prefixes: tuple[str, ...], factor: float) -> str:
    """Prometheus' humanize loops: scale by `factor` until the magnitude is in range, 4 significant digits."""
    prefix = ""
    for candidate in prefixes:
        if abs(value) < factor:
            break
        prefix, value = candidate, value / factor
    return f"{go_float(value, 'g', 4)}{prefix}"


def _scaled_down(value: float, suffix: str = "") -> str:
    prefix = ""
    for candidate in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(value) >= 1:
            break
        prefix, value = candidate, value * 1000
    return f"{go_float(value, 'g', 4)}{prefix}{suffix}"


def humanize(value: float) -> str:
    """SI prefixes, 4 significant digits: 1234 -> 1.234k, 0.0123 -> 12.3m."""
    if value == 0 or not math.isfinite(value):
        return go_float(value, "g", 4)
    if abs(value) >= 1:
        return _scaled(value, ("k", "M", "G", "T", "P", "E", "Z", "Y"), 1000)
    return _scaled_down(value)


def humanize1024(value: float) -> str:
    """Binary prefixes (ki, Mi, ...), 4 significant digits; magnitudes up to 1 unscaled."""
    if abs(value) <= 1 or not math.isfinite(value):
        return go_float(value, "g", 4)
    return _scaled(value, ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"), 1024)


def humanize_duration(value: float) -> str:
    """Seconds as `1d 2h 3m 4s` (whole seconds from a minute up), `12.5s`, or `250ms` below a second."""
    if not math.isfinite(value):
        return go_float(value, "g", 4)
    if value == 0:
        return go_float(value, "g", 4) + "s"
    if abs(value) < 1:
        return _scaled_down(value, "s")
    if abs(value) >= 2 ** 63:
        raise Unrenderable(f"humanizeDuration of {go_float(value)} (Go's int64 conversion overflows)")
    sign = "-" if value < 0 else ""
    seconds = int(abs(value))  # Go's int64 conversion truncates
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
    if hours:
        return f"{sign}{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{sign}{minutes}m {seconds}s"
    return f"{sign}{go_float(abs(value), 'g', 4)}s"


def humanize_percentage(value: float) -> str:
    """A ratio as a percentage, 4 significant digits: 0.975 -> 97.5%."""
    return go_float(value * 100, "g", 4) + "%"


def humanize_timestamp(value: float) -> str:
    """Unix seconds as Go prints a UTC time.Time: `2024-01-02 03:04:05.5 +0000 UTC`, to the millisecond."""
    if not math.isfinite(value):
        return go_float(value, "g", 4)
    nanoseconds = value * 1e9
    if not -2 ** 63 <= nanoseconds <= 2 ** 63 - 1:
        raise Unrenderable(f"humanizeTimestamp of {go_float(value)} (overflows Prometheus' nanoseconds)")
    nanoseconds = int(nanoseconds)
    milliseconds = abs(nanoseconds) // 1_000_000 * (1 if nanoseconds >= 0 else -1)  # Go divides toward zero
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=milliseconds)
    if not 1 <= moment.year <= 9999:
        raise Unrenderable(f"humanizeTimestamp of {go_float(value)} (year outside 1..9999)")
    fraction = f".{moment.microsecond // 1000:03d}".rstrip("0").rstrip(".")
    return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="seconds") + fraction + " +0000 UTC"


def _ascii(function: Callable[[str], str], name: str) -> Callable[[str], str]:
    """Go's Unicode case mapping differs from Python's beyond ASCII (e.g. "ß"): only ASCII text is rendered."""

    def apply(text: str) -> str:
        if not text.isascii():
            raise Unrenderable(f"{name} of non-ASCII text")
        return function(text)

    return apply


def _title(text: str) -> str:
    """Go's strings.Title on ASCII: a letter after anything but a letter, digit or underscore is upper-cased."""
    return re.sub(r"(?<![A-Za-z0-9_])[a-z]", lambda m: m.group(0).upper(), text)


_NUMERIC = {
    "humanize": humanize,
    "humanize1024": humanize1024,
    "humanizeDuration": humanize_duration,
    "humanizePercentage": humanize_percentage,
    "humanizeTimestamp": humanize_timestamp,
}
_TEXT = {"title": _ascii(_title, "title"), "toUpper": _ascii(str.upper, "toUpper"),
         "toLower": _ascii(str.lower, "toLower")}
_VERB = re.compile(r"%(?:\.(?P<precision>\d+))?(?P<verb>.)|%$", re.DOTALL)


def printf(template: str, *args: Value) -> str:
    """Go's fmt.Sprintf for `%v`, `%s` (text) and `%f`, `%e`, `%g`, `%v` with an optional precision (floats)."""
    pending = list(args)

    def verb(match: re.Match) -> str:
        kind, precision = match.group("verb"), match.group("precision")
        if kind == "%" and precision is None:
            return "%"
        if kind is None or kind not in "vsfeg" or not pending:
            raise Unrenderable(f"printf {match.group(0)!r} with {len(pending)} argument(s) left")
        arg = pending.pop(0)
        if isinstance(arg, str):
            if kind not in "vs" or precision is not None:
                raise Unrenderable(f"printf {match.group(0)!r} of text")
            return arg
        if kind == "s" or (kind == "v" and precision is not None):
            raise Unrenderable(f"printf {match.group(0)!r} of a number")
        return go_float(arg, kind, None if precision is None else int(precision))

    text = _VERB.sub(verb, template)
    if pending:
        raise Unrenderable(f"printf {template!r} with extra arguments")
    return text


def _number(name: str, function: Callable[[float], str]) -> Callable[..., str]:
    def apply(*args: Value) -> str:
        if len(args) != 1 or not isinstance(args[0], float):
            raise Unrenderable(f"{name} of anything but one sample value")
        return function(args[0])

    return apply


def _text(name: str, function: Callable[[str], str]) -> Callable[..., str]:
    def apply(*args: Value) -> str:
        if len(args) != 1 or not isinstance(args[0], str):
            raise Unrenderable(f"{name} of anything but one text value")
        return function(args[0])

    return apply


def _printf(*args: Value) -> str:
    if not args or not isinstance(args[0], str):
        raise Unrenderable("printf without a format string")
    return printf(*args)


FUNCTIONS: dict[str, Callable[..., str]] = {
    **{name: _number(name, function) for name, function in _NUMERIC.items()},
    **{name: _text(name, function) for name, function in _TEXT.items()},
    "printf": _printf,
}

# Go's trim markers need white space beside the dash ("{{-3}}" is the number -3).
_ACTION = re.compile(r"\{\{(?P<left>-[ \t\r\n])?(?P<body>.*?)(?P<right>[ \t\r\n]-)?\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<pipe>\|)|(?P<word>[^\s|"`]+))\s*')
_LABEL = re.compile(r"(?:\$labels|\.Labels)\.([a-zA-Z_][a-zA-Z0-9_]*)")


def _tokens(body: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(body):
        match = _TOKEN.match(body, position)
        if match is None or match.end() == position:
            raise Unrenderable(f"template action {{{{ {body.strip()} }}}}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _operand(kind: str, text: str, labels: dict[str, str], value: float, body: str) -> Value:
    if kind == "raw":
        return text[1:-1]
    if kind == "string":
        try:
            return json.loads(text)  # Go's common escapes (\" \\ \n \t \uXXXX) are JSON's
        except ValueError:
            raise Unrenderable(f"string literal {text} in {{{{ {body} }}}}") from None
    if text in ("$value", ".Value"):
        return float(value)
    label = _LABEL.fullmatch(text)
    if label:
        return labels.get(label.group(1), "")
    raise Unrenderable(f"{text!r} in template action {{{{ {body} }}}}")


def _pipeline(body: str, labels: dict[str, str], value: float) -> str:
    commands: list[list[tuple[str, str]]] = [[]]
    for kind, text in _tokens(body):
        if kind == "pipe":
            commands.append([])
        else:
            commands[-1].append((kind, text))
    result: Value | None = None
    for index, command in enumerate(commands):
        if not command:
            raise Unrenderable(f"template action {{{{ {body} }}}}")
        (kind, head), rest = command[0], command[1:]
        if kind == "word" and head in FUNCTIONS:
            args = [_operand(k, t, labels, value, body) for k, t in rest]
            result = FUNCTIONS[head](*args, *(() if index == 0 else (result,)))
        elif kind == "word" and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", head):
            raise Unrenderable(f"template function {head!r} in {{{{ {body} }}}}")
        elif index == 0 and not rest:
            result = _operand(kind, head, labels, value, body)
        else:
            raise Unrenderable(f"template action {{{{ {body} }}}}")
    return go_float(result) if isinstance(result, float) else result


def render_template(text: str, labels: dict[str, str], value: float) -> str:
    """The annotation `text` as Prometheus renders it for an alert with these labels and value."""
    return _render(text, lambda action: _pipeline(action.group("body").strip(), labels, value))


def readable_value(value: float) -> str:
    """A sample value for people: 4 significant digits, SI prefixes (humanize) outside 0.001 .. 1000."""
    if value == 0 or not math.isfinite(value) or 1e-3 <= abs(value) < 1e3:
        return go_float(float(f"{value:.4g}")) if math.isfinite(value) else go_float(value)
    return humanize(value)


def render_readable(text: str, labels: dict[str, str], value: float) -> str:
    """An annotation rendered for a report: as Prometheus would, except that a bare `{{ $value }}` prints as
    `readable_value` ("3.571", not "3.5711146384479724") and an action this renderer cannot reproduce is kept as
    written. Label values are substituted as data, never read as a template."""
    def action(match: re.Match) -> str:
        body = match.group("body").strip()
        if body in ("$value", ".Value"):
            return readable_value(float(value))
        try:
            return _pipeline(body, labels, value)
        except Unrenderable:
            return match.group(0)

    return _render(text, action)


def _render(text: str, action: Callable[[re.Match], str]) -> str:
    """`text` with each action replaced by what `action` makes of it, Go's trim markers applied."""
    pieces: list[str] = []
    position, trim_next = 0, False
    for match in _ACTION.finditer(text):
        literal = text[position:match.start()]
        if trim_next:
            literal = literal.lstrip(" \t\r\n")
        if match.group("left"):
            literal = literal.rstrip(" \t\r\n")
        pieces.append(literal)
        pieces.append(action(match))
        position, trim_next = match.end(), bool(match.group("right"))
    tail = text[position:]
    pieces.append(tail.lstrip(" \t\r\n") if trim_next else tail)
    return "".join(pieces)
