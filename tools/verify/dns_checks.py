"""DNS checks: A/AAAA name the VPS, SPF passes for it, the DKIM key and DMARC are published,
and each VPS address has reverse DNS (PTR) that points back to it and names the relay.

The ``evaluate_*`` functions are pure; ``dns_checks`` asks a resolver (dnspython, with
pyspf and checkdmarc pointed at it) with timeouts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pure.txt import join_txt
from tools.verify.outputs import Target
from tools.verify.result import FAIL, PASS, WARN, Result


def parse_nameserver(value: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or bare IPv6 -> (ip, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", value)
    if m:
        host, port = m.group(1), int(m.group(2) or 53)
    elif value.count(":") == 1:
        host, port_s = value.split(":")
        port = int(port_s)
    else:
        host, port = value, 53
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    return host, port


def dkim_tags(value: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in value.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            tags[k.strip().lower()] = re.sub(r"\s+", "", v)
    return tags


def evaluate_addresses(kind: str, host: str, expected: str | None, got: Sequence[str]) -> Result:
    check = f"dns.{kind.lower()}"
    fix = f"publish {kind} {host} -> {expected} (pulumi up, or the dnsRecords output)"
    if expected is None:
        if got:
            return Result(
                WARN,
                check,
                f"{host} has {kind} {', '.join(got)} but the stack has no address of that family",
                f"remove the {kind} record or set the VPS address in the stack",
            )
        return Result(PASS, check, f"{host} has no {kind}, as the stack expects")
    if not got:
        return Result(FAIL, check, f"no {kind} answer for {host}", fix)
    want = ipaddress.ip_address(expected)
    addrs = [ipaddress.ip_address(a) for a in got]
    if addrs == [want]:
        return Result(PASS, check, f"{host} {kind} {expected}")
    if want in addrs:
        return Result(
            WARN,
            check,
            f"{host} {kind} {', '.join(got)}: includes {expected} but also others",
            f"leave only {expected}",
        )
    return Result(FAIL, check, f"{host} {kind} is {', '.join(got)}, expected {expected}", fix)


def evaluate_spf(ip: str, domain: str, result: str, explanation: str) -> Result:
    check = f"dns.spf[{ip}]"
    if result == "pass":
        return Result(PASS, check, f"SPF of {domain} passes for {ip}")
    fix = f"add ip{ipaddress.ip_address(ip).version}:{ip} to the SPF record of {domain}"
    detail = f"SPF of {domain} gives '{result}' for {ip}"
    if explanation:
        detail += f" ({explanation})"
    if result in ("temperror",):
        return Result(FAIL, check, detail, "check the DNS server answers (--nameserver)")
    return Result(FAIL, check, detail, fix)


def evaluate_dkim(name: str, txt_records: Sequence[str], expected_value: str) -> Result:
    """``txt_records``: each TXT record's strings already joined."""
    check = "dns.dkim"
    fix = f"publish TXT {name} with the stack's dkimDnsValue (pulumi up, or dnsRecords)"
    if not txt_records:
        return Result(FAIL, check, f"no TXT record at {name}", fix)
    dkim = [t for t in txt_records if t.lower().startswith("v=dkim1") or "p=" in t]
    if len(dkim) > 1:
        return Result(FAIL, check, f"{len(dkim)} DKIM records at {name}; keep one", fix)
    if not dkim:
        return Result(FAIL, check, f"TXT at {name} is not a DKIM key record", fix)
    got = dkim[0]
    want = join_txt(expected_value)
    if got == want:
        return Result(PASS, check, f"{name} holds the signing key")
    got_p, want_p = dkim_tags(got).get("p", ""), dkim_tags(want).get("p", "")
    if got_p and got_p == want_p:
        return Result(PASS, check, f"{name} holds the signing key (same p=, other formatting)")
    if not got_p:
        return Result(FAIL, check, f"{name} has an empty or missing p= (key revoked)", fix)
    return Result(
        FAIL,
        check,
        f"{name} holds a different key (p={got_p[:12]}..., expected p={want_p[:12]}...)",
        fix,
    )


def _same_name(a: str, b: str) -> bool:
    return a.rstrip(".").lower() == b.rstrip(".").lower()


def evaluate_ptr(
    ip: str, relay_host: str, ptr_names: Sequence[str], forward: Mapping[str, Sequence[str]]
) -> Result:
    """The reverse DNS of one VPS address.

    ``ptr_names``: the PTR answers for ``ip``; ``forward``: each name's A (IPv4) or AAAA
    (IPv6) answers. Receivers such as Gmail reject mail from an address without a PTR
    that resolves back to it (forward-confirmed); the relay's HELO name is ``relay_host``,
    so that is the name the PTR should hold.
    """
    check = f"dns.ptr[{ip}]"
    kind = "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"
    set_ptr = f"set the reverse DNS (PTR) of {ip} to {relay_host} at your VPS provider"
    if not ptr_names:
        return Result(
            FAIL,
            check,
            f"{ip} has no reverse DNS (PTR); receivers such as Gmail reject its mail",
            f"{set_ptr} (its control panel, or a support ticket)",
        )
    want = ipaddress.ip_address(ip)
    names = [n.rstrip(".") for n in ptr_names]
    confirmed = [n for n in names if want in {ipaddress.ip_address(a) for a in forward.get(n, ())}]
    ours = any(_same_name(n, relay_host) for n in names)
    shown = ", ".join(names)
    if not confirmed:
        back = "; ".join(f"{n} has {kind} {', '.join(forward.get(n, ())) or 'none'}" for n in names)
        detail = f"PTR of {ip} is {shown}, which does not resolve back to {ip} ({back})"
        if ours:
            fix = f"publish {kind} {relay_host} -> {ip} (pulumi up, or the dnsRecords output)"
        else:
            fix = f"{set_ptr}, in place of {shown}, which does not resolve back to {ip}"
        return Result(FAIL, check, detail, fix)
    if not any(_same_name(n, relay_host) for n in confirmed):
        return Result(
            WARN,
            check,
            f"PTR of {ip} is {shown}, which resolves back, but not {relay_host}, "
            "the name the relay greets with (HELO)",
            f"{set_ptr}, in place of {shown}",
        )
    if len(names) > 1:
        return Result(
            WARN,
            check,
            f"{ip} has several PTR names ({shown}); receivers may pick any",
            f"leave only the PTR {relay_host} for {ip} at your VPS provider",
        )
    return Result(PASS, check, f"PTR of {ip} is {relay_host}, which resolves back to {ip}")


def make_resolver(nameserver: tuple[str, int] | None, timeout: float) -> Any:
    import dns.resolver

    if nameserver is None:
        res = dns.resolver.Resolver()
    else:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [nameserver[0]]
        res.port = nameserver[1]
    res.timeout = timeout
    res.lifetime = timeout
    return res


def _dns_error(exc: Exception) -> str:
    import dns.exception
    import dns.resolver

    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "no such name (NXDOMAIN)"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "no answer of that type"
    if isinstance(exc, dns.exception.Timeout):
        return "DNS timeout (is the nameserver reachable?)"
    if isinstance(exc, dns.resolver.NoNameservers):
        return f"no nameserver answered ({exc})"
    return f"{type(exc).__name__}: {exc}"


def resolve(res: Any, name: str, rtype: str) -> tuple[list[Any], str]:
    """Answers and an error text ('' when fine; NXDOMAIN/NoAnswer give [] with a note)."""
    import dns.exception
    import dns.resolver

    try:
        return list(res.resolve(name, rtype)), ""
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
        return [], _dns_error(exc)
    except dns.exception.DNSException as exc:
        return [], _dns_error(exc)


@contextmanager
def spf_dns_through(res: Any) -> Iterator[None]:
    """Point pyspf's lookups at our resolver (pyspf reads a module-level DNSLookup)."""
    import dns.exception
    import dns.resolver
    import spf

    def lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20) -> list[Any]:
        out: list[Any] = []
        try:
            answers = res.resolve(name, qtype, lifetime=min(timeout, res.lifetime))
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return out
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS {_dns_error(exc)}") from exc
        for rdata in answers:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out

    saved = spf.DNSLookup
    spf.DNSLookup = lookup
    try:
        yield
    finally:
        spf.DNSLookup = saved


def dns_checks(t: Target, res: Any, timeout: float) -> Iterator[Result]:
    for kind, expected in (("A", t.ipv4), ("AAAA", t.ipv6)):
        answers, err = resolve(res, t.relay_host, kind)
        if not answers and ("timeout" in err or err.startswith("no nameserver")):
            yield Result(
                FAIL, f"dns.{kind.lower()}", f"{t.relay_host}: {err}", "check --nameserver"
            )
            continue
        yield evaluate_addresses(kind, t.relay_host, expected, [a.address for a in answers])

    import spf

    with spf_dns_through(res):
        for ip in (t.ipv4, t.ipv6):
            if not ip:
                continue
            try:
                q = spf.query(
                    i=ip, s=f"postmaster@{t.domain}", h=t.relay_host, timeout=timeout, querytime=0
                )
                result, _code, expl = q.check()
            except Exception as exc:  # noqa: BLE001 - pyspf raises assorted errors
                result, expl = "temperror", f"{type(exc).__name__}: {exc}"
            yield evaluate_spf(ip, t.domain, str(result), str(expl))

    name = f"{t.selector}._domainkey.{t.domain}"
    answers, err = resolve(res, name, "TXT")
    if err and not answers and ("timeout" in err or err.startswith("no nameserver")):
        yield Result(FAIL, "dns.dkim", f"{name}: {err}", "check --nameserver")
    else:
        txts = [b"".join(a.strings).decode("utf-8", "replace") for a in answers]
        yield evaluate_dkim(name, txts, t.dkim_value)

    yield dmarc_check(t.domain, res, timeout)
    yield from other_selectors_and_domains(t, res, timeout)

    for ip in (t.ipv4, t.ipv6):
        if ip:
            yield ptr_check(ip, t.relay_host, res)


def _named(result: Result, suffix: str) -> Result:
    return Result(result.status, f"{result.check}[{suffix}]", result.detail, result.fix)


def other_selectors_and_domains(t: Target, res: Any, timeout: float) -> Iterator[Result]:
    """Every published selector besides the primary's signing one, and each other domain's
    SPF and DMARC; their checks are named with the domain (``dns.spf[b.example/<ip>]``,
    ``dns.dkim[<selector>._domainkey.<domain>]``, ``dns.dmarc[b.example]``)."""
    import spf

    for domain, selectors in t.dkim_by_domain:
        primary = domain == t.domain
        if not primary:
            with spf_dns_through(res):
                for ip in (t.ipv4, t.ipv6):
                    if not ip:
                        continue
                    try:
                        q = spf.query(
                            i=ip,
                            s=f"postmaster@{domain}",
                            h=t.relay_host,
                            timeout=timeout,
                            querytime=0,
                        )
                        result, _code, expl = q.check()
                    except Exception as exc:  # noqa: BLE001 - pyspf raises assorted errors
                        result, expl = "temperror", f"{type(exc).__name__}: {exc}"
                    got = evaluate_spf(ip, domain, str(result), str(expl))
                    yield Result(got.status, f"dns.spf[{domain}/{ip}]", got.detail, got.fix)
        for selector, value in selectors:
            if primary and selector == t.selector:
                continue  # dns.dkim above
            name = f"{selector}._domainkey.{domain}"
            answers, err = resolve(res, name, "TXT")
            if err and not answers and ("timeout" in err or err.startswith("no nameserver")):
                yield Result(FAIL, f"dns.dkim[{name}]", f"{name}: {err}", "check --nameserver")
                continue
            txts = [b"".join(a.strings).decode("utf-8", "replace") for a in answers]
            yield _named(evaluate_dkim(name, txts, value), name)
        if not primary:
            yield _named(dmarc_check(domain, res, timeout), domain)


def ptr_check(ip: str, relay_host: str, res: Any) -> Result:
    import dns.reversename

    answers, err = resolve(res, dns.reversename.from_address(ip).to_text(), "PTR")
    if not answers and ("timeout" in err or err.startswith("no nameserver")):
        return Result(FAIL, f"dns.ptr[{ip}]", f"PTR of {ip}: {err}", "check --nameserver")
    names = [a.target.to_text(omit_final_dot=True) for a in answers]
    kind = "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"
    forward = {n: [a.address for a in resolve(res, n, kind)[0]] for n in names}
    return evaluate_ptr(ip, relay_host, names, forward)


def dmarc_check(domain: str, res: Any, timeout: float) -> Result:
    import checkdmarc.dmarc as cd

    try:
        got = cd.get_dmarc_record(domain, resolver=res, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - checkdmarc's errors all derive from Exception
        name = type(exc).__name__
        if "NotFound" in name:
            fix = f'publish TXT _dmarc.{domain} "v=DMARC1; p=none; ..." (pulumi up)'
        else:
            fix = "correct the DMARC record (see the dnsRecords output)"
        return Result(FAIL, "dns.dmarc", f"_dmarc.{domain}: {name}: {exc}", fix)
    parsed = got.get("parsed", {})
    tags = parsed.get("tags", {}) if isinstance(parsed, Mapping) else {}
    p = tags.get("p", {}).get("value", "?") if isinstance(tags, Mapping) else "?"
    warnings = parsed.get("warnings", []) if isinstance(parsed, Mapping) else []
    detail = f"_dmarc.{domain} parses: p={p}"
    if warnings:
        return Result(WARN, "dns.dmarc", f"{detail}; warnings: {'; '.join(warnings)}")
    return Result(PASS, "dns.dmarc", detail)
