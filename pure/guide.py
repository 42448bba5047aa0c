"""The Gmail "Send mail as" guide, rendered as Markdown from plain values.

Pure: no Pulumi, no I/O. ``__main__.py`` feeds it resolved outputs (for example
through ``pulumi.Output.all(...).apply(...)``) and exports the text as
``gmailGuide``. The SMTP password is left out unless ``include_password`` is set:
the guide is a plain (non-secret) output and is meant to be written to a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pure.host_scripts import SMARTHOST_FIX, port25_summary

MANUAL_DNS_MODES = frozenset({"manual", "none", "zone", "zonefile"})


@dataclass(frozen=True)
class SendAs:
    """One "Send mail as" identity: the From address and the SMTP login for it."""

    address: str
    username: str
    display_name: str = ""
    # The key of this login in the smtpPasswords output, when it differs from username.
    password_key: str = ""
    # What the login may send as (smtpSendAs): addresses and "@domain"s; empty: unknown.
    may_send_as: Sequence[str] = ()


@dataclass(frozen=True)
class GuideInput:
    smtp_server: str
    smtp_port: int
    identities: Sequence[SendAs]
    domain: str
    dns_provider: str = "cloudflare"
    dns_records: Sequence[Mapping[str, object]] = field(default_factory=tuple)
    # Only ever filled when the user explicitly asked for the password in the guide.
    passwords: Mapping[str, str] | None = None
    stack_name: str = ""
    # The VPS's public addresses (vpsIpv4, vpsIpv6) and the relay's HELO name (relayHost,
    # default smtp_server): each address needs a PTR to that name.
    vps_addresses: Sequence[str] = ()
    relay_host: str = ""
    # The outboundSmtp output (the VPS's port 25 check), when known.
    outbound_smtp: Mapping[str, Mapping[str, str]] | None = None
    # outboundIpv6, delayWarningTime and forwardTo of the stack config.
    outbound_ipv6: str = "prefer-ipv4"
    delay_warning_time: str = "4h"
    forward_to: str = ""
    # Every domain of the stack (the primary first), and the DMARC report authorizations
    # (RFC 7489 7.1) that the owner of a report address outside them must publish.
    domains: Sequence[str] = ()
    report_authorizations: Sequence[Mapping[str, str]] = ()
    # The vpsProvider output: "hetzner" when the stack created the server (and its PTRs).
    vps_provider: str = ""


HETZNER_PORT25 = (
    "Hetzner Cloud blocks outbound ports 25 and 465 on new accounts. Once the account's "
    "first invoice is paid, ask for them to be opened: a request to unblock port 25/465 "
    "from the Hetzner Cloud Console (the project's limits, or a support request; say it "
    "is a relay for your own domain's mail, with SPF, DKIM and DMARC). Meanwhile a "
    f"smarthost on port 587 works: `{SMARTHOST_FIX}`."
)


def _port25_line(inp: GuideInput, stack: str) -> str:
    results = inp.outbound_smtp
    if not results:
        return (
            "**Outbound port 25:** the relay delivers to receivers' mail servers on port 25, "
            "which many VPS providers block for new accounts. `pulumi up` checks it from the "
            f"VPS and reports it in `pulumi stack output{stack} outboundSmtp`."
        ) + (" " + HETZNER_PORT25 if inp.vps_provider == "hetzner" else "")
    probe = next(iter(results.values())).get("probe", "")
    line = (
        f"**Outbound port 25** (checked from the VPS toward `{probe}` at the last "
        f"`pulumi up`): {port25_summary(results)}."
    )
    if any(r.get("status") != "open" for r in results.values()) and inp.vps_provider == "hetzner":
        line += " " + HETZNER_PORT25
    elif any(r.get("status") != "open" for r in results.values()):
        line += (
            " Until it is open, mail waits in the relay's queue: ask your VPS provider to "
            "open outbound port 25 (SMTP), or send through a smarthost on port 587 "
            f"(`{SMARTHOST_FIX}`)."
        )
    return line


def _send_as_lines(ident: SendAs) -> list[str]:
    """What this login may add in "Send mail as" (the relay refuses any other sender)."""
    if not ident.may_send_as:
        return []
    parts = [
        f"any address at `{p[1:]}`" if p.startswith("@") else f"`{p}`" for p in ident.may_send_as
    ]
    return [
        (
            f"The login `{ident.username}` may send as {', '.join(parts)}: add each such "
            "address in Gmail the same way, with the same SMTP settings. The relay refuses "
            "any other sender (553 5.7.1 for the envelope sender, 550 5.7.1 for the From "
            "header)."
        ),
        "",
    ]


def _report_authorization_lines(inp: GuideInput) -> list[str]:
    if not inp.report_authorizations:
        return []
    rows = [
        f"| TXT | {_md_cell(a.get('name', ''))} | `{_md_cell(a.get('value', 'v=DMARC1'))}` |"
        for a in inp.report_authorizations
    ]
    return [
        "### DMARC reports sent to another domain",
        "",
        (
            "A DMARC report address (dmarcRua/dmarcRuf) in a domain this stack does not "
            "manage is used by receivers only when that domain says it accepts the reports "
            "(RFC 7489 section 7.1). Ask whoever runs that domain to publish (most report "
            "services do it for you when you register the domain with them):"
        ),
        "",
        "| Type | Name | Content |",
        "| --- | --- | --- |",
        *rows,
        "",
    ]


def _domain_list(inp: GuideInput) -> str:
    """`a.example`, or `a.example` and `b.example` (each domain's records are below)."""
    names = [f"`{d}`" for d in (inp.domains or [inp.domain])]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _md_cell(value: object) -> str:
    """Escape a value for a Markdown table cell (pipes and newlines)."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    return text.replace("|", "\\|")


def _password_line(inp: GuideInput, ident: SendAs, index: int) -> str:
    key = ident.password_key or ident.username
    if inp.passwords is not None and key in inp.passwords:
        return f"   - **Password:** `{inp.passwords[key]}`"
    stack = f" --stack {inp.stack_name}" if inp.stack_name else ""
    if index == 0:
        cmd = f"pulumi stack output{stack} --show-secrets smtpPassword"
    else:
        cmd = (
            f"pulumi stack output{stack} --show-secrets --json smtpPasswords"
            f" | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"{key}\"])'"
        )
    return f"   - **Password:** the relay password, printed by `{cmd}`"


def is_manual_dns(dns_provider: str) -> bool:
    return dns_provider.strip().lower() in MANUAL_DNS_MODES


def render_dns_table(records: Sequence[Mapping[str, object]]) -> str:
    lines = ["| Type | Name | Content | TTL |", "| --- | --- | --- | --- |"]
    for rec in records:
        content = _md_cell(rec.get("content", ""))
        lines.append(
            f"| {_md_cell(rec.get('type', ''))} | {_md_cell(rec.get('name', ''))} "
            f"| `{content}` | {_md_cell(rec.get('ttl', ''))} |"
        )
    return "\n".join(lines)


def _reverse_dns_section(inp: GuideInput, step: int, stack: str) -> list[str]:
    host = inp.relay_host or inp.smtp_server
    rows = [f"| `{_md_cell(a)}` | `{_md_cell(host)}` |" for a in inp.vps_addresses]
    passes = " and ".join(f"`PASS dns.ptr[{a}]`" for a in inp.vps_addresses)
    if inp.vps_provider == "hetzner":
        return [
            f"## {step}. Reverse DNS: set by the stack",
            "",
            (
                "The stack created the server and set the reverse DNS (PTR) of both its "
                f"addresses to `{host}`, the name the relay greets receivers with; Gmail "
                "rejects mail from an address without one that resolves back."
            ),
            "",
            "| VPS address | Reverse DNS (PTR) |",
            "| --- | --- |",
            *rows,
            "",
            (
                f"Once the A/AAAA records of `{host}` are visible, check it with "
                f"`pulumi stack output{stack} --json --show-secrets | bin/dkim-relay verify`: "
                f"it should print {passes}."
            ),
            "",
            *_ipv6_sending_note(inp, host),
        ]
    return [
        f"## {step}. Reverse DNS: set the PTR of each VPS address at your VPS provider",
        "",
        (
            "Gmail and most receivers reject mail from an address whose reverse DNS (PTR) "
            "is missing or names a host that does not resolve back to it (over IPv6 Gmail "
            "answers `550-5.7.1 ... does not meet IPv6 sending guidelines regarding PTR "
            f"records`). The relay greets receivers as `{host}`, so give every address of "
            "the VPS that name. The PTR is set at your VPS provider, not at your DNS host: "
            "in its control panel (the server's network or IP settings) or, with some "
            "providers, by a support ticket."
        ),
        "",
        "| VPS address | Reverse DNS (PTR) to set |",
        "| --- | --- |",
        *rows,
        "",
        (
            f"Many providers accept the PTR only once the A/AAAA records of `{host}` are "
            "visible. Then check it with "
            f"`pulumi stack output{stack} --json --show-secrets | bin/dkim-relay verify`: "
            f"it should print {passes}; otherwise it names the PTR to set."
        ),
        "",
        *_ipv6_sending_note(inp, host),
    ]


def _ipv6_sending_note(inp: GuideInput, host: str) -> list[str]:
    v6 = [a for a in inp.vps_addresses if ":" in a]
    if not v6:
        return []
    check = f"`PASS dns.ptr[{v6[0]}]`"
    if inp.outbound_ipv6 == "any":
        text = (
            "The relay sends over IPv6 too (outboundIpv6: `any`): keep the PTR of "
            f"`{v6[0]}` pointing at `{host}` ({check}), or Gmail refuses that mail. Without "
            "it, go back to IPv4: `pulumi config set outboundIpv6 prefer-ipv4`."
        )
    elif inp.outbound_ipv6 == "never":
        text = (
            "The relay never sends over IPv6 (outboundIpv6: `never`), not even to a "
            "server that has only IPv6."
        )
    else:
        text = (
            "The relay sends over IPv4 wherever the receiver has it (outboundIpv6: "
            f"`prefer-ipv4`). Once the PTR of `{v6[0]}` points at `{host}` and resolves "
            f"back ({check}), IPv6 may be used too: `pulumi config set outboundIpv6 any`."
        )
    return [text, ""]


def _notices_section(inp: GuideInput, step: int) -> list[str]:
    host = inp.relay_host or inp.smtp_server
    if inp.forward_to:
        inbound = (
            f"This stack forwards mail for `@{inp.domain}` to `{inp.forward_to}` "
            "(forwardTo), so they reach you there."
        )
    else:
        inbound = (
            f"This stack receives no mail for `@{inp.domain}`: without `forwardTo` "
            "(`pulumi config set forwardTo you@gmail.com`, with Cloudflare DNS) or an MX "
            "of your own for the domain, these notices are lost."
        )
    return [
        f"## {step}. Notices about undelivered mail",
        "",
        (
            "When a receiver refuses a message, or it is still waiting in the relay's "
            f"queue after {inp.delay_warning_time} (delayWarningTime), the relay writes to "
            f"the sender's address from `MAILER-DAEMON@{host}`, signed with the DKIM key of "
            f"`{inp.domain}` so that it passes DMARC. {inbound}"
        ),
        "",
    ]


def render_guide(inp: GuideInput) -> str:
    """Render the whole guide. Deterministic for equal inputs."""
    if not inp.identities:
        raise ValueError("at least one Send-mail-as identity is needed")
    stack = f" --stack {inp.stack_name}" if inp.stack_name else ""
    tls_note = (
        'choose **"Secured connection using TLS"** (port 587 uses STARTTLS)'
        if inp.smtp_port == 587
        else f'choose **"Secured connection using TLS"** (port {inp.smtp_port})'
    )
    several = len(inp.domains) > 1
    title = ", ".join(f"@{d}" for d in inp.domains) if several else f"@{inp.domain}"
    key_of = "the sender's domain (each domain has its own key)" if several else f"`{inp.domain}`"
    out: list[str] = [
        f"# Sending as {title} from Gmail through your DKIM relay",
        "",
        (
            "Gmail hands mail for your domain to your own relay, which signs it with the "
            f"DKIM key of {key_of} and delivers it. Do the steps below once per address."
        ),
        "",
    ]
    step = 1
    if is_manual_dns(inp.dns_provider):
        out += [
            f"## {step}. Add these DNS records at your DNS host",
            "",
            (
                f"This stack does not manage DNS for {_domain_list(inp)} (dnsProvider: "
                f"`{inp.dns_provider}`). Sign in where your domain's DNS is hosted "
                "(registrar or DNS provider) and add exactly these records. Names are fully "
                "qualified; some providers want only the part before the domain "
                f"(for example `mail` instead of `mail.{inp.domain}.`). A TXT value shown as "
                'several quoted strings (`"..." "..."`) is one record: enter it as the '
                "provider asks, usually the quoted parts as they are."
            ),
            "",
            render_dns_table(inp.dns_records) if inp.dns_records else "_(no records)_",
            "",
            (
                "If your DNS host accepts a zone file import (BIND format), the same records "
                f"are in `pulumi stack output{stack} zoneSnippet`."
            ),
            "",
            "Wait until the records are visible (a few minutes to an hour) before sending.",
            "",
        ]
        step += 1

    if inp.vps_addresses:
        out += _reverse_dns_section(inp, step, stack)
        step += 1

    out += [
        _port25_line(inp, stack),
        "",
        f"## {step}. Add the address in Gmail",
        "",
    ]
    for index, ident in enumerate(inp.identities):
        name_hint = (
            f"`{ident.display_name}`" if ident.display_name else "the name recipients should see"
        )
        out += [
            f"### `{ident.address}`",
            "",
            "1. Open Gmail on the web, click the gear icon, then **See all settings**.",
            "2. Open the **Accounts and Import** tab.",
            '3. In **"Send mail as"**, click **"Add another email address"**.',
            (
                f"4. Name: {name_hint}. Email address: `{ident.address}`. "
                "Leave **Treat as an alias** checked unless you want replies kept apart. "
                "Click **Next Step**."
            ),
            "5. Fill in the SMTP settings:",
            f"   - **SMTP Server:** `{inp.smtp_server}`",
            f"   - **Port:** `{inp.smtp_port}`",
            f"   - **Username:** `{ident.username}`",
            _password_line(inp, ident, index),
            f"   - {tls_note}",
            *(["", *_send_as_lines(ident)] if ident.may_send_as else []),
            (
                "6. Click **Add Account**. Gmail sends a confirmation code to "
                f"`{ident.address}`; open that mail (or its link) and enter the code."
            ),
            (
                "7. Optional: back in **Accounts and Import**, pick "
                '**"Reply from the same address the message was sent to"**.'
            ),
            "",
        ]
    step += 1
    out += _report_authorization_lines(inp)
    out += _notices_section(inp, step)
    step += 1
    out += [
        f"## {step}. Check that mail is signed",
        "",
        (
            f"1. Send a message from `{inp.identities[0].address}` (choose it in the "
            "**From** field) to an address at another provider, or to another Gmail account."
        ),
        "2. Open the received message, click the three dots, then **Show original**.",
        (
            f"3. The summary at the top should say **DKIM: 'PASS' with domain {inp.domain}**, "
            "and SPF and DMARC should say **PASS** too."
        ),
        (
            "4. If DKIM shows a different domain (such as `gmail.com`) or FAIL, the mail did "
            "not go through the relay or the DKIM record does not match: run "
            "`bin/dkim-relay verify` with the stack outputs "
            f"(`pulumi stack output{stack} --json --show-secrets | bin/dkim-relay verify`)."
        ),
        "",
        "## Keep this guide",
        "",
        f"Write it to a file with `pulumi stack output{stack} gmailGuide > GMAIL.md`. "
        "The password is not in it"
        + (" (except where you asked for it: keep that file private)." if inp.passwords else ".")
        + " Read it any time with `pulumi stack output"
        + stack
        + " --show-secrets smtpPassword`.",
        "",
    ]
    return "\n".join(out)


def render_from_outputs(
    outputs: Mapping[str, object],
    *,
    from_addresses: Sequence[str] | None = None,
    include_password: bool = False,
    stack_name: str = "",
) -> str:
    """Render from a dict shaped like the stack outputs (``pulumi stack output --json``).

    ``from_addresses`` defaults to the SMTP usernames when they look like addresses,
    else ``<username>@<domain>``.
    """
    domain = str(outputs["domain"])
    usernames_obj = outputs.get("smtpUsernames") or [outputs["smtpUsername"]]
    if not isinstance(usernames_obj, (list, tuple)):
        raise TypeError("smtpUsernames must be a list")
    usernames = [str(u) for u in usernames_obj]
    if from_addresses is None:
        from_addresses = [u if "@" in u else f"{u}@{domain}" for u in usernames]
    if len(from_addresses) != len(usernames):
        raise ValueError("one From address per SMTP username is needed")
    pw_map = outputs.get("smtpPasswords")
    map_keys = [str(k) for k in pw_map] if isinstance(pw_map, Mapping) else []

    def key_for(login: str) -> str:
        # smtpPasswords may be keyed by login ("alice@example.com") or by name ("alice").
        local = login.split("@", 1)[0]
        return login if login in map_keys or local not in map_keys else local

    keys = [key_for(u) for u in usernames]
    passwords: dict[str, str] | None = None
    if include_password:
        passwords = {}
        if isinstance(pw_map, Mapping):
            passwords.update({str(k): str(v) for k, v in pw_map.items()})
        if outputs.get("smtpPassword") is not None:
            passwords.setdefault(keys[0], str(outputs["smtpPassword"]))
    addresses = [str(outputs[k]) for k in ("vpsIpv4", "vpsIpv6") if outputs.get(k)]
    send_as_obj = outputs.get("smtpSendAs")
    send_as = send_as_obj if isinstance(send_as_obj, Mapping) else {}
    domains_obj = outputs.get("domains")
    domains = [str(d) for d in domains_obj] if isinstance(domains_obj, (list, tuple)) else []
    auth_obj = outputs.get("dmarcReportAuthorizations")
    authorizations = (
        [a for a in auth_obj or [] if isinstance(a, Mapping)]
        if isinstance(auth_obj, (list, tuple))
        else []
    )
    outbound = outputs.get("outboundSmtp")
    records_obj = outputs.get("dnsRecords") or []
    if not isinstance(records_obj, (list, tuple)):
        raise TypeError("dnsRecords must be a list")
    return render_guide(
        GuideInput(
            smtp_server=str(outputs.get("smtpServer") or outputs["relayHost"]),
            smtp_port=int(str(outputs.get("smtpPort") or 587)),
            identities=[
                SendAs(a, u, password_key=k, may_send_as=_restricted(send_as.get(u), domains))
                for a, u, k in zip(from_addresses, usernames, keys, strict=True)
            ],
            domain=domain,
            dns_provider=str(outputs.get("dnsProvider") or "cloudflare"),
            dns_records=records_obj,
            passwords=passwords,
            stack_name=stack_name,
            vps_addresses=addresses,
            relay_host=str(outputs.get("relayHost") or ""),
            outbound_smtp=outbound if isinstance(outbound, Mapping) else None,
            outbound_ipv6=str(outputs.get("outboundIpv6") or "prefer-ipv4"),
            delay_warning_time=str(outputs.get("delayWarningTime") or "4h"),
            forward_to=str(outputs.get("forwardTo") or ""),
            domains=domains,
            report_authorizations=authorizations,
            vps_provider=str(outputs.get("vpsProvider") or ""),
        )
    )


def _restricted(entries: object, domains: Sequence[str]) -> list[str]:
    """The login's sendAs entries worth listing: none when it is one domain's "anything"
    (the guide's single-domain text already says so)."""
    listed = [str(e) for e in entries] if isinstance(entries, (list, tuple)) else []
    if len(domains) <= 1 and listed == [f"@{d}" for d in domains]:
        return []
    return listed
