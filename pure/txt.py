"""TXT record values: one logical string as a record's character-strings, and back.

The one place that splits, quotes and joins TXT data, for the records the stack publishes
(`pure/records.py`) and for what `dkim-relay verify` reads (`tools/verify/dns_checks.py`).
Quoting and unquoting are dnspython's (RFC 1035 5.1 master-file syntax), the syntax
Cloudflare stores and BIND reads.
"""

from __future__ import annotations

import dns.rdata
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.TXT import TXT

TXT_CHUNK = 255  # RFC 1035 3.3: one character-string holds at most 255 octets


def split_txt(value: str) -> list[str]:
    """Split a TXT value into character-strings of at most 255 characters."""
    return [value[i : i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)] or [""]


def txt_content(value: str) -> str:
    """TXT content as quoted strings (`"a" "b"`): what Cloudflare stores and BIND reads."""
    strings = [s.encode() for s in split_txt(value)]
    return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings).to_text()


def join_txt(content: str) -> str:
    """The logical value a resolver hands to DKIM/SPF code: the strings joined, no spaces.

    Content that is not quoted (as some DNS hosts show it) is one value, returned as is.
    """
    text = content.strip()
    if not text.startswith('"'):
        return text
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)
    assert isinstance(rdata, TXT)
    return b"".join(rdata.strings).decode()
