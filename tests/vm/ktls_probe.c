/* ktls_probe: proves kernel TLS offload end to end with OpenSSL 3.
 *
 * For TLS 1.2 and 1.3 x AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305 (and
 * AES-128-CCM, reported but not required) it runs an OpenSSL server (thread)
 * and client over 127.0.0.1, with SSL_OP_ENABLE_KTLS on the server (and on
 * the client with --both), exchanges data both ways plus an SSL_sendfile,
 * and reads /proc/net/tls_stat around each connection:
 *   TlsCurrTxSw/TlsCurrRxSw  sockets now using software kTLS (kernel crypto)
 *   TlsTxSw/TlsRxSw          cumulative count of such TX/RX contexts
 *   TlsTxDevice/TlsRxDevice  NIC (inline) offload: never on loopback
 *
 * Before that it asks the kernel directly (setsockopt TCP_ULP "tls", then
 * SOL_TLS TLS_TX/TLS_RX with a zero key) which (version, cipher) pairs it
 * supports, so a cipher the kernel lacks is reported "n/a", not failed.
 *
 * Exit 0: every kernel-supported required pair had TX offloaded by OpenSSL
 * (BIO_get_ktls_send and TlsTxSw moved) with the data intact. Exit 77: the
 * kernel has no TLS ULP (e.g. CONFIG_TLS off, tls.ko not loaded). Else 1.
 *
 * Build: gcc -O2 -Wall -o ktls_probe ktls_probe.c -lssl -lcrypto -lpthread
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif
#ifdef OPENSSL_NO_KTLS
#error "this OpenSSL is built without kTLS"
#endif

#define BULK (256 * 1024)      /* bytes each way */
#define CHUNK (16 * 1024)
#define SENDFILE_LEN (64 * 1024)

struct suite {
    int version;              /* TLS1_2_VERSION / TLS1_3_VERSION */
    const char *name;         /* short name for the table */
    const char *ossl;         /* OpenSSL cipher (1.2) or ciphersuite (1.3) */
    int kcipher;              /* TLS_CIPHER_* for the raw kernel check */
    bool required;
};

static const struct suite suites[] = {
    {TLS1_2_VERSION, "AES-128-GCM", "ECDHE-ECDSA-AES128-GCM-SHA256", TLS_CIPHER_AES_GCM_128, true},
    {TLS1_2_VERSION, "AES-256-GCM", "ECDHE-ECDSA-AES256-GCM-SHA384", TLS_CIPHER_AES_GCM_256, true},
    {TLS1_2_VERSION, "CHACHA20-POLY1305", "ECDHE-ECDSA-CHACHA20-POLY1305", TLS_CIPHER_CHACHA20_POLY1305, true},
    {TLS1_2_VERSION, "AES-128-CCM", "ECDHE-ECDSA-AES128-CCM", TLS_CIPHER_AES_CCM_128, false},
    {TLS1_3_VERSION, "AES-128-GCM", "TLS_AES_128_GCM_SHA256", TLS_CIPHER_AES_GCM_128, true},
    {TLS1_3_VERSION, "AES-256-GCM", "TLS_AES_256_GCM_SHA384", TLS_CIPHER_AES_GCM_256, true},
    {TLS1_3_VERSION, "CHACHA20-POLY1305", "TLS_CHACHA20_POLY1305_SHA256", TLS_CIPHER_CHACHA20_POLY1305, true},
    {TLS1_3_VERSION, "AES-128-CCM", "TLS_AES_128_CCM_SHA256", TLS_CIPHER_AES_CCM_128, false},
};
#define NSUITES (sizeof suites / sizeof suites[0])

/* ---- /proc/net/tls_stat ------------------------------------------------ */

enum { CURR_TX_SW, CURR_RX_SW, CURR_TX_DEV, CURR_RX_DEV, TX_SW, RX_SW, TX_DEV,
       RX_DEV, DECRYPT_ERR, NSTAT };
static const char *const stat_names[NSTAT] = {
    "TlsCurrTxSw", "TlsCurrRxSw", "TlsCurrTxDevice", "TlsCurrRxDevice",
    "TlsTxSw", "TlsRxSw", "TlsTxDevice", "TlsRxDevice", "TlsDecryptError"};

static bool read_stat(long v[NSTAT])
{
    char name[64];
    long val;
    FILE *f = fopen("/proc/net/tls_stat", "r");

    memset(v, 0, sizeof(long) * NSTAT);
    if (!f)
        return false;
    while (fscanf(f, "%63s %ld", name, &val) == 2)
        for (int i = 0; i < NSTAT; i++)
            if (!strcmp(name, stat_names[i]))
                v[i] = val;
    fclose(f);
    return true;
}

static void dump_stat(const char *when)
{
    char line[256];
    FILE *f = fopen("/proc/net/tls_stat", "r");

    printf("/proc/net/tls_stat %s:\n", when);
    if (!f) {
        printf("  (absent: %s)\n", strerror(errno));
        return;
    }
    while (fgets(line, sizeof line, f))
        printf("  %s", line);
    fclose(f);
}

/* ---- sockets ------------------------------------------------------------ */

static void set_timeouts(int fd)
{
    struct timeval tv = {.tv_sec = 15};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int listen_lo(uint16_t *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4) ||
        getsockname(fd, (struct sockaddr *)&a, &len)) {
        perror("listen 127.0.0.1");
        exit(1);
    }
    *port = ntohs(a.sin_port);
    return fd;
}

static int connect_lo(uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        perror("connect 127.0.0.1");
        exit(1);
    }
    set_timeouts(fd);
    return fd;
}

/* ---- raw kernel capability check ---------------------------------------- */

/* 1: kernel takes TX (and RX) keys for this pair; 0: it refuses the
 * cipher; -1: no TLS ULP at all (errno kept in *err). */
static int kernel_supports(int version, int cipher, bool rx, int *err)
{
    union {
        struct tls_crypto_info info;
        struct tls12_crypto_info_aes_gcm_128 g128;
        struct tls12_crypto_info_aes_gcm_256 g256;
        struct tls12_crypto_info_aes_ccm_128 c128;
        struct tls12_crypto_info_chacha20_poly1305 cc;
    } ci;
    socklen_t sz;
    uint16_t port;
    int lfd = listen_lo(&port), cfd = connect_lo(port);
    int afd = accept(lfd, NULL, NULL), ret = 1;

    memset(&ci, 0, sizeof ci);
    ci.info.version = version == TLS1_3_VERSION ? TLS_1_3_VERSION : TLS_1_2_VERSION;
    ci.info.cipher_type = cipher;
    switch (cipher) {
    case TLS_CIPHER_AES_GCM_128: sz = sizeof ci.g128; break;
    case TLS_CIPHER_AES_GCM_256: sz = sizeof ci.g256; break;
    case TLS_CIPHER_AES_CCM_128: sz = sizeof ci.c128; break;
    default: sz = sizeof ci.cc; break;
    }
    if (setsockopt(cfd, SOL_TCP, TCP_ULP, "tls", sizeof "tls")) {
        *err = errno;
        ret = -1;
    } else if (setsockopt(cfd, SOL_TLS, rx ? TLS_RX : TLS_TX, &ci, sz)) {
        *err = errno;
        ret = 0;
    }
    close(afd);
    close(cfd);
    close(lfd);
    return ret;
}

/* ---- OpenSSL ------------------------------------------------------------ */

static EVP_PKEY *pkey;
static X509 *cert;
static char sendfile_path[] = "/tmp/ktls_probe.XXXXXX";

static void ossl_die(const char *what)
{
    fprintf(stderr, "ktls_probe: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void make_cert(void)
{
    X509_NAME *n;

    pkey = EVP_EC_gen("P-256");
    cert = X509_new();
    if (!pkey || !cert)
        ossl_die("key generation");
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
    X509_set_pubkey(cert, pkey);
    n = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(cert, n);
    if (!X509_sign(cert, pkey, EVP_sha256()))
        ossl_die("X509_sign");
}

struct result {
    bool hs_ok, data_ok, sendfile_ok;
    bool s_ktls_tx, s_ktls_rx, c_ktls_tx, c_ktls_rx;
    char negotiated[64], proto[16];
    long before[NSTAT], mid[NSTAT], after[NSTAT];
    char err[160];
};

struct server_arg {
    SSL_CTX *ctx;
    int lfd;
    struct result *r;
};

static int ssl_read_full(SSL *ssl, unsigned char *buf, int len)
{
    int got = 0;
    while (got < len) {
        int n = SSL_read(ssl, buf + got, len - got);
        if (n <= 0)
            return -1;
        got += n;
    }
    return got;
}

static int ssl_write_full(SSL *ssl, const unsigned char *buf, int len)
{
    int put = 0;
    while (put < len) {
        int n = SSL_write(ssl, buf + put, len - put > CHUNK ? CHUNK : len - put);
        if (n <= 0)
            return -1;
        put += n;
    }
    return put;
}

static unsigned char pattern(size_t i, unsigned seed) { return (unsigned char)(i * 31 + seed + (i >> 9)); }

static void *server_main(void *p)
{
    struct server_arg *a = p;
    struct result *r = a->r;
    unsigned char *buf = malloc(BULK);
    int fd = accept(a->lfd, NULL, NULL);
    SSL *ssl = SSL_new(a->ctx);
    bool ok = true;

    set_timeouts(fd);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1) {
        snprintf(r->err, sizeof r->err, "server handshake: %s",
                 ERR_reason_error_string(ERR_peek_last_error()));
        goto out;
    }
    /* RX is switched on when the peer's keys are installed, TX when ours
     * are: both are settled once the first application data arrives. */
    if (ssl_read_full(ssl, buf, BULK) != BULK) {
        snprintf(r->err, sizeof r->err, "server read failed");
        goto out;
    }
    for (size_t i = 0; i < BULK; i++)
        if (buf[i] != pattern(i, 1))
            ok = false;
    r->s_ktls_tx = BIO_get_ktls_send(SSL_get_wbio(ssl));
    r->s_ktls_rx = BIO_get_ktls_recv(SSL_get_rbio(ssl));
    for (size_t i = 0; i < BULK; i++)
        buf[i] = pattern(i, 2);
    if (ssl_write_full(ssl, buf, BULK) != BULK) {
        snprintf(r->err, sizeof r->err, "server write failed");
        goto out;
    }
    /* SSL_sendfile works only with kTLS TX; the client expects the file
     * bytes or, if unavailable, the same bytes via SSL_write. */
    if (r->s_ktls_tx) {
        int ffd = open(sendfile_path, O_RDONLY);
        ossl_ssize_t n = ffd >= 0 ? SSL_sendfile(ssl, ffd, 0, SENDFILE_LEN, 0) : -1;
        if (ffd >= 0)
            close(ffd);
        r->sendfile_ok = n == SENDFILE_LEN;
        if (n < 0)
            n = 0;
        if (n < SENDFILE_LEN) {
            for (size_t i = 0; i < SENDFILE_LEN; i++)
                buf[i] = pattern(i, 3);
            ssl_write_full(ssl, buf + n, SENDFILE_LEN - (int)n);
        }
    } else {
        for (size_t i = 0; i < SENDFILE_LEN; i++)
            buf[i] = pattern(i, 3);
        ssl_write_full(ssl, buf, SENDFILE_LEN);
    }
    if (ssl_read_full(ssl, buf, 1) != 1 || buf[0] != 'Q')
        ok = false;
    SSL_shutdown(ssl);
    r->data_ok = ok;
out:
    SSL_free(ssl);
    close(fd);
    free(buf);
    return NULL;
}

static SSL_CTX *make_ctx(bool server, const struct suite *s, bool ktls)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());

    if (!ctx)
        ossl_die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, s->version);
    SSL_CTX_set_max_proto_version(ctx, s->version);
    if (s->version == TLS1_3_VERSION) {
        if (!SSL_CTX_set_ciphersuites(ctx, s->ossl))
            ossl_die("SSL_CTX_set_ciphersuites");
    } else if (!SSL_CTX_set_cipher_list(ctx, s->ossl)) {
        ossl_die("SSL_CTX_set_cipher_list");
    }
    if (ktls)
        SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
    if (server && (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, pkey) != 1))
        ossl_die("server certificate");
    return ctx;
}

static void run_suite(const struct suite *s, bool client_ktls, struct result *r)
{
    SSL_CTX *sctx = make_ctx(true, s, true), *cctx = make_ctx(false, s, client_ktls);
    unsigned char *buf = malloc(BULK);
    uint16_t port;
    int lfd = listen_lo(&port), fd;
    struct server_arg sa = {sctx, lfd, r};
    pthread_t th;
    SSL *ssl;
    bool ok = true;

    memset(r, 0, sizeof *r);
    read_stat(r->before);
    pthread_create(&th, NULL, server_main, &sa);
    fd = connect_lo(port);
    ssl = SSL_new(cctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        if (!r->err[0])
            snprintf(r->err, sizeof r->err, "client handshake: %s",
                     ERR_reason_error_string(ERR_peek_last_error()));
        goto out;
    }
    r->hs_ok = true;
    snprintf(r->negotiated, sizeof r->negotiated, "%s", SSL_get_cipher_name(ssl));
    snprintf(r->proto, sizeof r->proto, "%s", SSL_get_version(ssl));
    for (size_t i = 0; i < BULK; i++)
        buf[i] = pattern(i, 1);
    if (ssl_write_full(ssl, buf, BULK) != BULK)
        ok = false;
    if (ssl_read_full(ssl, buf, BULK) != BULK)
        ok = false;
    for (size_t i = 0; ok && i < BULK; i++)
        if (buf[i] != pattern(i, 2))
            ok = false;
    if (ssl_read_full(ssl, buf, SENDFILE_LEN) != SENDFILE_LEN)
        ok = false;
    for (size_t i = 0; ok && i < SENDFILE_LEN; i++)
        if (buf[i] != pattern(i, 3))
            ok = false;
    r->c_ktls_tx = BIO_get_ktls_send(SSL_get_wbio(ssl));
    r->c_ktls_rx = BIO_get_ktls_recv(SSL_get_rbio(ssl));
    read_stat(r->mid);                  /* both ends still open */
    if (SSL_write(ssl, "Q", 1) != 1)
        ok = false;
    SSL_read(ssl, buf, 1);              /* close_notify */
    SSL_shutdown(ssl);
out:
    SSL_free(ssl);
    close(fd);
    pthread_join(th, NULL);
    close(lfd);
    r->data_ok = r->data_ok && ok;
    read_stat(r->after);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    free(buf);
}

static const char *yn(bool b) { return b ? "yes" : "no"; }

int main(int argc, char **argv)
{
    bool client_ktls = false, verbose = false;
    int err = 0, failures = 0, kern[NSUITES], kern_rx[NSUITES];
    struct result res[NSUITES];
    long before[NSTAT];

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--both"))
            client_ktls = true;
        else if (!strcmp(argv[i], "-v"))
            verbose = true;
        else {
            fprintf(stderr, "usage: ktls_probe [--both] [-v]\n");
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ktls_probe: %s, kTLS on server%s\n", OpenSSL_version(OPENSSL_VERSION),
           client_ktls ? " and client" : " only");

    /* 1. What the kernel itself accepts. */
    for (size_t i = 0; i < NSUITES; i++) {
        kern[i] = kernel_supports(suites[i].version, suites[i].kcipher, false, &err);
        if (kern[i] < 0) {
            printf("ktls_probe: SKIP: kernel has no TLS ULP (setsockopt TCP_ULP \"tls\": %s);"
                   " CONFIG_TLS off or tls.ko not loaded\n", strerror(err));
            return 77;
        }
        kern_rx[i] = kernel_supports(suites[i].version, suites[i].kcipher, true, &err);
    }

    /* 2. OpenSSL with SSL_OP_ENABLE_KTLS, per suite. */
    int fd = mkstemp(sendfile_path);
    unsigned char *fb = malloc(SENDFILE_LEN);
    for (size_t i = 0; i < SENDFILE_LEN; i++)
        fb[i] = pattern(i, 3);
    if (fd < 0 || write(fd, fb, SENDFILE_LEN) != SENDFILE_LEN) {
        perror("sendfile source");
        return 1;
    }
    close(fd);
    free(fb);
    make_cert();
    read_stat(before);
    if (verbose)
        dump_stat("before");
    for (size_t i = 0; i < NSUITES; i++)
        run_suite(&suites[i], client_ktls, &res[i]);
    unlink(sendfile_path);

    /* 3. Table. dTx/dRx: change of TlsTxSw/TlsRxSw over the connection
     * (contexts created); curTx/curRx: TlsCurrTxSw/TlsCurrRxSw while it was
     * open, relative to before. */
    printf("\n%-7s %-17s %-6s %-5s | %-10s %-10s | %-4s %-4s %-5s %-5s | %-8s %-4s | %s\n",
           "version", "cipher", "kernel", "krnRX", "srv kTX", "srv kRX", "dTx", "dRx",
           "curTx", "curRx", "sendfile", "data", "verdict");
    for (size_t i = 0; i < NSUITES; i++) {
        const struct suite *s = &suites[i];
        struct result *r = &res[i];
        long dtx = r->after[TX_SW] - r->before[TX_SW], drx = r->after[RX_SW] - r->before[RX_SW];
        long ctx = r->mid[CURR_TX_SW] - r->before[CURR_TX_SW];
        long crx = r->mid[CURR_RX_SW] - r->before[CURR_RX_SW];
        bool tx_ok = r->hs_ok && r->data_ok && r->s_ktls_tx && dtx >= 1 && ctx >= 1;
        const char *verdict;
        char stx[16], srx[16];

        if (!kern[i])
            verdict = "n/a (kernel lacks cipher)";
        else if (tx_ok)
            verdict = "OK: TX offloaded";
        else if (s->required) {
            verdict = "FAIL";
            failures++;
        } else
            verdict = "not offloaded (optional)";
        snprintf(stx, sizeof stx, "%s%s", yn(r->s_ktls_tx), client_ktls ? (r->c_ktls_tx ? "/c:yes" : "/c:no") : "");
        snprintf(srx, sizeof srx, "%s%s", yn(r->s_ktls_rx), client_ktls ? (r->c_ktls_rx ? "/c:yes" : "/c:no") : "");
        printf("%-7s %-17s %-6s %-5s | %-10s %-10s | %-4ld %-4ld %-5ld %-5ld | %-8s %-4s | %s%s%s\n",
               s->version == TLS1_3_VERSION ? "TLS1.3" : "TLS1.2", s->name,
               kern[i] ? "yes" : "no", kern_rx[i] > 0 ? "yes" : "no", stx, srx, dtx, drx, ctx, crx,
               r->s_ktls_tx ? yn(r->sendfile_ok) : "-", r->data_ok ? "ok" : "BAD", verdict,
               r->err[0] ? ": " : "", r->err);
        if (verbose)
            printf("        negotiated %s %s\n", r->proto, r->negotiated);
    }
    long after[NSTAT];
    read_stat(after);
    printf("\ntotals over the OpenSSL runs: TlsTxSw +%ld, TlsRxSw +%ld, TlsTxDevice +%ld,"
           " TlsRxDevice +%ld, TlsDecryptError +%ld\n",
           after[TX_SW] - before[TX_SW], after[RX_SW] - before[RX_SW], after[TX_DEV] - before[TX_DEV],
           after[RX_DEV] - before[RX_DEV], after[DECRYPT_ERR] - before[DECRYPT_ERR]);
    if (verbose)
        dump_stat("after");
    printf("columns: kernel/krnRX = kernel accepts TX/RX keys for the pair (raw setsockopt);"
           " srv kTX/kRX = OpenSSL BIO_get_ktls_send/recv on the server%s;"
           " dTx/dRx = TlsTxSw/TlsRxSw delta; curTx/curRx = TlsCurrTxSw/TlsCurrRxSw while open\n",
           client_ktls ? " (/c: client)" : "");
    printf("ktls_probe: %s (%d required pair(s) without TX offload)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
