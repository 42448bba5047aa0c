"""Operator tools for a deployed dkim-relay, run by name: ``dkim-relay <command>``.

They read the stack outputs or report files and talk to the live relay; they import
nothing from the Pulumi components.
"""
