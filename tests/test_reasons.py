"""Every reason code the code can produce has words for the screen and a line in the docs."""

from __future__ import annotations

from pathlib import Path

from protocol import tokens
from terminal.core import policy, reasons

DOC = (Path(__file__).parent.parent / "docs" / "reasons.md").read_text(encoding="utf-8")


def _codes(module: object, names: list[str]) -> set[str]:
    return {getattr(module, n) for n in names}


TOKEN_CODES = _codes(
    tokens,
    [
        "MALFORMED",
        "UNSUPPORTED_ALG",
        "UNKNOWN_ISSUER_KEY",
        "BAD_CREDENTIAL_SIGNATURE",
        "BAD_PRESENTATION_SIGNATURE",
        "CREDENTIAL_EXPIRED",
        "CREDENTIAL_NOT_YET_VALID",
        "PRESENTATION_STALE",
        "PRESENTATION_FROM_FUTURE",
        "REPLAYED",
        "REVOKED",
    ],
)
POLICY_CODES = {
    value
    for name, value in vars(policy).items()
    if name.isupper() and isinstance(value, str) and name not in ("QR", "CARD")
}


def test_every_code_has_screen_words_in_both_languages() -> None:
    for code in TOKEN_CODES | POLICY_CODES:
        assert code in reasons.REASONS, code
        words = reasons.REASONS[code]
        assert words.zh and words.en and words.todo_zh and words.todo_en
        assert reasons.text(code, "en").startswith(words.en)
        assert reasons.text(code, "zh").startswith(words.zh)


def test_every_code_is_documented() -> None:
    for code in reasons.REASONS:
        assert f"| `{code}` |" in DOC, code


def test_no_stale_codes() -> None:
    assert set(reasons.REASONS) == TOKEN_CODES | POLICY_CODES
