"""TXT values split, quoted and joined in one place (pure/txt.py), judged by dnspython's
own zone-file reader and by the published form the stack writes."""

from __future__ import annotations

import dns.zone
import pytest

from pure.txt import TXT_CHUNK, join_txt, split_txt, txt_content

pytestmark = pytest.mark.unit

LONG = "v=DKIM1; k=rsa; p=" + "A" * 400


@pytest.mark.parametrize(
    "value", [LONG, "v=spf1 ip4:192.0.2.1 ~all", 'a "quoted" \\ value', "", "x" * 255]
)
def test_quoted_content_joins_back_to_the_value(value: str) -> None:
    content = txt_content(value)
    assert content.startswith('"') and content.endswith('"')
    assert join_txt(content) == value


def test_long_values_are_split_into_255_character_strings() -> None:
    parts = split_txt(LONG)
    assert "".join(parts) == LONG and [len(p) for p in parts] == [TXT_CHUNK, len(LONG) - 255]
    assert txt_content(LONG).count('" "') == 1


def test_a_zone_file_reader_sees_the_same_strings() -> None:
    content = txt_content('a "q" \\ ' + LONG)
    zone = dns.zone.from_text(
        f"$ORIGIN example.com.\n@ 3600 IN TXT {content}\n", check_origin=False
    )
    rdata = zone.find_rdataset("@", "TXT")[0]
    assert [s.decode() for s in rdata.strings] == split_txt('a "q" \\ ' + LONG)


def test_published_strings_are_joined_without_spaces_and_unquoted_text_is_kept() -> None:
    assert join_txt(r'"a\"b" "c"') == 'a"bc'
    assert join_txt('"v=spf1 " "-all"') == "v=spf1 -all"
    assert join_txt("v=spf1 -all") == "v=spf1 -all"  # a DNS host that shows it unquoted
