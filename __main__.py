"""dkim-relay: a DKIM-signing SMTP relay for Gmail's "Send mail as", owned by one stack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.config import is_config_secret

from components.cloud_server import HetznerServer, HetznerServerArgs
from components.credentials import SmtpCredentials, SmtpCredentialsArgs
from components.dkim import DkimKey, DkimKeyArgs
from components.dns import MailDns, MailDnsArgs
from components.host import RelayHost, RelayHostArgs, agent_problem
from components.relay import LocalEngine, RemoteEngine, SmtpRelay, SmtpRelayArgs, SmtpUserSpec
from components.sink import LocalSink, LocalSinkArgs
from pure import postfix
from pure.cloud_server import METADATA_ADDRESS
from pure.cloud_server import labels as cloud_labels
from pure.config import ConfigError, RelayConfig, config_types, load_config
from pure.guide import render_from_outputs
from pure.relay_container import LOCAL_DOCKER_HOST, SINK_HOST_NUMBER, host_address

PROJECT = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()


def _lookup_zone(raw: dict[str, Any]) -> None:
    """Find the Cloudflare zone (and its account, for Email Routing) when not given."""
    if raw.get("dnsProvider") != "cloudflare" or not raw.get("domain"):
        return
    needs_account = raw.get("forwardTo") and not raw.get("cloudflareAccountId")
    if raw.get("cloudflareZoneId") and not needs_account:
        return
    import pulumi_cloudflare as cloudflare

    try:
        if raw.get("cloudflareZoneId"):
            zone = cloudflare.get_zone(zone_id=raw["cloudflareZoneId"])
        else:
            zone = cloudflare.get_zone(
                filter=cloudflare.GetZoneFilterArgs(name=raw["domain"], match="all")
            )
    except Exception as err:  # the provider's error says why (token, network, no zone)
        pulumi.log.warn(f"Cloudflare zone lookup for {raw['domain']} failed: {err}")
        return
    raw.setdefault("cloudflareZoneId", zone.id)
    if zone.account and zone.account.id:
        raw.setdefault("cloudflareAccountId", zone.account.id)


def _lookup_extra_zones(raw: dict[str, Any]) -> None:
    """Each extra domain's own Cloudflare zone, looked up by its name when not given."""
    items = raw.get("extraDomains")
    if raw.get("dnsProvider") != "cloudflare" or not isinstance(items, list):
        return
    import pulumi_cloudflare as cloudflare

    looked_up = []
    for item in items:
        if isinstance(item, dict) and item.get("domain") and not item.get("cloudflareZoneId"):
            try:
                zone = cloudflare.get_zone(
                    filter=cloudflare.GetZoneFilterArgs(name=str(item["domain"]), match="all")
                )
            except Exception as err:  # the provider's error says why
                pulumi.log.warn(f"Cloudflare zone lookup for {item['domain']} failed: {err}")
            else:
                item = {**item, "cloudflareZoneId": zone.id}
        looked_up.append(item)
    raw["extraDomains"] = looked_up


# Pulumi's getter for each JSON type the model declares (Pulumi.yaml declares the same).
GETTERS: dict[str, Callable[[pulumi.Config, str], Any]] = {
    "string": pulumi.Config.get,
    "integer": pulumi.Config.get_int,
    "boolean": pulumi.Config.get_bool,
    "array": pulumi.Config.get_object,
}


def read_config() -> tuple[RelayConfig, pulumi.Config]:
    config = pulumi.Config()
    raw: dict[str, Any] = {}
    for key, kind in config_types().items():
        try:
            value = GETTERS[kind](config, key)
        except pulumi.ConfigTypeError:
            value = config.get(key)  # as written, for validation to say what is wrong
        if value not in (None, ""):  # "" is Pulumi.yaml's "not set"
            raw[key] = value
    _lookup_zone(raw)
    _lookup_extra_zones(raw)
    secrets_set = {
        key
        for key in ("sshPrivateKey", "relayNexthopPassword")
        if config.get_secret(key) is not None
    }
    if pulumi.Config("hcloud").get_secret("token") is not None:
        secrets_set.add("hcloud:token")
    # Each secret key, as the stack file holds it: encrypted, or (wrongly) in plain text.
    full = {k: k if ":" in k else f"{pulumi.get_project()}:{k}" for k in secrets_set}
    plain = {k for k in secrets_set if not is_config_secret(full[k])}
    try:
        cfg = load_config(raw, secrets_set, plain)
    except ConfigError as err:
        raise pulumi.RunError(str(err)) from None
    if cfg.cloud_server:
        check_hetzner_account(cfg)
    return cfg, config


def check_hetzner_account(cfg: RelayConfig) -> None:
    """Asks the Hetzner Cloud API for the location and server type before any resource is
    made: a refused token or an unknown name stops here, naming the key to fix."""
    import pulumi_hcloud as hcloud

    for key, value, lookup in (
        ("hetznerLocation", cfg.hetzner_location, hcloud.get_location),
        ("hetznerServerType", cfg.hetzner_server_type, hcloud.get_server_type),
    ):
        try:
            lookup(name=value)
        except Exception as err:  # the provider's text says why
            text = str(err)
            if any(w in text.lower() for w in ("unauthorized", "unable to authenticate", "401")):
                raise pulumi.RunError(
                    "hcloud:token was refused by the Hetzner Cloud API (unauthorized); "
                    "nothing was created or changed. Create a Read & Write API token in the "
                    "Hetzner Cloud Console (project > Security > API tokens). Fix: pulumi "
                    "config set --secret hcloud:token"
                ) from None
            raise pulumi.RunError(
                f"{key} {value!r}: the Hetzner Cloud API did not find it ({text.strip()[-300:]}); "
                f"nothing was created or changed. Fix: pulumi config set {key} <name>"
            ) from None


def create_server(cfg: RelayConfig, config: pulumi.Config) -> HetznerServer:
    """vpsProvider hetzner: the VPS, its PTRs and its cloud firewall, made by the stack."""
    return HetznerServer(
        "vps",
        HetznerServerArgs(
            name=cfg.relay_fqdn,
            location=cfg.hetzner_location,
            server_type=cfg.hetzner_server_type,
            image=cfg.hetzner_image,
            ssh_private_key=config.require_secret("sshPrivateKey"),
            ssh_allow_from=cfg.ssh_allow_from,
            # Both submission ports, as Gmail offers both; ufw on the server opens the
            # implicit-TLS one only with submissions465.
            submission_ports=[cfg.smtp_port, cfg.submissions_port],
            labels=cloud_labels(pulumi.get_stack(), pulumi.get_project()),
            ssh_port=cfg.ssh_port,
            create_timeout=f"{cfg.server_boot_timeout}s",
        ),
    )


def vps_addresses(
    cfg: RelayConfig, server: HetznerServer | None
) -> tuple[pulumi.Input[str | None], pulumi.Input[str | None]]:
    """The VPS's (IPv4, IPv6): config for an existing VPS, the created server's otherwise."""
    return (server.ipv4, server.ipv6) if server else (cfg.vps_ipv4, cfg.vps_ipv6)


def main() -> None:
    cfg, config = read_config()
    server = create_server(cfg, config) if cfg.cloud_server else None
    vps_ipv4, vps_ipv6 = vps_addresses(cfg, server)
    addresses = pulumi.Output.all(server.ipv4, server.ipv6) if server else None

    # The primary domain's keys keep the names they had before there were several domains
    # (dkim-<selector>): an upgraded stack replaces nothing.
    keys_by_domain = {
        m.domain: {
            s: DkimKey(
                f"dkim-{s}" if m.primary else f"dkim-{m.domain}-{s}",
                DkimKeyArgs(
                    selector=s, bits=cfg.dkim_key_bits, domain=None if m.primary else m.domain
                ),
            )
            for s in m.all_selectors
        }
        for m in cfg.mail_domains
    }
    keys = keys_by_domain[cfg.domain]
    owned = {d.lower().rstrip("."): d for d in cfg.domains}
    report_for: dict[str, list[str]] = {}
    for reported, report_domain in cfg.report_authorizations():
        holder = cfg.owned_domain_of(report_domain)
        if holder is not None:
            report_for.setdefault(holder, []).append(reported)
    all_dns = [
        MailDns(
            "mail-dns" if m.primary else f"mail-dns-{m.domain}",
            MailDnsArgs(
                cfg=cfg.for_domain(m.domain),
                dkim_values={s: k.dns_value for s, k in keys_by_domain[m.domain].items()},
                zone_id=m.cloudflare_zone_id,
                account_id=cfg.cloudflare_account_id if m.primary else None,
                relay_records=m.domain == cfg.relay_domain,
                report_for=report_for.get(m.domain, []),
                addresses=addresses,
            ),
        )
        for m in cfg.mail_domains
    ]
    credentials = SmtpCredentials(
        "smtp-credentials",
        SmtpCredentialsArgs(users=cfg.user_names, given=config.get_secret_object("smtpPasswords")),
    )

    logins = [f"{u}@{cfg.domain}" for u in cfg.user_names]
    relay, outbound_smtp = deploy_relay(cfg, config, keys_by_domain, credentials, server)
    # Each login's sendAs entries; a login without any may send as every domain.
    send_as = {
        login: cfg.send_as.get(u) or [f"@{d}" for d in owned.values()]
        for login, u in zip(logins, cfg.user_names, strict=True)
    }
    # Report addresses outside the stack's domains: their owner publishes the record.
    foreign_reports = [
        {"domain": d, "reportDomain": r, "name": f"{d}._report._dmarc.{r}", "value": "v=DMARC1"}
        for d, r in cfg.report_authorizations()
        if cfg.owned_domain_of(r) is None
    ]
    dns_records: pulumi.Output[list[dict[str, object]]] = pulumi.Output.all(
        *[d.records for d in all_dns]
    ).apply(lambda rss: [r for rs in rss for r in rs])
    zone_snippet = pulumi.Output.all(*[d.zone_snippet for d in all_dns]).apply("\n".join)

    pulumi.export("domain", cfg.domain)
    pulumi.export("domains", cfg.domains)
    pulumi.export("relayHost", cfg.relay_fqdn)
    pulumi.export("vpsIpv4", vps_ipv4)
    pulumi.export("vpsIpv6", vps_ipv6)
    if server is not None:
        pulumi.export("vpsProvider", cfg.vps_provider)
        pulumi.export("serverId", server.server_id)
        pulumi.export("sshHostKey", server.host_key)
    pulumi.export("dnsProvider", cfg.dns_provider)
    pulumi.export("dkimSelector", cfg.dkim_selector)
    pulumi.export("dkimDnsValue", keys[cfg.dkim_selector].dns_value)
    pulumi.export("dkimDnsValues", {s: k.dns_value for s, k in keys.items()})
    pulumi.export(
        "dkimDnsValuesByDomain",
        {d: {s: k.dns_value for s, k in ks.items()} for d, ks in keys_by_domain.items()},
    )
    pulumi.export("dkimSelectorsByDomain", {m.domain: m.dkim_selector for m in cfg.mail_domains})
    pulumi.export("dnsRecords", dns_records)
    pulumi.export("zoneSnippet", zone_snippet)
    pulumi.export("smtpServer", cfg.relay_fqdn)
    pulumi.export("smtpPort", cfg.smtp_port)
    pulumi.export("smtpUsername", logins[0])
    pulumi.export("smtpUsernames", logins)
    pulumi.export("smtpSendAs", send_as)
    pulumi.export("smtpPassword", credentials.passwords[cfg.user_names[0]])
    pulumi.export(
        "smtpPasswords",
        {login: credentials.passwords[u] for login, u in zip(logins, cfg.user_names, strict=True)},
    )
    if foreign_reports:
        pulumi.export("dmarcReportAuthorizations", foreign_reports)
    pulumi.export("relayContainer", relay.container_name)
    pulumi.export("queueVolume", relay.volume_name)
    pulumi.export(
        "keptOnDestroy",
        relay.volume_name.apply(
            lambda v: (
                f"pulumi destroy deletes the server, its disk and the queue volume {v} on it "
                "(with any mail not yet delivered: check `docker exec <relayContainer> "
                "mailq` first)"
                if server is not None
                else f"pulumi destroy keeps the queue volume {v} (mail not yet delivered); "
                f"remove it with: docker volume rm {v}"
            )
        ),
    )
    if outbound_smtp is not None:
        pulumi.export("outboundSmtp", outbound_smtp)
    # The guide carries no secret: it says how to read the password instead.
    pulumi.export(
        "gmailGuide",
        pulumi.Output.all(dns_records, outbound_smtp, vps_ipv4, vps_ipv6).apply(
            lambda ro: render_from_outputs(
                {
                    "domain": cfg.domain,
                    "domains": cfg.domains,
                    "relayHost": cfg.relay_fqdn,
                    "vpsIpv4": ro[2],
                    "vpsIpv6": ro[3],
                    "vpsProvider": cfg.vps_provider if server else None,
                    "smtpServer": cfg.relay_fqdn,
                    "smtpPort": cfg.smtp_port,
                    "smtpUsername": logins[0],
                    "smtpUsernames": logins,
                    "smtpSendAs": send_as,
                    "smtpPasswords": dict.fromkeys(logins, ""),
                    "dnsProvider": cfg.dns_provider,
                    "dnsRecords": ro[0],
                    "dmarcReportAuthorizations": foreign_reports,
                    "outboundSmtp": ro[1],
                    "outboundIpv6": cfg.outbound_ipv6,
                    "delayWarningTime": cfg.delay_warning_time,
                    "forwardTo": cfg.forward_to,
                },
                stack_name=pulumi.get_stack(),
            )
        ),
    )


def deploy_relay(
    cfg: RelayConfig,
    config: pulumi.Config,
    keys_by_domain: dict[str, dict[str, DkimKey]],
    credentials: SmtpCredentials,
    server: HetznerServer | None = None,
) -> tuple[SmtpRelay, pulumi.Output[Any] | None]:
    """The VPS (over SSH) or this machine's engine, and the relay container on it; with the
    outbound port 25 check of the VPS (none on this machine)."""
    vps_ipv4, vps_ipv6 = vps_addresses(cfg, server)
    private_keys = {s: k.private_key_pem for s, k in keys_by_domain[cfg.domain].items()}
    extra_keys = {
        d: pulumi.Output.all(**{s: k.private_key_pem for s, k in ks.items()})
        for d, ks in keys_by_domain.items()
        if d != cfg.domain
    }
    # The key files, in the layout the relay reads (pure/postfix.py).
    nexthop_password = config.get_secret("relayNexthopPassword") if cfg.relay_nexthop_user else None
    both: pulumi.Output[list[Any]] = pulumi.Output.all(
        pulumi.Output.all(**private_keys),
        credentials.passwords_output,
        nexthop_password,
        pulumi.Output.all(**extra_keys),
    )

    def files(kpn: list[Any]) -> dict[str, str]:
        login = None
        if cfg.relay_nexthop and cfg.relay_nexthop_user and kpn[2] is not None:
            login = (cfg.relay_nexthop, cfg.relay_nexthop_user, kpn[2])
        return postfix.render_secrets(cfg.domain, kpn[0], kpn[1], login, extra_dkim_keys=kpn[3])

    secret_files: pulumi.Output[dict[str, str]] = pulumi.Output.secret(both.apply(files))
    common: dict[str, Any] = dict(
        domain=cfg.domain,
        relay_host=cfg.relay_fqdn,
        dkim_selector=cfg.dkim_selector,
        dkim_selectors=cfg.all_selectors,
        extra_domains=[
            postfix.SigningDomain(m.domain, m.dkim_selector, m.dkim_retired_selectors)
            for m in cfg.mail_domains
            if not m.primary
        ],
        smtp_users=[SmtpUserSpec(u, cfg.send_as.get(u, ())) for u in cfg.user_names],
        publish_ipv4=vps_ipv4,
        publish_ipv6=vps_ipv6,
        submission_host_port=cfg.smtp_port,
        submissions_465=cfg.submissions465,
        submissions_host_port=cfg.submissions_port,
        ipv4_subnet=cfg.relay_ipv4_subnet,
        ipv6_subnet=cfg.relay_ipv6_subnet,
        container_name=cfg.relay_container_name,
        nexthop_user=cfg.relay_nexthop_user,
        outbound_ipv6=cfg.outbound_ipv6,
        delay_warning_time=cfg.delay_warning_time,
    )
    if cfg.deploy_target == "local":
        return deploy_local(cfg, common, secret_files), None

    def check_agent(key: str) -> str:
        problem = agent_problem(key)
        if problem:
            raise pulumi.RunError(problem)
        return "ok"

    config.require_secret("sshPrivateKey").apply(check_agent)
    ssh_host: pulumi.Input[str] = server.ipv4 if server else cfg.ssh_target or ""
    host_key: pulumi.Input[str] = server.host_key if server else cfg.ssh_host_key or ""
    host = RelayHost(
        "relay-host",
        RelayHostArgs(
            ssh_host=ssh_host,
            ssh_private_key=config.require_secret("sshPrivateKey"),
            relay_host=cfg.relay_fqdn,
            acme_email=cfg.acme_email or "",
            ssh_user=cfg.ssh_user,
            ssh_port=cfg.ssh_port,
            ssh_host_key=host_key,
            acme_server=cfg.acme_server,
            acme_extra_names=cfg.acme_extra_names,
            acme_ca_bundle=cfg.acme_ca_bundle,
            # The firewall opens the host ports the relay is published on.
            submissions465=cfg.submissions465 and cfg.submissions_port == 465,
            extra_ports=[
                port
                for port, extra in (
                    (cfg.smtp_port, cfg.smtp_port != 587),
                    (cfg.submissions_port, cfg.submissions465 and cfg.submissions_port != 465),
                )
                if extra
            ],
            container_name=cfg.relay_container_name,
            secret_files=secret_files,
            port25_probe=cfg.port25_probe,
            vps_ipv6=vps_ipv6,
            boot_wait=cfg.server_boot_timeout if server else 0,
            metadata_address=METADATA_ADDRESS if server else None,
        ),
    )
    # The relay waits for Docker, the certificate and the key files.
    steps = [host.docker_step, host.certificate_step]
    if host.metadata_step is not None:
        steps.append(host.metadata_step)
    if host.secrets_step is not None:
        steps.append(host.secrets_step)
    relay = SmtpRelay(
        "relay",
        SmtpRelayArgs(
            **common,
            engine=RemoteEngine(
                connection=host.connection,
                docker_host=cfg.docker_host
                or pulumi.Output.concat(f"ssh://{cfg.ssh_user}@", ssh_host, f":{cfg.ssh_port}"),
                host_key=host_key,
                sudo=cfg.ssh_user != "root",
            ),
            secrets_dir=host.secrets_dir,
            secrets_revision=host.secrets_revision,
            cert_dir="/etc/letsencrypt",
            nexthop=cfg.relay_nexthop,
            depends_on=steps,
        ),
    )
    return relay, host.outbound_smtp


def deploy_local(
    cfg: RelayConfig, common: dict[str, Any], secret_files: pulumi.Output[dict[str, str]]
) -> SmtpRelay:
    """A trial on this machine: local engine, local test CA, mail kept by a sink."""
    work = PROJECT / ".local" / pulumi.get_stack()
    cert_dir = (PROJECT / (cfg.tls_cert_dir or ".local/letsencrypt")).resolve()
    sink_ip = host_address(cfg.relay_ipv4_subnet, SINK_HOST_NUMBER)
    relay = SmtpRelay(
        "relay",
        SmtpRelayArgs(
            **common,
            engine=LocalEngine(
                work_dir=str(work / "relay"), docker_host=cfg.docker_host or LOCAL_DOCKER_HOST
            ),
            secret_files=secret_files,
            cert_dir=str(cert_dir),
            nexthop=cfg.relay_nexthop or f"[{sink_ip}]:25",
        ),
    )
    if not cfg.relay_nexthop:
        LocalSink(
            "sink",
            LocalSinkArgs(
                provider=relay.provider,
                network_id=relay.network.id,
                ipv4_address=sink_ip,
                mail_dir=str(work / "sink"),
                work_dir=str(work / "sink-build"),
                name=f"{cfg.relay_container_name}-sink",
            ),
        )
    return relay


main()
