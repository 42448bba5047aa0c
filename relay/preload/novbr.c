/*
 * libnovbr: no VBR resolver per message in a sign-only OpenDKIM.
 *
 * Debian builds OpenDKIM with _FFR_VBR (Vouch By Reference) and libunbound. For every
 * message, mlfi_eoh then runs vbr_init and vbr_dns_init, which creates an unbound
 * context (ub_ctx_create: RNG seeding with SHA-256, two socketpairs) and vbr_close
 * deletes it again: about 10 % of OpenDKIM's time per message (docs/relay.md), though no
 * query is ever made. The resolver is used only to check VBR-Info of a message that is
 * being verified (vbr_query, after a valid signature), and by the Nameservers,
 * TrustAnchorFile and ResolverConfiguration settings; the relay's opendkim.conf signs
 * only (Mode s) and sets none of them (tests/test_postfix.py checks that). Preloaded into
 * OpenDKIM only (relay/s6/opendkim/run), this vbr_dns_init leaves the handle without a
 * resolver, as libvbr does when no resolver is configured; vbr_close then has nothing to
 * close.
 */
#include <stdatomic.h>
#include <stdio.h>

struct vbr_handle;

int vbr_dns_init(struct vbr_handle *vbr) {
    static atomic_flag said = ATOMIC_FLAG_INIT;
    (void)vbr;
    if (!atomic_flag_test_and_set(&said))
        fprintf(stderr, "libnovbr: no VBR resolver (sign-only OpenDKIM)\n");
    return 0; /* VBR_STAT_OK */
}
