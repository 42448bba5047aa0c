"""Pure code: typed values in, text out. No Pulumi, no side effects; reading the
project's own files (``target/``, ``relay/``, ``sink/``) is the only I/O."""
