"""Summarise DMARC aggregate reports (RFC 7489 Appendix C) without a third-party service.

Usage::

    dkim-relay dmarc-report [--relay-ip IP ...] PATH [PATH ...]

PATH is a report file (``.xml``, ``.xml.gz``, ``.gz``, ``.zip``) or a folder of them
(searched recursively). Prints one line per source IP with message count, the
policy-evaluated DKIM/SPF alignment, the raw SPF/DKIM results and the disposition,
and flags sources that fail DMARC and are not one of the ``--relay-ip`` addresses.

Hostile input is refused, never expanded: XML with a DTD, entities or external
references (defusedxml, ``forbid_dtd``), a decompressed report over
``--max-bytes`` (streamed, so a gzip/zip bomb stops at the cap), a zip with too many
members or a too-high compression ratio.

Exit status: 0 when every file was read and no unexpected failing source was seen;
1 when some sources failed DMARC and are not the relay; 2 when any file was
refused or unreadable (the other files are still summarised). Refusal wins over 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from xml.etree.ElementTree import Element

import defusedxml
from defusedxml import ElementTree as SafeET

MAX_REPORT_BYTES = 20 * 1024 * 1024
MAX_ZIP_MEMBERS = 16
MAX_COMPRESSION_RATIO = 200
MAX_RECORDS = 200_000
CHUNK = 64 * 1024
SUFFIXES = (".xml", ".xml.gz", ".gz", ".zip")


class ReportRefused(Exception):
    """A report that is hostile, too big or not a DMARC aggregate report."""


@dataclass(frozen=True)
class Record:
    source_ip: str
    count: int
    disposition: str
    dkim_aligned: str  # policy_evaluated/dkim: pass|fail
    spf_aligned: str  # policy_evaluated/spf: pass|fail
    header_from: str
    dkim_results: tuple[tuple[str, str, str], ...]  # (domain, selector, result)
    spf_results: tuple[tuple[str, str], ...]  # (domain, result)

    @property
    def dmarc_pass(self) -> bool:
        return self.dkim_aligned == "pass" or self.spf_aligned == "pass"


@dataclass(frozen=True)
class Report:
    org_name: str
    report_id: str
    begin: int
    end: int
    domain: str
    policy: str
    records: tuple[Record, ...]


@dataclass
class SourceSummary:
    source_ip: str
    count: int = 0
    dmarc_pass: int = 0
    dkim_aligned: dict[str, int] = field(default_factory=dict)
    spf_aligned: dict[str, int] = field(default_factory=dict)
    dkim_results: dict[str, int] = field(default_factory=dict)
    spf_results: dict[str, int] = field(default_factory=dict)
    dispositions: dict[str, int] = field(default_factory=dict)

    @property
    def dmarc_fail(self) -> int:
        return self.count - self.dmarc_pass


# ---------------------------------------------------------------- reading (bounded)


def _read_capped(stream: IO[bytes], cap: int, what: str) -> bytes:
    """Read at most ``cap`` bytes; refuse the input if it has more."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > cap:
            raise ReportRefused(f"{what}: decompressed size exceeds the {cap} byte limit")
        chunks.append(chunk)


def gunzip_capped(data: bytes, cap: int = MAX_REPORT_BYTES, what: str = "gzip") -> bytes:
    """Stream-decompress gzip data (all members) with an output cap."""
    out: list[bytes] = []
    total = 0
    rest = data
    while rest:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        buf = rest
        try:
            while not d.eof:
                piece = d.decompress(buf, CHUNK)
                total += len(piece)
                if total > cap:
                    raise ReportRefused(
                        f"{what}: decompressed size exceeds the {cap} byte limit (gzip bomb?)"
                    )
                out.append(piece)
                buf = d.unconsumed_tail
                if not buf and not piece:
                    break
            if not d.eof:
                raise ReportRefused(f"{what}: truncated gzip data")
        except zlib.error as exc:
            raise ReportRefused(f"{what}: not valid gzip data ({exc})") from exc
        rest = d.unused_data.lstrip(b"\x00")
    return b"".join(out)


def unzip_capped(
    data: bytes,
    cap: int = MAX_REPORT_BYTES,
    what: str = "zip",
    max_members: int = MAX_ZIP_MEMBERS,
    max_ratio: int = MAX_COMPRESSION_RATIO,
) -> list[tuple[str, bytes]]:
    """The XML (or gzipped XML) members of a zip, each read with a cap."""
    import io

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ReportRefused(f"{what}: not a valid zip archive ({exc})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise ReportRefused(
                f"{what}: {len(infos)} members in the archive, the limit is {max_members}"
            )
        declared = sum(i.file_size for i in infos)
        if declared > cap * max_members:
            raise ReportRefused(f"{what}: declared size {declared} bytes is too large")
        members: list[tuple[str, bytes]] = []
        for info in infos:
            if info.is_dir():
                continue
            name = f"{what}:{info.filename}"
            if info.file_size > cap:
                raise ReportRefused(
                    f"{name}: declared size {info.file_size} exceeds the {cap} byte limit"
                )
            if info.compress_size and info.file_size / info.compress_size > max_ratio:
                raise ReportRefused(
                    f"{name}: compression ratio {info.file_size // info.compress_size}:1 "
                    f"exceeds {max_ratio}:1 (zip bomb?)"
                )
            try:
                with zf.open(info) as member:
                    # The declared size may lie: the read itself is capped too.
                    body = _read_capped(member, cap, name)
            except (
                zipfile.BadZipFile,
                zlib.error,
                NotImplementedError,
                RuntimeError,
            ) as exc:
                raise ReportRefused(f"{name}: cannot be extracted ({exc})") from exc
            if info.filename.lower().endswith(".gz"):
                body = gunzip_capped(body, cap, name)
            members.append((name, body))
        if not members:
            raise ReportRefused(f"{what}: the archive holds no report")
        return members


def report_documents(
    name: str, data: bytes, cap: int = MAX_REPORT_BYTES
) -> list[tuple[str, bytes]]:
    """The XML documents in one file's bytes, detected by magic bytes, not by name."""
    if data[:2] == b"\x1f\x8b":
        return [(name, gunzip_capped(data, cap, name))]
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        return unzip_capped(data, cap, name)
    if len(data) > cap:
        raise ReportRefused(f"{name}: {len(data)} bytes exceeds the {cap} byte limit")
    return [(name, data)]


# ---------------------------------------------------------------- parsing (pure)


def _text(el: Element | None, path: str, default: str = "") -> str:
    if el is None:
        return default
    found = el.find(path)
    if found is None or found.text is None:
        return default
    return found.text.strip()


def _strip_namespaces(root: Element) -> None:
    # RFC 7489bis reports may carry xmlns="urn:ietf:params:xml:ns:dmarc-2.0".
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.startswith("{"):
            el.tag = el.tag.split("}", 1)[1]


def parse_report(xml: bytes, name: str = "report") -> Report:
    """Parse one aggregate report. DTDs, entities and external references are refused."""
    try:
        root = SafeET.fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        raise ReportRefused(f"{name}: hostile XML refused ({type(exc).__name__}: {exc})") from exc
    except SafeET.ParseError as exc:
        raise ReportRefused(f"{name}: not well-formed XML ({exc})") from exc
    _strip_namespaces(root)
    if root.tag != "feedback":
        raise ReportRefused(f"{name}: root element is <{root.tag}>, not a DMARC <feedback>")
    meta = root.find("report_metadata")
    pol = root.find("policy_published")
    if meta is None or pol is None:
        raise ReportRefused(f"{name}: missing report_metadata or policy_published")
    rows = root.findall("record")
    if len(rows) > MAX_RECORDS:
        raise ReportRefused(f"{name}: {len(rows)} records, the limit is {MAX_RECORDS}")
    records: list[Record] = []
    for rec in rows:
        row = rec.find("row")
        source_ip = _text(row, "source_ip")
        try:
            ipaddress.ip_address(source_ip)
        except ValueError as exc:
            raise ReportRefused(f"{name}: bad source_ip {source_ip!r}") from exc
        try:
            count = int(_text(row, "count", "0"))
        except ValueError as exc:
            raise ReportRefused(f"{name}: bad count for {source_ip}") from exc
        if count < 0:
            raise ReportRefused(f"{name}: negative count for {source_ip}")
        pe = row.find("policy_evaluated") if row is not None else None
        auth = rec.find("auth_results")
        dkim = tuple(
            (
                _text(d, "domain"),
                _text(d, "selector"),
                _text(d, "result", "none").lower(),
            )
            for d in (auth.findall("dkim") if auth is not None else [])
        )
        spf = tuple(
            (_text(s, "domain"), _text(s, "result", "none").lower())
            for s in (auth.findall("spf") if auth is not None else [])
        )
        records.append(
            Record(
                source_ip=str(ipaddress.ip_address(source_ip)),
                count=count,
                disposition=_text(pe, "disposition", "none").lower(),
                dkim_aligned=_text(pe, "dkim", "fail").lower(),
                spf_aligned=_text(pe, "spf", "fail").lower(),
                header_from=_text(rec, "identifiers/header_from"),
                dkim_results=dkim,
                spf_results=spf,
            )
        )
    try:
        begin = int(_text(meta, "date_range/begin", "0"))
        end = int(_text(meta, "date_range/end", "0"))
    except ValueError as exc:
        raise ReportRefused(f"{name}: bad date_range") from exc
    return Report(
        org_name=_text(meta, "org_name"),
        report_id=_text(meta, "report_id"),
        begin=begin,
        end=end,
        domain=_text(pol, "domain"),
        policy=_text(pol, "p"),
        records=tuple(records),
    )


def _bump(d: dict[str, int], key: str, n: int) -> None:
    d[key] = d.get(key, 0) + n


def summarise(reports: Iterable[Report]) -> dict[str, SourceSummary]:
    """Per source IP totals over all reports, keyed by IP (sorted by count, descending)."""
    by_ip: dict[str, SourceSummary] = {}
    for report in reports:
        for rec in report.records:
            s = by_ip.setdefault(rec.source_ip, SourceSummary(rec.source_ip))
            s.count += rec.count
            if rec.dmarc_pass:
                s.dmarc_pass += rec.count
            _bump(s.dkim_aligned, rec.dkim_aligned, rec.count)
            _bump(s.spf_aligned, rec.spf_aligned, rec.count)
            _bump(s.dispositions, rec.disposition, rec.count)
            for _dom, _sel, result in rec.dkim_results or (("", "", "none"),):
                _bump(s.dkim_results, result, rec.count)
            for _dom, result in rec.spf_results or (("", "none"),):
                _bump(s.spf_results, result, rec.count)
    return dict(sorted(by_ip.items(), key=lambda kv: (-kv[1].count, kv[0])))


def by_domain(reports: Iterable[Report]) -> dict[str, list[Report]]:
    """The reports grouped by the domain they are about (policy_published), sorted."""
    out: dict[str, list[Report]] = {}
    for report in reports:
        out.setdefault(report.domain.lower().rstrip("."), []).append(report)
    return dict(sorted(out.items()))


def is_relay(ip: str, relay_ips: Sequence[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    for r in relay_ips:
        if addr in ipaddress.ip_network(r, strict=False):
            return True
    return False


def _fmt(d: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(d.items())) or "-"


def format_summary(summary: dict[str, SourceSummary], relay_ips: Sequence[str]) -> list[str]:
    """One line per source; ``FLAG`` marks a failing source that is not the relay."""
    lines = []
    for s in summary.values():
        relay = is_relay(s.source_ip, relay_ips)
        if s.dmarc_fail and not relay:
            mark = "FLAG"
        elif s.dmarc_fail:
            mark = "WARN"
        else:
            mark = "ok  "
        lines.append(
            f"{mark} {s.source_ip} count={s.count} dmarc_pass={s.dmarc_pass} "
            f"dmarc_fail={s.dmarc_fail} dkim_aligned[{_fmt(s.dkim_aligned)}] "
            f"spf_aligned[{_fmt(s.spf_aligned)}] dkim[{_fmt(s.dkim_results)}] "
            f"spf[{_fmt(s.spf_results)}] disposition[{_fmt(s.dispositions)}]"
            + (" (relay)" if relay else "")
        )
    return lines


def flagged_sources(summary: dict[str, SourceSummary], relay_ips: Sequence[str]) -> list[str]:
    return [ip for ip, s in summary.items() if s.dmarc_fail and not is_relay(ip, relay_ips)]


# ---------------------------------------------------------------- shell


def iter_report_files(paths: Sequence[str]) -> Iterator[Path]:
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.name.lower().endswith(SUFFIXES):
                    yield f
        else:
            yield path


def load_file(path: Path, cap: int = MAX_REPORT_BYTES) -> list[Report]:
    try:
        size = path.stat().st_size
        if size > cap:
            raise ReportRefused(f"{path}: file of {size} bytes exceeds the {cap} byte limit")
        with path.open("rb") as fh:
            data = _read_capped(fh, cap, str(path))
    except OSError as exc:
        raise ReportRefused(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return [parse_report(body, name) for name, body in report_documents(str(path), data, cap)]


def _ip_or_net(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IP address or network: {value}") from exc
    return value


SUMMARY = "summarise DMARC aggregate reports per source IP"
DESCRIPTION = "Summarise DMARC aggregate reports (.xml, .xml.gz, .zip) per source IP."


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("paths", nargs="+", metavar="PATH", help="report files or folders")
    ap.add_argument(
        "--relay-ip",
        action="append",
        default=[],
        type=_ip_or_net,
        help="the relay's address or network (repeatable); failing sources not listed are flagged",
    )
    ap.add_argument(
        "--domain",
        action="append",
        default=[],
        help="a domain of the stack (repeatable; the stack output `domains`): reports about "
        "other domains are skipped; every domain gets a summary of its own",
    )
    ap.add_argument(
        "--max-bytes",
        type=int,
        default=MAX_REPORT_BYTES,
        help=f"largest decompressed report accepted (default {MAX_REPORT_BYTES})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dkim-relay dmarc-report", description=DESCRIPTION)
    add_arguments(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Summarise the reports that `args` (parsed by `add_arguments`) name; the exit status."""

    reports: list[Report] = []
    refused = 0
    files = 0
    for f in iter_report_files(args.paths):
        files += 1
        try:
            reports.extend(load_file(f, args.max_bytes))
        except ReportRefused as exc:
            refused += 1
            print(f"REFUSED {exc}", file=sys.stderr)
    wanted = {d.lower().rstrip(".") for d in getattr(args, "domain", []) or []}
    if wanted:
        for r in reports:
            if r.domain.lower().rstrip(".") not in wanted:
                print(
                    f"SKIPPED report {r.org_name} id={r.report_id}: about {r.domain}, "
                    f"not {' or '.join(sorted(wanted))}"
                )
        reports = [r for r in reports if r.domain.lower().rstrip(".") in wanted]
    summary = summarise(reports)
    print(f"{len(reports)} report(s) from {files} file(s), {refused} refused")
    for r in reports:
        print(
            f"report {r.org_name} id={r.report_id} domain={r.domain} p={r.policy} "
            f"records={len(r.records)}"
        )
    groups = by_domain(reports)
    if len(groups) > 1:
        # Several domains (one relay signs for all): each domain's sources on their own.
        for domain, its in groups.items():
            its_summary = summarise(its)
            print(f"domain {domain}: {len(its)} report(s)")
            for line in format_summary(its_summary, args.relay_ip):
                print(f"  {line}")
        print("all domains:")
    for line in format_summary(summary, args.relay_ip):
        print(line)
    flagged = flagged_sources(summary, args.relay_ip)
    if flagged:
        print(
            f"{len(flagged)} source(s) fail DMARC and are not the relay: {', '.join(flagged)}"
            " (someone else sends as your domain, or a sender you use is not set up)"
            + (
                "; per domain: "
                + "; ".join(
                    f"{d}: {', '.join(flagged_sources(summarise(rs), args.relay_ip)) or 'none'}"
                    for d, rs in groups.items()
                )
                if len(groups) > 1
                else ""
            )
        )
    if refused:
        return 2
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
