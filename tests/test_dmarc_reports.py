"""DMARC aggregate reports: real-format samples summarised; hostile files refused fast."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from tools import dmarc_report as dr

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
RELAY_V4 = "203.0.113.10"
RELAY_V6 = "2001:db8::10"
SPOOFER = "198.51.100.66"
GMAIL = "209.85.220.41"


def record(
    ip: str,
    count: int,
    disposition: str,
    dkim_eval: str,
    spf_eval: str,
    dkim_res: list[tuple[str, str, str]],
    spf_res: list[tuple[str, str]],
) -> str:
    dkim_xml = "".join(
        f"<dkim><domain>{d}</domain><selector>{s}</selector><result>{r}</result></dkim>"
        for d, s, r in dkim_res
    )
    spf_xml = "".join(
        f"<spf><domain>{d}</domain><scope>mfrom</scope><result>{r}</result></spf>"
        for d, r in spf_res
    )
    return f"""
  <record>
    <row>
      <source_ip>{ip}</source_ip>
      <count>{count}</count>
      <policy_evaluated>
        <disposition>{disposition}</disposition>
        <dkim>{dkim_eval}</dkim>
        <spf>{spf_eval}</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>example.com</header_from>
    </identifiers>
    <auth_results>{dkim_xml}{spf_xml}</auth_results>
  </record>"""


def report(org: str, report_id: str, records: list[str], ns: str = "") -> bytes:
    xmlns = f' xmlns="{ns}"' if ns else ""
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<feedback{xmlns}>
  <report_metadata>
    <org_name>{org}</org_name>
    <email>noreply-dmarc-support@{org}</email>
    <report_id>{report_id}</report_id>
    <date_range><begin>1764288000</begin><end>1764374399</end></date_range>
  </report_metadata>
  <policy_published>
    <domain>example.com</domain>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <p>quarantine</p>
    <sp>quarantine</sp>
    <pct>100</pct>
  </policy_published>{"".join(records)}
</feedback>
""".encode()


GOOD_RELAY_V4 = record(
    RELAY_V4,
    12,
    "none",
    "pass",
    "pass",
    [("example.com", "relay", "pass")],
    [("example.com", "pass")],
)
GOOD_RELAY_V6 = record(
    RELAY_V6, 3, "none", "pass", "fail", [("example.com", "relay", "pass")], [("gmail.com", "pass")]
)
SPOOF = record(SPOOFER, 5, "quarantine", "fail", "fail", [], [("example.com", "fail")])
# Sent straight from Gmail's servers (not through the relay): DMARC fails.
GMAIL_DIRECT = record(
    GMAIL,
    2,
    "quarantine",
    "fail",
    "fail",
    [("gmail.com", "20230601", "pass")],
    [("gmail.com", "pass")],
)
RELAY_FAIL = record(
    RELAY_V4,
    1,
    "none",
    "fail",
    "fail",
    [("example.com", "relay", "fail")],
    [("example.com", "softfail")],
)

REPORT_A = report("google.com", "111", [GOOD_RELAY_V4, SPOOF])
REPORT_B = report("yahoo.com", "222", [GOOD_RELAY_V6, GMAIL_DIRECT, GOOD_RELAY_V4])
REPORT_C = report("outlook.com", "333", [RELAY_FAIL], ns="urn:ietf:params:xml:ns:dmarc-2.0")


def write_samples(folder: Path) -> None:
    (folder / "google.com!example.com!1764288000!1764374399.xml").write_bytes(REPORT_A)
    (folder / "yahoo.com!example.com!1764288000!1764374399.xml.gz").write_bytes(
        gzip.compress(REPORT_B)
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("outlook.com!example.com!1764288000!1764374399.xml", REPORT_C)
    (folder / "outlook.com!example.com!1764288000!1764374399.zip").write_bytes(buf.getvalue())


def test_parse_report_fields() -> None:
    rep = dr.parse_report(REPORT_A)
    assert (rep.org_name, rep.report_id, rep.domain, rep.policy) == (
        "google.com",
        "111",
        "example.com",
        "quarantine",
    )
    assert (rep.begin, rep.end) == (1764288000, 1764374399)
    first, second = rep.records
    assert first.source_ip == RELAY_V4 and first.count == 12 and first.dmarc_pass
    assert first.dkim_results == (("example.com", "relay", "pass"),)
    assert second.source_ip == SPOOFER and second.disposition == "quarantine"
    assert not second.dmarc_pass and second.dkim_results == ()


def test_samples_in_all_three_formats_summarised(tmp_path: Path) -> None:
    write_samples(tmp_path)
    reports = [r for f in dr.iter_report_files([str(tmp_path)]) for r in dr.load_file(f)]
    assert sorted(r.org_name for r in reports) == ["google.com", "outlook.com", "yahoo.com"]
    summary = dr.summarise(reports)
    relay4 = summary[RELAY_V4]
    assert relay4.count == 12 + 12 + 1
    assert relay4.dmarc_pass == 24 and relay4.dmarc_fail == 1
    assert relay4.dkim_aligned == {"pass": 24, "fail": 1}
    assert relay4.spf_results == {"pass": 24, "softfail": 1}
    assert relay4.dispositions == {"none": 25}
    relay6 = summary[RELAY_V6]
    assert (relay6.count, relay6.dmarc_pass, relay6.spf_aligned) == (3, 3, {"fail": 3})
    spoof = summary[SPOOFER]
    assert (spoof.count, spoof.dmarc_fail, spoof.dispositions) == (5, 5, {"quarantine": 5})
    assert spoof.dkim_results == {"none": 5}
    assert summary[GMAIL].dkim_results == {"pass": 2}  # signed, but by gmail.com: not aligned
    # Sorted by message count.
    assert list(summary)[0] == RELAY_V4

    flagged = dr.flagged_sources(summary, [RELAY_V4, RELAY_V6])
    assert sorted(flagged) == sorted([SPOOFER, GMAIL])
    lines = dr.format_summary(summary, [RELAY_V4, RELAY_V6])
    spoof_line = next(line for line in lines if SPOOFER in line)
    assert spoof_line.startswith("FLAG ") and "count=5" in spoof_line
    assert "disposition[quarantine=5]" in spoof_line
    relay_line = next(line for line in lines if f" {RELAY_V4} " in line)
    assert relay_line.startswith("WARN ") and relay_line.endswith("(relay)")
    assert next(line for line in lines if RELAY_V6 in line).startswith("ok ")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "bin" / "dkim-relay"), "dmarc-report", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_summary_and_exit_codes(tmp_path: Path) -> None:
    write_samples(tmp_path)
    res = run_cli("--relay-ip", RELAY_V4, "--relay-ip", "2001:db8::/64", str(tmp_path))
    assert res.returncode == 1, res.stdout + res.stderr  # sources other than the relay fail
    assert "3 report(s) from 3 file(s), 0 refused" in res.stdout
    assert f"FLAG {SPOOFER} count=5" in res.stdout
    assert "fail DMARC and are not the relay" in res.stdout

    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "r.xml").write_bytes(report("google.com", "9", [GOOD_RELAY_V4]))
    res = run_cli("--relay-ip", RELAY_V4, str(clean / "r.xml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"ok   {RELAY_V4} count=12" in res.stdout


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<feedback><report_metadata><org_name>&lol9;</org_name></report_metadata></feedback>
"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<feedback><report_metadata><org_name>&x;</org_name></report_metadata></feedback>
"""


@pytest.mark.timeout(10)
@pytest.mark.parametrize("payload", [BILLION_LAUGHS, XXE], ids=["billion-laughs", "xxe"])
def test_entity_expansion_refused(payload: bytes) -> None:
    start = time.monotonic()
    with pytest.raises(dr.ReportRefused, match="hostile XML refused"):
        dr.parse_report(payload, "lol.xml")
    assert time.monotonic() - start < 1.0


def zero_stream(total: int) -> bytes:
    """``total`` zero bytes, gzip-compressed (about 1000:1)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [comp.compress(b"\0" * (1 << 20)) for _ in range(total >> 20)]
    out.append(comp.flush())
    return b"".join(out)


@pytest.mark.timeout(20)
def test_gzip_bomb_refused_quickly(tmp_path: Path) -> None:
    bomb = zero_stream(1 << 30)  # 1 GiB of zeros in about 1 MB
    assert len(bomb) < 2 * 1024 * 1024
    path = tmp_path / "bomb.xml.gz"
    path.write_bytes(bomb)
    start = time.monotonic()
    with pytest.raises(dr.ReportRefused, match="byte limit"):
        dr.load_file(path)
    assert time.monotonic() - start < 2.0


def _zip_with_lying_header(size: int) -> bytes:
    """A zip whose member inflates to ``size`` bytes but whose headers claim 100 bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("report.xml", "w", force_zip64=True) as member:
            block = b"\0" * (1 << 20)
            for _ in range(size >> 20):
                member.write(block)
    return buf.getvalue()


@pytest.mark.timeout(30)
def test_zip_bomb_refused_quickly(tmp_path: Path) -> None:
    bomb = _zip_with_lying_header(256 << 20)
    path = tmp_path / "bomb.zip"
    path.write_bytes(bomb)
    start = time.monotonic()
    with pytest.raises(dr.ReportRefused, match="zip bomb|byte limit"):
        dr.load_file(path)
    assert time.monotonic() - start < 2.0


def _zip_with_forged_sizes(real: int, claimed: int) -> bytes:
    """A zip whose member inflates to ``real`` bytes but whose headers claim ``claimed``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("report.xml", b"\0" * real)
    data = bytearray(buf.getvalue())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    assert int.from_bytes(data[local + 22 : local + 26], "little") == real
    data[local + 22 : local + 26] = claimed.to_bytes(4, "little")
    data[central + 24 : central + 28] = claimed.to_bytes(4, "little")
    return bytes(data)


@pytest.mark.timeout(30)
def test_zip_bomb_with_forged_sizes_is_refused() -> None:
    """Headers forged to pass the size and ratio checks: extraction stops and is refused."""
    bomb = _zip_with_forged_sizes(64 << 20, 500_000)
    with zipfile.ZipFile(io.BytesIO(bomb)) as zf:
        info = zf.infolist()[0]
    assert info.file_size == 500_000
    assert info.file_size / info.compress_size < dr.MAX_COMPRESSION_RATIO
    start = time.monotonic()
    with pytest.raises(dr.ReportRefused, match="cannot be extracted|byte limit"):
        dr.unzip_capped(bomb, cap=1 << 20)
    assert time.monotonic() - start < 2.0


def test_zip_with_too_many_members_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(dr.MAX_ZIP_MEMBERS + 1):
            zf.writestr(f"r{i}.xml", REPORT_A)
    with pytest.raises(dr.ReportRefused, match="members"):
        dr.report_documents("many.zip", buf.getvalue())


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"<feedback><report_metadata>", "not well-formed"),
        (b"<html><body>hi</body></html>", "not a DMARC"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
        (b"PK\x03\x04garbage", "zip"),
        (report("x", "1", [record("not-an-ip", 1, "none", "pass", "pass", [], [])]), "source_ip"),
    ],
)
def test_malformed_files_refused_with_clear_error(payload: bytes, message: str) -> None:
    with pytest.raises(dr.ReportRefused, match=message):
        for name, body in dr.report_documents("bad", payload):
            dr.parse_report(body, name)


@pytest.mark.timeout(60)
def test_cli_refuses_bombs_but_summarises_the_rest(tmp_path: Path) -> None:
    write_samples(tmp_path)
    (tmp_path / "lol.xml").write_bytes(BILLION_LAUGHS)
    (tmp_path / "bomb.xml.gz").write_bytes(zero_stream(256 << 20))
    (tmp_path / "bomb.zip").write_bytes(_zip_with_lying_header(256 << 20))
    start = time.monotonic()
    res = run_cli("--relay-ip", RELAY_V4, str(tmp_path))
    assert time.monotonic() - start < 15
    assert res.returncode == 2, res.stdout + res.stderr
    assert "3 report(s) from 6 file(s), 3 refused" in res.stdout
    assert res.stderr.count("REFUSED") == 3
    assert "Traceback" not in res.stderr
    assert f"FLAG {SPOOFER}" in res.stdout


def test_missing_file_is_a_clear_refusal(tmp_path: Path) -> None:
    res = run_cli(str(tmp_path / "nope.xml"))
    assert res.returncode == 2
    assert "REFUSED" in res.stderr and "cannot read" in res.stderr
    assert os.path.basename("nope.xml") in res.stderr


def test_reports_for_several_domains_are_summarised_per_domain(tmp_path: Path) -> None:
    other = report("google.com", "444", [SPOOF]).replace(
        b"<domain>example.com</domain>\n    <adkim>", b"<domain>example.org</domain>\n    <adkim>"
    )
    assert b"<domain>example.org</domain>" in other
    (tmp_path / "a.xml").write_bytes(report("google.com", "9", [GOOD_RELAY_V4]))
    (tmp_path / "b.xml").write_bytes(other)
    (tmp_path / "c.xml").write_bytes(
        report("google.com", "5", [SPOOF]).replace(
            b"example.com</domain>\n    <adkim>", b"elsewhere.net</domain>\n    <adkim>"
        )
    )
    res = run_cli(
        "--relay-ip", RELAY_V4, "--domain", "example.com", "--domain", "example.org", str(tmp_path)
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "SKIPPED report google.com id=5: about elsewhere.net" in res.stdout
    assert "2 report(s) from 3 file(s), 0 refused" in res.stdout
    assert "domain example.com: 1 report(s)" in res.stdout
    assert "domain example.org: 1 report(s)" in res.stdout
    assert f"  FLAG {SPOOFER} count=5" in res.stdout.split("domain example.org")[1]
    assert f"example.com: none; example.org: {SPOOFER}" in res.stdout
