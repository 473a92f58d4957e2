"""sipmsg's parameter split (str methods) agrees with the plain per-character loop."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pushgate import sipmsg


def _split_params_per_character(text: str) -> list[str]:
    """The reference: ';' splits outside quotes, '\\' escapes the next character inside."""
    out: list[str] = []
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


@settings(max_examples=10000)
@given(
    st.text(alphabet=st.sampled_from(list(';"=<>ab \r\n\x00é')), max_size=60)  # no escapes
    | st.text(alphabet=st.sampled_from(list(';"\\=<>ab \r\n\x00é')), max_size=60)
    | st.text()
)
def test_params_split_like_the_per_character_loop(text: str) -> None:
    assert sipmsg._split_params(text) == _split_params_per_character(text)


def test_a_phones_contact_params() -> None:
    tail = 'reg-id=1;+sip.instance="<urn:uuid:a;b\\"c>";expires=600;x'
    assert sipmsg._split_params(tail) == [
        "reg-id=1",
        '+sip.instance="<urn:uuid:a;b\\"c>"',
        "expires=600",
        "x",
    ]
