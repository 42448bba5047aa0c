"""Where a step runs: this machine, or a VPS over the pinned SSH connection.

:class:`Target` turns "script + stdin + triggers" into the matching ``pulumi_command``
resource (``local.Command`` or ``remote.Command``); every step of ``RelayHost``,
``SmtpRelay`` and ``LocalSink`` is made here. Scripts (from ``pure/``) travel as one
argument of ``bash -c`` (``pure.shell.command_line``), so stdin stays free for payloads
and key material; nothing secret is ever on a command line.

:func:`key_files` is the one way key files (DKIM private keys, the SMTP password file)
reach a target: the secrets script with the files as a secret JSON on stdin, logging
off, its outputs secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_command import local, remote

from pure import host_scripts as hs
from pure.shell import command_line

_SECRET_OUTPUTS = ["stdin", "stdout", "stderr"]


@dataclass(frozen=True)
class Target:
    """This machine (no ``connection``) or a VPS over ``connection`` (root, or ``sudo -n``)."""

    connection: remote.ConnectionArgs | None = None
    sudo: bool = False

    def command_line(self, script: str) -> str:
        return command_line(script, self.sudo)

    def step(
        self,
        name: str,
        create: str | pulumi.Output[str],
        opts: pulumi.ResourceOptions,
        *,
        update: str | pulumi.Output[str] | None = None,
        delete: str | None = None,
        stdin: pulumi.Input[str] | None = None,
        triggers: Sequence[Any] | None = None,
        secret: bool = False,
    ) -> local.Command | remote.Command:
        """A command resource running the scripts ``create``/``update``/``delete``.

        ``secret``: stdin, stdout and stderr are secret outputs and nothing is logged.
        """

        def line(script: str | pulumi.Output[str]) -> pulumi.Input[str]:
            if isinstance(script, str):
                return self.command_line(script)
            return script.apply(self.command_line)

        if secret:
            opts = pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=_SECRET_OUTPUTS)
            )
        kw: dict[str, Any] = dict(create=line(create), add_previous_output_in_env=False, opts=opts)
        if update is not None:
            kw["update"] = line(update)
        if delete is not None:
            kw["delete"] = line(delete)
        if stdin is not None:
            kw["stdin"] = stdin
        if triggers:
            kw["triggers"] = list(triggers)
        if self.connection is None:
            quiet, loud = local.Logging.NONE, local.Logging.STDOUT_AND_STDERR
            return local.Command(name, logging=quiet if secret else loud, **kw)
        quiet_r, loud_r = remote.Logging.NONE, remote.Logging.STDOUT_AND_STDERR
        return remote.Command(
            name, connection=self.connection, logging=quiet_r if secret else loud_r, **kw
        )


def key_files(
    target: Target,
    name: str,
    files: pulumi.Input[Mapping[str, str]],
    opts: pulumi.ResourceOptions,
    secrets_dir: str = hs.SECRETS_DIR,
    file_mode: int = 0o600,
    owner: tuple[int, int] = (0, 0),
) -> tuple[local.Command | remote.Command, pulumi.Output[str]]:
    """The step writing ``files`` (relative path -> content, a secret) under
    ``secrets_dir`` on ``target``, and its generation: a random value that changes each
    time the step runs (it runs when the files change), for the relay's deploy to carry.
    Its delete removes the directory; a replacement deletes first (same path)."""
    plain: pulumi.Output[Mapping[str, str]] = pulumi.Output.from_input(files)
    payload: pulumi.Output[str] = pulumi.Output.secret(plain.apply(hs.secrets_stdin))
    step = target.step(
        name,
        hs.render_secrets(secrets_dir, file_mode, *owner),
        pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(delete_before_replace=True)),
        delete=hs.render_secrets_delete(secrets_dir),
        stdin=payload,
        secret=True,
    )
    # Random, not derived from the key files: safe to keep plain.
    generation = pulumi.Output.unsecret(step.stdout.apply(hs.parse_generation))
    return step, generation
