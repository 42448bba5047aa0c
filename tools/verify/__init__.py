"""``dkim-relay verify``: check a live deployment end to end (DNS and reverse DNS, TLS, AUTH,
no open relay).

Modules: ``outputs`` reads the stack outputs into a ``Target``; ``dns_checks`` and
``smtp_checks`` judge DNS and the submission service (pure ``evaluate_*`` functions plus
the network I/O, with timeouts); ``alert`` writes and posts the webhook message; ``cli``
runs the checks and reports them as text or JSON, with exit codes for machines.
"""
