"""pydantic's validation errors in our words: one `Problem` per error, naming its field by dotted path, with the
message without pydantic's leads ("Value error, ", "Assertion failed, "). The one place that reads
`ValidationError.errors()`: profiles and site files (`format_validation_error`), trades, the web API and the
exchange simulator each present these problems in their own answer format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import ValidationError

_LEADS = ("Value error, ", "Assertion failed, ")


@dataclass(frozen=True)
class Problem:
    loc: tuple[str, ...]  # the field's location, each part as text: ("body", "quantity_mw")
    msg: str  # pydantic's own message
    type: str  # pydantic's error type: "missing", "value_error", "extra_forbidden", ...
    input: Any  # the offending value (may be NaN, huge or a secret: never echoed without care)

    @property
    def path(self) -> str:
        """The dotted path, "" for the object as a whole."""
        return ".".join(self.loc)

    @property
    def message(self) -> str:
        """The message without pydantic's lead: what a person needs to read."""
        for lead in _LEADS:
            if self.msg.startswith(lead):
                return self.msg[len(lead) :]
        return self.msg


def validation_problems(err: ValidationError | Sequence[dict[str, Any]]) -> list[Problem]:
    """A ValidationError's errors (or FastAPI's RequestValidationError.errors()) as Problems, in order."""
    errors = err.errors() if isinstance(err, ValidationError) else err
    return [
        Problem(
            loc=tuple(str(x) for x in e.get("loc", ())),
            msg=str(e.get("msg", "invalid")),
            type=str(e.get("type", "")),
            input=e.get("input"),
        )
        for e in errors
    ]


def format_validation_error(err: ValidationError, prefix: str = "") -> list[str]:
    """One line per error, each led by its dotted path: `limits.soc_max_pct: must be > ...` (profiles, site files)."""
    lines = []
    for p in validation_problems(err):
        msg = p.message
        if p.type == "extra_forbidden":
            msg = "unknown key"
        elif p.type == "finite_number":
            msg = f"{msg} (got {p.input!r})"  # pydantic does not say which: nan, inf or -inf
        full = ".".join(x for x in (prefix, p.path) if x)
        lines.append(f"{full}: {msg}" if full else msg)
    return lines
