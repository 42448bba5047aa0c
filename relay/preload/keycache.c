/*
 * libkeycache: keeps OpenDKIM's parsed DKIM private keys between messages.
 *
 * Debian's libopendkim (2.11) parses the PEM key again for every message it signs
 * (dkim_privkey_load: BIO_new_mem_buf + PEM_read_bio_PrivateKey), and the first RSA
 * signature with a freshly parsed key also builds its Montgomery and blinding state:
 * about 0.56 ms per message at 2048 bits, twice one warm signature (docs/relay.md).
 * Preloaded into OpenDKIM only (relay/s6/opendkim/run), this wraps
 * PEM_read_bio_PrivateKey: for a memory BIO holding exactly the bytes of a key parsed
 * before, it returns that EVP_PKEY with one more reference (libopendkim frees its
 * reference after signing; the cache keeps its own), so the key is parsed once and its
 * signatures are warm. Any other call goes straight to OpenSSL. OpenSSL's RSA keys
 * may sign from several threads at once (blinding and Montgomery caches are locked).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 16 /* distinct keys kept (selectors); beyond that, no caching */

typedef EVP_PKEY *(*pem_read_fn)(BIO *, EVP_PKEY **, pem_password_cb *, void *);

static struct {
    unsigned char *pem;
    long len;
    EVP_PKEY *pkey;
} slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static pem_read_fn real_pem_read(void) {
    static pem_read_fn fn;
    if (fn == NULL)
        fn = (pem_read_fn)dlsym(RTLD_NEXT, "PEM_read_bio_PrivateKey");
    return fn;
}

EVP_PKEY *PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, pem_password_cb *cb, void *u) {
    pem_read_fn real = real_pem_read();
    char *data = NULL;
    long len;
    int i;
    EVP_PKEY *pkey;

    if (real == NULL)
        return NULL;
    if (bp == NULL || x != NULL || cb != NULL || u != NULL ||
        BIO_method_type(bp) != BIO_TYPE_MEM)
        return real(bp, x, cb, u);
    len = BIO_get_mem_data(bp, &data);
    if (len <= 0 || data == NULL)
        return real(bp, x, cb, u);

    pthread_mutex_lock(&lock);
    for (i = 0; i < SLOTS && slots[i].pkey != NULL; i++) {
        if (slots[i].len == len && memcmp(slots[i].pem, data, (size_t)len) == 0) {
            pkey = slots[i].pkey;
            EVP_PKEY_up_ref(pkey);
            pthread_mutex_unlock(&lock);
            return pkey;
        }
    }
    pkey = real(bp, NULL, NULL, NULL);
    if (pkey != NULL && i < SLOTS) {
        unsigned char *copy = malloc((size_t)len);
        if (copy != NULL && EVP_PKEY_up_ref(pkey) == 1) {
            memcpy(copy, data, (size_t)len);
            slots[i].pem = copy;
            slots[i].len = len;
            slots[i].pkey = pkey;
            /* once per key and OpenDKIM start: the container log shows the cache works */
            fprintf(stderr, "libkeycache: DKIM key %d parsed and kept\n", i + 1);
        } else {
            free(copy);
        }
    }
    pthread_mutex_unlock(&lock);
    return pkey;
}
