"""Hypothesis strategies for hostile input: realistic valid values, then mutations of them.

Every strategy starts from what a real phone, Kamailio or operator sends (an APNs token,
a Linphone multi-token prid, a Firebase project ID, a pushd.yaml) and mutates it the way
an attacker or a broken client would: pieces inserted anywhere (quotes, semicolons, CRLF
plain and percent-encoded, NUL, non-ASCII and look-alike digits), case flipped, values
cut, repeated to tens of kilobytes, emptied, duplicated. The property tests built on them
(``test_hostile_*.py``) check that nothing crashes, nothing malformed is accepted, and
every refusal names its culprit.

Speed: each main property runs 10,000 cases in CI, and hypothesis' own cost per draw
is more than the code under test's, so a case is one drawn integer (:class:`Bits`) that
picks a realistic value from a fixed pool and the mutations to apply to it.
"""

from __future__ import annotations

import random
import string

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CASES = 10_000
"""Cases per hostile-input property (issue 12: at least 10,000 each)."""


def cases(n: int = CASES) -> settings:
    """Settings for a hostile-input property: ``n`` examples, no per-example deadline
    (CI machines are shared), no example database (nothing written into the checkout)."""
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


# ----- pieces an attacker inserts ------------------------------------------------------------

NASTY = (
    '"',
    "'",
    ";",
    ",",
    "<",
    ">",
    "&",
    ":",
    "=",
    "?",
    "%",
    "\\",
    " ",
    "\t",
    "\r\n",
    "\r",
    "\n",
    "\x00",
    "\x7f",
    "%0D%0A",
    "%0d%0a",
    "%22",
    "%3B",
    "%3E",
    "%00",
    "%G0",
    '\r\nFeature-Caps: *;+sip.pns="fcm"',
    "%0D%0AFeature-Caps:%20*%3B+sip.pns=%22fcm%22",
    "é",
    "ü",
    "\u00b2",  # a digit to str.isdigit(), not to int()
    "\u0663",  # ARABIC-INDIC DIGIT THREE: int() takes it
    "\uff18",  # FULLWIDTH DIGIT EIGHT
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u2028",  # LINE SEPARATOR
    "\ufeff",
    "\u0130",  # I WITH DOT ABOVE: lower() makes it two characters
    "\u212a",  # KELVIN SIGN: lower() makes it "k"
    "\U0001d552",
    "\udcff",  # lone surrogate (what surrogateescape makes of a stray byte)
)

_pieces_rng = random.Random(12)
PIECES = NASTY + tuple(
    "".join(
        chr(_pieces_rng.choice([_pieces_rng.randint(0, 0x7F), _pieces_rng.randint(0x80, 0x10FFFF)]))
        for _ in range(_pieces_rng.randint(1, 3))
    )
    for _ in range(64)
)
"""What mutations insert: the nasty pieces above and random characters from all of Unicode."""


class Bits:
    """Reads small choices out of one big integer: hypothesis draws one number per case
    (a few draws per case would cost more than the code under test) and shrinks it
    towards 0, which every reader below maps to "untouched" / "the first realistic value"."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.drawn = n

    def __repr__(self) -> str:
        return f"Bits({self.drawn:#x})"

    def take(self, k: int) -> int:
        """A choice in range(k)."""
        value = self.n % k
        self.n //= k
        return value


def case(bits: int = 256) -> st.SearchStrategy[Bits]:
    return st.integers(0, (1 << bits) - 1).map(Bits)


def mutate(value: str, b: Bits) -> str:
    """One mutation of ``value``; op 0-1 leave it untouched, so real values stay common."""
    op = b.take(12)
    at = b.take(1 << 16) % (len(value) + 1)
    count = b.take(1 << 16)
    bit = PIECES[b.take(len(PIECES))]
    if op <= 1:
        return value
    if op <= 4:
        return value[:at] + bit + value[at:]
    if op == 5:
        return value.upper() if count % 2 else value.swapcase()
    if op == 6:
        return value[:at]
    if op == 7:
        return value * (2 + count % 200)  # huge, still "valid-looking"
    if op == 8:
        return bit[0] * (5_000 + count % 7_000)  # 5-12 kB of one character
    if op == 9:
        return f" {value}\t"
    if op == 10:
        return ""
    return bit


def mutations(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(mutate, valid, case(64))


# ----- RFC 8599 values, as phones send them --------------------------------------------------

HEX = "0123456789abcdef"
APNS_PROVIDERS = ("apns", "apns.dev", "apns.prod", "apns.sandbox")
team_id = st.text(alphabet=string.ascii_uppercase + string.digits, min_size=10, max_size=10)
label = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=12)
bundle = st.lists(label, min_size=2, max_size=4).map(".".join)
suffix = st.sampled_from(["", ".voip", ".remote", ".remote&voip", ".voip&remote"])
apns_token = st.one_of(
    st.text(alphabet=HEX, min_size=64, max_size=64),
    st.text(alphabet=HEX + HEX.upper(), min_size=16, max_size=200),
)
fcm_token = st.text(
    alphabet=string.ascii_letters + string.digits + "_:-.", min_size=8, max_size=300
)
fcm_project = st.builds(
    lambda a, b, c: a + b + c,
    st.sampled_from(string.ascii_lowercase),
    st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=4, max_size=28),
    st.sampled_from(string.ascii_lowercase + string.digits),
)


@st.composite
def valid_pn(draw: st.DrawFn) -> list[tuple[str, str | None]]:
    """pn-* params of one real binding, drawn freely (for the "real ones pass" properties)."""
    if draw(st.booleans()):
        provider = draw(st.sampled_from([*APNS_PROVIDERS, "APNS", "Apns.Dev"]))
        prid = draw(apns_token)
        if draw(st.booleans()):
            prid = f"{prid}:remote&{draw(apns_token)}:voip"
        param = f"{draw(team_id)}.{draw(bundle)}{draw(suffix)}"
    else:
        provider, prid, param = (
            draw(st.sampled_from(["fcm", "FCM"])),
            draw(fcm_token),
            draw(fcm_project),
        )
    pairs: list[tuple[str, str | None]] = [
        ("pn-provider", provider),
        ("pn-prid", prid),
        ("pn-param", param),
    ]
    if draw(st.booleans()):
        pairs.append(draw(st.sampled_from([("pn-silent", "1"), ("pn-timeout", "0")])))
    return pairs


def _real_pn(rng: random.Random) -> list[tuple[str, str | None]]:
    def text(alphabet: str, n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    if rng.random() < 0.6:
        token = text(HEX, 64)
        prid = f"{text(HEX, 64)}:remote&{token}:voip" if rng.random() < 0.3 else token
        bundle_id = ".".join(text(string.ascii_lowercase, rng.randint(2, 8)) for _ in range(3))
        end = rng.choice(["", ".voip", ".remote&voip"])
        param = f"{text(string.ascii_uppercase + string.digits, 10)}.{bundle_id}{end}"
        pairs: list[tuple[str, str | None]] = [
            ("pn-provider", rng.choice(APNS_PROVIDERS)),
            ("pn-prid", prid),
            ("pn-param", param),
        ]
    else:
        b64 = string.ascii_letters + string.digits + "-_"
        pairs = [
            ("pn-provider", "fcm"),
            ("pn-prid", f"{text(b64, 22)}:APA91b{text(b64, 134)}"),
            ("pn-param", f"{text(string.ascii_lowercase, 6)}-{text(string.digits, 5)}"),
        ]
    if rng.random() < 0.3:
        pairs.append(("pn-silent", "1"))
    return pairs


_rng = random.Random(8599)
REAL_PN = tuple(_real_pn(_rng) for _ in range(256))
"""Realistic pn params (iPhone, Linphone multi-token, Android), a fixed pool to mutate."""


def hostile_pn_of(b: Bits) -> list[tuple[str, str | None]]:
    """A realistic binding's pn params with one to three mutations: a value mutated, a
    param given twice (another binding's value or its own), dropped, renamed, bare, moved."""
    pairs = list(REAL_PN[b.take(len(REAL_PN))])
    for _ in range(1 + b.take(3)):
        if not pairs:
            break
        how, i = b.take(8), b.take(len(pairs))
        name, value = pairs[i]
        if how <= 2:
            pairs[i] = (name, mutate(value or "", b))
        elif how == 3:
            other = REAL_PN[b.take(len(REAL_PN))]
            again = dict(other).get(name, value) if b.take(2) else value
            pairs.insert(b.take(len(pairs) + 1), (name, again))
        elif how == 4:
            del pairs[i]
        elif how == 5:
            pairs[i] = ((name.upper(), f" {name}", name + "x")[b.take(3)], value)
        elif how == 6:
            pairs[i] = (name, None)
        else:
            j = b.take(len(pairs))
            pairs[i], pairs[j] = pairs[j], pairs[i]
    return pairs


hostile_pn = case().map(hostile_pn_of)


def pn_tail(pairs: list[tuple[str, str | None]]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in pairs)


INSTANCES = (
    "",
    *(f';+sip.instance="<urn:uuid:00000000-0000-4000-8000-00000000000{i}>"' for i in (1, 2)),
)
EXPIRES = ("", ";expires=0", ";expires=30", ";expires=600", ";expires=abc", ";expires=\u00b2")
SHAPES = ("angle", "angle", "named", "bare")


def contact(pairs: list[tuple[str, str | None]], b: Bits, shapes: tuple[str, ...] = SHAPES) -> str:
    """One Contact header value in the shapes phones use (a bare URI's ``;`` params are
    header params, RFC 3261 §20.10: no push binding then)."""
    uri = f"sip:alice@192.0.2.{1 + b.take(254)}:5060;transport=tcp;ob{pn_tail(pairs)}"
    instance = b.take(3)
    tail = INSTANCES[instance] + (";reg-id=1" if instance else "")
    tail += EXPIRES[b.take(len(EXPIRES))] + (";+sip.pnsreg" if b.take(2) else "")
    shape = shapes[b.take(len(shapes))]
    if shape == "bare":
        return uri + tail
    if shape == "named":
        return f'"Alice; <the phone>" <{uri}>{tail}'
    return f"<{uri}>{tail}"


def hostile_contacts_of(b: Bits) -> list[str]:
    """One to three Contacts with hostile pn params (a REGISTER's Contact headers)."""
    return [contact(hostile_pn_of(b), b) for _ in range(1 + b.take(3))]


# Numbers a JSON peer may send that Python's float() cannot hold or that are edge values.
HUGE_NUMBERS = (10**400, -(10**400), 2**63, -(2**63), 2**64 + 1, 1e308, -1e308, 5e-324)
