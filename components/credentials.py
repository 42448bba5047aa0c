"""SMTP passwords: generated once per user and kept in state as secrets (`SmtpCredentials`)."""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi.dynamic

PASSWORD_LENGTH = 32
# Letters and digits only: nothing a mail client, a shell or a sasldb line would mangle.
ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


class _PasswordProvider(pulumi.dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        password = generate_password(int(props["length"]))
        return pulumi.dynamic.CreateResult(
            id_=f"password-{props['user']}", outs={**props, "password": password}
        )

    def diff(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        changed = [k for k in ("user", "length") if str(olds.get(k)) != str(news.get(k))]
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=changed)


class _GeneratedPassword(pulumi.dynamic.Resource):
    password: pulumi.Output[str]

    def __init__(self, name: str, user: str, opts: pulumi.ResourceOptions) -> None:
        super().__init__(
            _PasswordProvider(),
            name,
            {"user": user, "length": PASSWORD_LENGTH, "password": None},
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["password"])
            ),
        )


def _pick(user: str) -> Callable[[list[Any]], str]:
    def pick(values: list[Any]) -> str:
        given, generated = values
        return str((given or {}).get(user) or generated)

    return pick


@dataclass
class SmtpCredentialsArgs:
    users: Sequence[str]
    # Passwords the user set with `pulumi config set --secret --path smtpPasswords.NAME`;
    # a secret whose keys are not known until it resolves. Users without one get theirs
    # generated (a password is generated for every user, so adding one later is no change).
    given: pulumi.Input[Mapping[str, str]] | None = None


class SmtpCredentials(pulumi.ComponentResource):
    """One password per SMTP user, every one a secret."""

    passwords: dict[str, pulumi.Output[str]]
    passwords_output: pulumi.Output[dict[str, str]]  # the same, as one secret Output

    def __init__(
        self, name: str, args: SmtpCredentialsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("dkimrelay:index:SmtpCredentials", name, None, opts)
        self.passwords = {}
        given = pulumi.Output.from_input(args.given or {})
        for user in args.users:
            generated = _GeneratedPassword(
                f"{name}-{user}", user, pulumi.ResourceOptions(parent=self)
            ).password
            chosen = pulumi.Output.all(given, generated).apply(_pick(user))
            self.passwords[user] = pulumi.Output.secret(chosen)
        self.passwords_output = pulumi.Output.secret(pulumi.Output.all(**self.passwords))
        self.register_outputs({"users": list(args.users)})
