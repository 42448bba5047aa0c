"""dkim-relay: a DKIM-signing SMTP relay for Gmail's "Send mail as", owned by one stack."""

from __future__ import annotations

from typing import Any

import pulumi

from components.config import ConfigError, RelayConfig, config_keys, load_config, raw_from_strings
from components.credentials import SmtpCredentials, SmtpCredentialsArgs
from components.dkim import DkimKey, DkimKeyArgs
from components.dns import MailDns, MailDnsArgs


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


def read_config() -> tuple[RelayConfig, pulumi.Config]:
    config = pulumi.Config()
    raw = raw_from_strings({key: config.get(key) for key in config_keys()})
    _lookup_zone(raw)
    secrets_set = {"sshPrivateKey"} if config.get_secret("sshPrivateKey") is not None else set()
    try:
        return load_config(raw, secrets_set), config
    except ConfigError as err:
        raise pulumi.RunError(str(err)) from None


def main() -> None:
    cfg, config = read_config()

    keys = {
        s: DkimKey(f"dkim-{s}", DkimKeyArgs(selector=s, bits=cfg.dkim_key_bits))
        for s in cfg.all_selectors
    }
    dns = MailDns(
        "mail-dns",
        MailDnsArgs(
            cfg=cfg,
            dkim_values={s: k.dns_value for s, k in keys.items()},
            zone_id=cfg.cloudflare_zone_id,
            account_id=cfg.cloudflare_account_id,
        ),
    )
    credentials = SmtpCredentials(
        "smtp-credentials",
        SmtpCredentialsArgs(users=cfg.smtp_users, given=config.get_secret_object("smtpPasswords")),
    )

    first_user = cfg.smtp_users[0]
    pulumi.export("domain", cfg.domain)
    pulumi.export("relayHost", cfg.relay_fqdn)
    pulumi.export("vpsIpv4", cfg.vps_ipv4)
    pulumi.export("vpsIpv6", cfg.vps_ipv6)
    pulumi.export("dnsProvider", cfg.dns_provider)
    pulumi.export("dkimSelector", cfg.dkim_selector)
    pulumi.export("dkimDnsValue", keys[cfg.dkim_selector].dns_value)
    pulumi.export("dkimDnsValues", {s: k.dns_value for s, k in keys.items()})
    pulumi.export("dnsRecords", dns.records)
    pulumi.export("zoneSnippet", dns.zone_snippet)
    pulumi.export("smtpServer", cfg.relay_fqdn)
    pulumi.export("smtpPort", cfg.smtp_port)
    pulumi.export("smtpUsername", first_user)
    pulumi.export("smtpUsernames", cfg.smtp_users)
    pulumi.export("smtpPassword", credentials.passwords[first_user])
    pulumi.export("smtpPasswords", credentials.passwords)


main()
