/* kite cert: certificates for mutual TLS without the openssl command line.
 *
 * Everything lives in one directory (--dir, default ./pki):
 *   ca.pem ca.key server.pem server.key clients/NAME.pem clients/NAME.key
 *   crl.pem index.txt
 * index.txt uses the `openssl ca` database layout (status, expiry,
 * revocation time, serial, file, subject; tab separated) so that revoke and
 * crl know every serial ever issued, even for files deleted since.
 *
 * Errors are one line on stderr, "kite cert: ...", and a non-zero exit.
 * Nothing is overwritten without --force; crl.pem and index.txt are
 * replaced atomically (write a temporary file, rename) because a running
 * broker may read them at any time. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "tools/cert.h"

#define CERT_DAYS_CA       3650
#define CERT_DAYS_SERVER   825
#define CERT_DAYS_CLIENT   398
/* A broker with crlfile rejects every client once the CRL's nextUpdate
 * passes, so the default is long; `check` warns 30 days ahead. */
#define CERT_DAYS_CRL      365
#define CERT_DAYS_MAX      36500
#define CERT_WARN_DAYS     30
#define CERT_ARGS_MAX      64      /* positional arguments (server hosts) */
#define CERT_CN_MAX        64      /* ub-common-name, RFC 5280 */
#define CERT_DNS_MAX       253
#define CERT_BATCH_MAX     1000000 /* clients issued by one command */
#define CERT_BLOCKS_MAX    64      /* listener blocks `check` follows */
#define CERT_SERIAL_BITS   127     /* positive, under the 20-octet limit */
#define CERT_PASS_MAX      1024
#define CERT_DEFAULT_PORT  8883

_Static_assert(CERT_DAYS_CLIENT < CERT_DAYS_CA, "leaf outlives its CA");
_Static_assert(CERT_DAYS_SERVER < CERT_DAYS_CA, "leaf outlives its CA");
_Static_assert(CERT_SERIAL_BITS < 20 * 8, "serial over 20 octets");

struct cert_opts {
	const char *dir;
	const char *cn;
	const char *key;
	const char *passin;
	const char *passout;
	const char *ca;
	const char *config;
	const char *from;
	const char *prefix;
	const char *not_before;
	long days;              /* -1: the subcommand's default */
	long count;             /* -1: not given */
	long port;              /* -1: CERT_DEFAULT_PORT */
	bool force;
	bool help;
	int nargs;
	char *args[CERT_ARGS_MAX];
};

/* ---- messages ---------------------------------------------------------- */

/* Prints "kite cert: MSG" (plus OpenSSL's reason when ssl is set) on one
 * line and returns -1, the error convention of every function here. */
static int cert_verr(bool ssl, const char *fmt, va_list ap)
{
	char msg[1024];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	unsigned long e = ssl ? ERR_peek_last_error() : 0;
	const char *why = e ? ERR_reason_error_string(e) : NULL;
	if (why)
		fprintf(stderr, "kite cert: %s: %s\n", msg, why);
	else
		fprintf(stderr, "kite cert: %s\n", msg);
	ERR_clear_error();
	return -1;
}

__attribute__((format(printf, 1, 2)))
static int cert_err(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = cert_verr(false, fmt, ap);
	va_end(ap);
	return r;
}

__attribute__((format(printf, 1, 2)))
static int cert_err_ssl(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = cert_verr(true, fmt, ap);
	va_end(ap);
	return r;
}

__attribute__((format(printf, 1, 2)))
static void cert_warn(const char *fmt, ...)
{
	va_list ap;
	char msg[1024];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "kite cert: warning: %s\n", msg);
}

/* ---- paths and files --------------------------------------------------- */

__attribute__((format(printf, 3, 4)))
static int path_fmt(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= size)
		return cert_err("path too long: %.64s...", buf);
	return 0;
}

static bool file_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static int dir_make(const char *path)
{
	if (mkdir(path, 0755) == 0 || errno == EEXIST)
		return 0;
	return cert_err("cannot create directory %s: %s", path, strerror(errno));
}

static int fd_write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Writes the bytes in mem to path with mode. Without replace the file must
 * not exist (O_EXCL); with replace a temporary file is renamed over it, so
 * readers see the old or the new file, never half of one. */
static int file_put(const char *path, mode_t mode, BIO *mem, bool replace)
{
	char tmp[PATH_MAX];
	const char *target = path;
	char *data;
	long len = BIO_get_mem_data(mem, &data);
	int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (replace ? O_TRUNC : O_EXCL);

	if (replace) {
		if (path_fmt(tmp, sizeof(tmp), "%s.tmp", path) < 0)
			return -1;
		target = tmp;
	}
	int fd = open(target, flags, mode);
	if (fd < 0 && errno == EEXIST)
		return cert_err("%s exists (use --force to replace it)", path);
	if (fd < 0)
		return cert_err("cannot create %s: %s", target, strerror(errno));
	if (fchmod(fd, mode) < 0 || fd_write_all(fd, data, (size_t)len) < 0) {
		int e = errno;
		close(fd);
		unlink(target);
		return cert_err("cannot write %s: %s", target, strerror(e));
	}
	if (close(fd) < 0)
		return cert_err("cannot write %s: %s", target, strerror(errno));
	if (replace && rename(tmp, path) < 0) {
		unlink(tmp);
		return cert_err("cannot replace %s: %s", path, strerror(errno));
	}
	return 0;
}

/* Fails when path exists and --force was not given: checked before any
 * key is generated, so a refused command leaves nothing behind. */
static int file_free(const char *path, bool force)
{
	if (!force && file_exists(path))
		return cert_err("%s exists (use --force to replace it)", path);
	return 0;
}

static BIO *bio_open(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		cert_err("cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	BIO *b = BIO_new_fp(f, BIO_CLOSE);
	if (!b) {
		fclose(f);
		cert_err_ssl("cannot read %s", path);
	}
	return b;
}

/* ---- passphrases ------------------------------------------------------- */

struct passin {
	const char *spec;       /* env:VAR, pass:TEXT, file:PATH or NULL */
	const char *path;       /* the key file, for the prompt */
	bool asked;
	bool failed;
	char why[160];
};

static int pass_from_file(const char *path, char *buf, int size)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	char *r = fgets(buf, size, f);
	fclose(f);
	if (!r)
		return -1;
	buf[strcspn(buf, "\r\n")] = '\0';
	return (int)strlen(buf);
}

/* Resolves a --passin/--passout spec into buf; returns its length or -1
 * with the reason in why. */
static int pass_resolve(const char *spec, char *buf, int size, char *why, size_t whylen)
{
	const char *v = NULL;
	if (!strncmp(spec, "env:", 4)) {
		v = getenv(spec + 4);
		if (!v)
			snprintf(why, whylen, "environment variable %s is not set", spec + 4);
	} else if (!strncmp(spec, "pass:", 5)) {
		v = spec + 5;
	} else if (!strncmp(spec, "file:", 5)) {
		int n = pass_from_file(spec + 5, buf, size);
		if (n < 0)
			snprintf(why, whylen, "cannot read passphrase file %s", spec + 5);
		return n;
	} else {
		snprintf(why, whylen, "passphrase source must be env:VAR, pass:TEXT or file:PATH");
	}
	if (!v)
		return -1;
	if ((int)strlen(v) >= size) {
		snprintf(why, whylen, "passphrase too long");
		return -1;
	}
	strcpy(buf, v);
	return (int)strlen(buf);
}

static int passin_cb(char *buf, int size, int rwflag, void *u)
{
	struct passin *p = u;
	p->asked = true;
	if (p->spec) {
		int n = pass_resolve(p->spec, buf, size, p->why, sizeof(p->why));
		p->failed = n < 0;
		return n;
	}
	if (!isatty(STDIN_FILENO)) {
		p->failed = true;
		snprintf(p->why, sizeof(p->why),
			 "key is encrypted: give its passphrase with --passin env:VAR");
		return -1;
	}
	char prompt[PATH_MAX + 32];
	snprintf(prompt, sizeof(prompt), "Passphrase for %s: ", p->path);
	if (EVP_read_pw_string(buf, size, prompt, 0) != 0) {
		p->failed = true;
		snprintf(p->why, sizeof(p->why), "no passphrase read");
		return -1;
	}
	return (int)strlen(buf);
}

/* Loads the private key in path, asking for a passphrase only when it is
 * encrypted. */
static EVP_PKEY *key_load(const char *path, const char *passin_spec)
{
	struct passin p = { .spec = passin_spec, .path = path };
	BIO *in = bio_open(path);
	if (!in)
		return NULL;
	EVP_PKEY *k = PEM_read_bio_PrivateKey(in, NULL, passin_cb, &p);
	BIO_free(in);
	if (k) {
		ERR_clear_error();
		return k;
	}
	if (p.failed)
		cert_err("%s: %s", path, p.why);
	else if (p.asked)
		cert_err("%s: wrong passphrase (or damaged key)", path);
	else
		cert_err("%s: no private key in this file", path);
	return NULL;
}

/* ---- reading certificates ---------------------------------------------- */

/* Every certificate in a PEM file (a chain file holds several), or one DER
 * certificate. NULL (error printed) when there is none. */
static STACK_OF(X509) *certs_load(const char *path)
{
	BIO *in = bio_open(path);
	if (!in)
		return NULL;
	STACK_OF(X509) *sk = sk_X509_new_null();
	X509 *x;
	while (sk && (x = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL)
		sk_X509_push(sk, x);
	if (sk && sk_X509_num(sk) == 0 && BIO_reset(in) == 0) {
		x = d2i_X509_bio(in, NULL);
		if (x)
			sk_X509_push(sk, x);
	}
	BIO_free(in);
	ERR_clear_error();
	if (!sk || sk_X509_num(sk) == 0) {
		sk_X509_pop_free(sk, X509_free);
		cert_err("%s: no certificate in this file", path);
		return NULL;
	}
	return sk;
}

static X509 *cert_load(const char *path)
{
	STACK_OF(X509) *sk = certs_load(path);
	if (!sk)
		return NULL;
	X509 *x = sk_X509_shift(sk);
	sk_X509_pop_free(sk, X509_free);
	return x;
}

static X509_CRL *crl_load(const char *path, bool quiet)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		if (!quiet)
			cert_err("cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	X509_CRL *crl = PEM_read_X509_CRL(f, NULL, NULL, NULL);
	fclose(f);
	if (!crl && !quiet)
		cert_err("%s: no CRL in this file", path);
	ERR_clear_error();
	return crl;
}

/* ---- keys -------------------------------------------------------------- */

struct keyspec {
	bool rsa;
	int bits;               /* RSA modulus; 256 for P-256 */
};

static int keyspec_parse(const char *s, struct keyspec *ks)
{
	*ks = (struct keyspec){ .rsa = false, .bits = 256 };
	if (!s || !strcmp(s, "ec") || !strcmp(s, "ecdsa") || !strcmp(s, "ec:P-256") ||
	    !strcmp(s, "p256") || !strcmp(s, "P-256"))
		return 0;
	if (!strcmp(s, "rsa")) {
		*ks = (struct keyspec){ .rsa = true, .bits = 2048 };
		return 0;
	}
	if (!strncmp(s, "rsa:", 4)) {
		int b = atoi(s + 4);
		if (b == 2048 || b == 3072 || b == 4096) {
			*ks = (struct keyspec){ .rsa = true, .bits = b };
			return 0;
		}
	}
	return cert_err("unknown key type '%s': use ec (P-256), rsa:2048, rsa:3072 or rsa:4096", s);
}

/* One context for many keys: a batch of clients fetches the algorithm
 * once instead of once per key. */
static EVP_PKEY_CTX *keygen_new(const struct keyspec *ks)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, ks->rsa ? "RSA" : "EC", NULL);
	if (!ctx || EVP_PKEY_keygen_init(ctx) <= 0)
		goto fail;
	if (ks->rsa && EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, ks->bits) <= 0)
		goto fail;
	if (!ks->rsa && EVP_PKEY_CTX_set_group_name(ctx, "P-256") <= 0)
		goto fail;
	return ctx;
fail:
	EVP_PKEY_CTX_free(ctx);
	cert_err_ssl("cannot set up key generation");
	return NULL;
}

static EVP_PKEY *keygen_one(EVP_PKEY_CTX *ctx)
{
	EVP_PKEY *k = NULL;
	if (EVP_PKEY_generate(ctx, &k) <= 0) {
		cert_err_ssl("key generation failed");
		return NULL;
	}
	return k;
}

static void key_describe(EVP_PKEY *k, char *buf, size_t size)
{
	int id = EVP_PKEY_get_base_id(k);
	int bits = EVP_PKEY_get_bits(k);
	char group[64] = "";
	if (id == EVP_PKEY_EC) {
		size_t len;
		if (!EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME,
						    group, sizeof(group), &len))
			strcpy(group, "unknown curve");
		const char *nist = EC_curve_nid2nist(OBJ_sn2nid(group));
		snprintf(buf, size, "ECDSA %s (%d bits)", nist ? nist : group, bits);
	} else if (id == EVP_PKEY_RSA) {
		snprintf(buf, size, "RSA %d bits%s", bits, bits < 2048 ? " (too weak)" : "");
	} else {
		const char *t = EVP_PKEY_get0_type_name(k);
		snprintf(buf, size, "%s (%d bits)", t ? t : "unknown type", bits);
	}
}

/* Private keys are PKCS#8 PEM, mode 0600; encrypted (AES-256) when a
 * passphrase source is given. */
static int key_write(const char *path, EVP_PKEY *k, const char *passout, bool force)
{
	char pass[CERT_PASS_MAX] = "";
	char why[160];
	int plen = 0;
	if (passout) {
		plen = pass_resolve(passout, pass, sizeof(pass), why, sizeof(why));
		if (plen < 4)
			return cert_err("--passout: %s", plen < 0 ? why : "passphrase under 4 characters");
	}
	BIO *mem = BIO_new(BIO_s_mem());
	int ok = mem && PEM_write_bio_PrivateKey(mem, k, passout ? EVP_aes_256_cbc() : NULL,
						 (unsigned char *)(passout ? pass : NULL),
						 plen, NULL, NULL);
	OPENSSL_cleanse(pass, sizeof(pass));
	int r = ok ? file_put(path, 0600, mem, force) : cert_err_ssl("cannot encode key");
	BIO_free(mem);
	return r;
}

static int cert_write(const char *path, X509 *x, bool force)
{
	BIO *mem = BIO_new(BIO_s_mem());
	int r = mem && PEM_write_bio_X509(mem, x) ? file_put(path, 0644, mem, force)
						  : cert_err_ssl("cannot encode certificate");
	BIO_free(mem);
	return r;
}

/* ---- building certificates --------------------------------------------- */

struct issue {
	const char *cn;
	const char *san;        /* "DNS:a,IP:b" or NULL */
	const char *eku;        /* "serverAuth", "clientAuth" or NULL (CA) */
	bool is_ca;
	long days;
	long nb_sec;            /* notBefore relative to now */
};

static int ext_add(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
	X509_EXTENSION *e = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
	if (!e)
		return cert_err_ssl("bad extension %s=%s", OBJ_nid2sn(nid), value);
	int ok = X509_add_ext(x, e, -1);
	X509_EXTENSION_free(e);
	return ok ? 0 : cert_err_ssl("cannot add extension %s", OBJ_nid2sn(nid));
}

static int cert_set_serial(X509 *x)
{
	BIGNUM *bn = BN_new();
	int ok = bn && BN_rand(bn, CERT_SERIAL_BITS, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) &&
		 BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
	BN_free(bn);
	return ok ? 0 : cert_err_ssl("cannot make a serial number");
}

static int cert_set_names(X509 *x, const char *cn, X509 *ca)
{
	X509_NAME *n = X509_get_subject_name(x);
	if (!X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0))
		return cert_err_ssl("bad common name '%s'", cn);
	if (!X509_set_issuer_name(x, ca ? X509_get_subject_name(ca) : n))
		return cert_err_ssl("cannot set issuer");
	return 0;
}

static int cert_set_validity(X509 *x, const struct issue *is)
{
	if (!X509_time_adj_ex(X509_getm_notBefore(x), 0, is->nb_sec, NULL) ||
	    !X509_time_adj_ex(X509_getm_notAfter(x), (int)is->days, is->nb_sec, NULL))
		return cert_err_ssl("cannot set validity");
	return 0;
}

static int cert_set_exts(X509 *x, const struct issue *is, EVP_PKEY *key, X509 *ca)
{
	X509V3_CTX ctx;
	bool rsa = EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA;
	X509V3_set_ctx(&ctx, ca ? ca : x, x, NULL, NULL, 0);
	if (ext_add(x, &ctx, NID_basic_constraints, is->is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE") < 0 ||
	    ext_add(x, &ctx, NID_key_usage,
		    is->is_ca ? "critical,keyCertSign,cRLSign"
		    : rsa     ? "critical,digitalSignature,keyEncipherment"
			      : "critical,digitalSignature") < 0 ||
	    ext_add(x, &ctx, NID_subject_key_identifier, "hash") < 0)
		return -1;
	if (ca && ext_add(x, &ctx, NID_authority_key_identifier, "keyid:always") < 0)
		return -1;
	if (is->eku && ext_add(x, &ctx, NID_ext_key_usage, is->eku) < 0)
		return -1;
	if (is->san && ext_add(x, &ctx, NID_subject_alt_name, is->san) < 0)
		return -1;
	return 0;
}

/* X509_set_pubkey runs OpenSSL 3's generic encoder, ~220 us: over half of
 * a batch certificate. A P-256 SubjectPublicKeyInfo is two OIDs and the
 * point, so it is set directly; other keys take the generic path. */
static int cert_set_pubkey(X509 *x, EVP_PKEY *k)
{
	char group[32];
	unsigned char *pt = NULL;
	if (EVP_PKEY_get_base_id(k) != EVP_PKEY_EC ||
	    !EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL) ||
	    OBJ_sn2nid(group) != NID_X9_62_prime256v1)
		return X509_set_pubkey(x, k) ? 0 : cert_err_ssl("cannot set public key");
	size_t len = EVP_PKEY_get1_encoded_public_key(k, &pt);
	if (len == 0 || len > INT_MAX ||
	    !X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), OBJ_nid2obj(NID_X9_62_id_ecPublicKey),
				    V_ASN1_OBJECT, OBJ_nid2obj(NID_X9_62_prime256v1), pt, (int)len)) {
		OPENSSL_free(pt);
		return cert_err_ssl("cannot set public key");
	}
	return 0;
}

/* A certificate for key, signed by cakey (self-signed when ca is NULL). */
static X509 *cert_build(const struct issue *is, EVP_PKEY *key, X509 *ca, EVP_PKEY *cakey)
{
	X509 *x = X509_new();
	if (!x) {
		cert_err_ssl("out of memory");
		return NULL;
	}
	if (!X509_set_version(x, X509_VERSION_3) || cert_set_serial(x) < 0 ||
	    cert_set_names(x, is->cn, ca) < 0 || cert_set_validity(x, is) < 0 ||
	    cert_set_pubkey(x, key) < 0 || cert_set_exts(x, is, key, ca) < 0)
		goto fail;
	if (!X509_sign(x, ca ? cakey : key, EVP_sha256())) {
		cert_err_ssl("signing failed");
		goto fail;
	}
	return x;
fail:
	X509_free(x);
	return NULL;
}

/* ---- options shared by the issuing commands ----------------------------- */

static int days_get(const struct cert_opts *o, long dflt)
{
	return o->days < 0 ? (int)dflt : (int)o->days;
}

/* --not-before: days relative to now ("-10" is ten days ago) or a date
 * YYYY-MM-DD (UTC). Returns seconds relative to now in *sec. */
static int not_before_parse(const char *s, long *sec)
{
	*sec = 0;
	if (!s)
		return 0;
	char *end;
	errno = 0;
	long d = strtol(s, &end, 10);
	if (!*end && end != s && errno == 0 && d > -CERT_DAYS_MAX && d < CERT_DAYS_MAX) {
		*sec = d * 86400;
		return 0;
	}
	int y, m, dd;
	char tail;
	if (sscanf(s, "%4d-%2d-%2d%c", &y, &m, &dd, &tail) != 3 || m < 1 || m > 12 || dd < 1 || dd > 31)
		return cert_err("--not-before '%s': give days from now (-10) or a date (2024-01-31)", s);
	struct tm tm = { .tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = dd };
	*sec = (long)(timegm(&tm) - time(NULL));
	return 0;
}

/* ---- the directory: CA, index ------------------------------------------- */

struct pki {
	const char *dir;
	char ca_pem[PATH_MAX];
	char ca_key[PATH_MAX];
	char index[PATH_MAX];
	char crl[PATH_MAX];
	char clients[PATH_MAX];
	X509 *ca;
	EVP_PKEY *cakey;
};

static int pki_paths(struct pki *p, const char *dir)
{
	p->dir = dir;
	if (path_fmt(p->ca_pem, sizeof(p->ca_pem), "%s/ca.pem", dir) < 0 ||
	    path_fmt(p->ca_key, sizeof(p->ca_key), "%s/ca.key", dir) < 0 ||
	    path_fmt(p->index, sizeof(p->index), "%s/index.txt", dir) < 0 ||
	    path_fmt(p->crl, sizeof(p->crl), "%s/crl.pem", dir) < 0 ||
	    path_fmt(p->clients, sizeof(p->clients), "%s/clients", dir) < 0)
		return -1;
	return 0;
}

static void pki_free(struct pki *p)
{
	X509_free(p->ca);
	EVP_PKEY_free(p->cakey);
	p->ca = NULL;
	p->cakey = NULL;
}

/* Loads the CA certificate and key once (a batch signs with one load) and
 * checks that they belong together. */
static int pki_load_ca(struct pki *p, const struct cert_opts *o)
{
	if (!file_exists(p->ca_pem))
		return cert_err("no CA in %s (create one with: kite cert ca --dir %s)", p->dir, p->dir);
	p->ca = cert_load(p->ca_pem);
	if (!p->ca)
		return -1;
	p->cakey = key_load(p->ca_key, o->passin);
	if (!p->cakey)
		return -1;
	if (X509_check_private_key(p->ca, p->cakey) != 1)
		return cert_err("%s does not match %s", p->ca_key, p->ca_pem);
	ERR_clear_error();
	return 0;
}

static char *serial_hex(X509 *x)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	char *hex = bn ? BN_bn2hex(bn) : NULL;
	BN_free(bn);
	return hex;
}

/* One `openssl ca` style line: V, expiry, (no revocation), serial, file,
 * subject. */
static int index_append(FILE *idx, X509 *x, const char *relpath)
{
	char *hex = serial_hex(x);
	char subj[256];
	const ASN1_TIME *na = X509_get0_notAfter(x);
	X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof(subj));
	int n = hex ? fprintf(idx, "V\t%s\t\t%s\t%s\t%s\n",
			      (const char *)ASN1_STRING_get0_data(na), hex, relpath, subj) : -1;
	OPENSSL_free(hex);
	return n < 0 ? cert_err("cannot write index: %s", strerror(errno)) : 0;
}

static FILE *index_open_append(const struct pki *p)
{
	FILE *f = fopen(p->index, "a");
	if (!f)
		cert_err("cannot open %s: %s", p->index, strerror(errno));
	return f;
}

/* Issues one leaf: a new key, a certificate signed by the CA, both files
 * and the index line. */
static int leaf_issue(struct pki *p, EVP_PKEY_CTX *kg, const struct issue *is,
		      const char *pem, const char *keyf, const char *rel, FILE *idx, bool force)
{
	int r = -1;
	EVP_PKEY *k = keygen_one(kg);
	X509 *x = k ? cert_build(is, k, p->ca, p->cakey) : NULL;
	if (x && key_write(keyf, k, NULL, force) == 0 && cert_write(pem, x, force) == 0)
		r = index_append(idx, x, rel);
	X509_free(x);
	EVP_PKEY_free(k);
	return r;
}

/* ---- ca ------------------------------------------------------------------ */

static int cmd_ca(struct cert_opts *o)
{
	struct pki p = { 0 };
	struct keyspec ks;
	struct issue is = { .cn = o->cn ? o->cn : "kite CA", .is_ca = true,
			    .days = days_get(o, CERT_DAYS_CA) };
	if (pki_paths(&p, o->dir) < 0 || keyspec_parse(o->key, &ks) < 0 ||
	    not_before_parse(o->not_before, &is.nb_sec) < 0)
		return 1;
	if (strlen(is.cn) > CERT_CN_MAX)
		return cert_err("--cn longer than %d characters", CERT_CN_MAX), 1;
	if (file_free(p.ca_pem, o->force) < 0 || file_free(p.ca_key, o->force) < 0 ||
	    dir_make(o->dir) < 0)
		return 1;
	int r = 1;
	EVP_PKEY_CTX *kg = keygen_new(&ks);
	EVP_PKEY *k = kg ? keygen_one(kg) : NULL;
	X509 *x = k ? cert_build(&is, k, NULL, NULL) : NULL;
	if (x && key_write(p.ca_key, k, o->passout, o->force) == 0 &&
	    cert_write(p.ca_pem, x, o->force) == 0) {
		char kd[96];
		key_describe(k, kd, sizeof(kd));
		printf("CA \"%s\" (%s, %ld days): %s, key %s (mode 0600)\n",
		       is.cn, kd, is.days, p.ca_pem, p.ca_key);
		r = 0;
	}
	X509_free(x);
	EVP_PKEY_free(k);
	EVP_PKEY_CTX_free(kg);
	return r;
}

/* ---- server -------------------------------------------------------------- */

static bool host_is_ip(const char *h, bool *loopback)
{
	unsigned char a[16];
	if (inet_pton(AF_INET, h, a) == 1) {
		*loopback = a[0] == 127;
		return true;
	}
	if (inet_pton(AF_INET6, h, a) == 1) {
		*loopback = !strcmp(h, "::1");
		return true;
	}
	return false;
}

/* A DNS name: labels of letters, digits and '-', an optional leading "*."
 * wildcard label. */
static bool host_dns_ok(const char *h)
{
	size_t len = strlen(h), label = 0;
	if (len == 0 || len > CERT_DNS_MAX)
		return false;
	if (!strncmp(h, "*.", 2))
		h += 2;
	for (const char *c = h; ; c++) {
		if (*c == '.' || *c == '\0') {
			if (label == 0 || label > 63 || c[-1] == '-')
				return false;
			if (*c == '\0')
				return true;
			label = 0;
			continue;
		}
		bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
			  (*c >= '0' && *c <= '9') || (*c == '-' && label > 0);
		if (!ok)
			return false;
		label++;
	}
}

struct hosts {
	char san[CERT_ARGS_MAX * (CERT_DNS_MAX + 8)];
	bool any_dns;
	bool any_loopback;
	bool localhost;
};

/* Builds the subjectAltName value from the HOST arguments. */
static int hosts_parse(struct cert_opts *o, struct hosts *h)
{
	size_t off = 0;
	for (int i = 0; i < o->nargs; i++) {
		const char *a = o->args[i];
		bool lo = false;
		bool ip = host_is_ip(a, &lo);
		if (!ip && !host_dns_ok(a))
			return cert_err("'%s' is neither a host name nor an IP address", a);
		h->any_loopback |= lo;
		h->any_dns |= !ip;
		h->localhost |= !strcasecmp(a, "localhost");
		int n = snprintf(h->san + off, sizeof(h->san) - off, "%s%s:%s",
				 i ? "," : "", ip ? "IP" : "DNS", a);
		off += (size_t)n;
	}
	if (strlen(o->args[0]) > CERT_CN_MAX)
		return cert_err("first host '%s' is longer than a common name may be (%d)",
				o->args[0], CERT_CN_MAX);
	return 0;
}

/* Clients check the name they dial against the SANs: say so when the list
 * looks like it will not match. */
static void hosts_warn(const struct cert_opts *o, const struct hosts *h)
{
	if (!h->any_dns)
		cert_warn("only IP addresses given: clients must dial exactly these "
			  "addresses; one that dials a host name will fail verification");
	if (h->any_loopback && !h->localhost)
		cert_warn("'localhost' is not among the names: a local test with "
			  "-h localhost will fail verification (add localhost)");
	for (int i = 0; i < o->nargs; i++) {
		bool lo;
		const char *a = o->args[i];
		if (!host_is_ip(a, &lo) && !strchr(a, '.') && strcasecmp(a, "localhost"))
			cert_warn("'%s' has no dot: clients that dial its full name "
				  "(%s.example.lan) will not match; list every name clients use", a, a);
	}
}

static int cmd_server(struct cert_opts *o)
{
	struct pki p = { 0 };
	struct keyspec ks;
	static struct hosts h;
	char pem[PATH_MAX], keyf[PATH_MAX];
	memset(&h, 0, sizeof(h));
	struct issue is = { .cn = o->args[0], .eku = "serverAuth", .san = h.san,
			    .days = days_get(o, CERT_DAYS_SERVER) };
	if (pki_paths(&p, o->dir) < 0 || keyspec_parse(o->key, &ks) < 0 ||
	    not_before_parse(o->not_before, &is.nb_sec) < 0 || hosts_parse(o, &h) < 0 ||
	    path_fmt(pem, sizeof(pem), "%s/server.pem", o->dir) < 0 ||
	    path_fmt(keyf, sizeof(keyf), "%s/server.key", o->dir) < 0 ||
	    file_free(pem, o->force) < 0 || file_free(keyf, o->force) < 0)
		return 1;
	hosts_warn(o, &h);
	int r = 1;
	EVP_PKEY_CTX *kg = NULL;
	FILE *idx = NULL;
	if (pki_load_ca(&p, o) == 0 && (kg = keygen_new(&ks)) && (idx = index_open_append(&p)) &&
	    leaf_issue(&p, kg, &is, pem, keyf, "server.pem", idx, o->force) == 0) {
		printf("server certificate CN=%s, names %s (%ld days): %s, key %s\n",
		       is.cn, h.san, is.days, pem, keyf);
		r = 0;
	}
	if (idx && fclose(idx) != 0)
		r = (cert_err("cannot write %s: %s", p.index, strerror(errno)), 1);
	EVP_PKEY_CTX_free(kg);
	pki_free(&p);
	return r;
}

/* ---- client, clients ------------------------------------------------------ */

/* A client name becomes the certificate's CN, the broker's username
 * (use_identity_as_username) and a file name: keep it to characters that
 * are safe in all three ('+' and '#' would break ACL patterns). */
static int client_name_ok(const char *n)
{
	size_t len = strlen(n);
	if (len == 0 || len > CERT_CN_MAX || n[0] == '.' || n[0] == '-')
		return cert_err("invalid client name '%s': 1 to %d characters, "
				"not starting with '.' or '-'", n, CERT_CN_MAX);
	for (const char *c = n; *c; c++) {
		bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
			  (*c >= '0' && *c <= '9') || strchr("-_.@:=", *c);
		if (!ok)
			return cert_err("invalid client name '%s': use letters, digits "
					"and - _ . @ : =", n);
	}
	return 0;
}

struct batch {
	char **names;
	size_t n;
	size_t cap;
};

static void batch_free(struct batch *b)
{
	for (size_t i = 0; i < b->n; i++)
		free(b->names[i]);
	free(b->names);
	*b = (struct batch){ 0 };
}

static int batch_add(struct batch *b, const char *name)
{
	if (b->n == CERT_BATCH_MAX)
		return cert_err("more than %d clients in one command", CERT_BATCH_MAX);
	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 64;
		char **nn = realloc(b->names, cap * sizeof(*nn));
		if (!nn)
			return cert_err("out of memory");
		b->names = nn;
		b->cap = cap;
	}
	b->names[b->n] = strdup(name);
	if (!b->names[b->n])
		return cert_err("out of memory");
	b->n++;
	return 0;
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && strchr(" \t\r\n", s[n - 1]))
		s[--n] = '\0';
	return s;
}

/* --from FILE: one name per line; blank lines and # comments skipped. */
static int batch_from_file(struct batch *b, const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return cert_err("cannot open %s: %s", path, strerror(errno));
	char *line = NULL;
	size_t cap = 0;
	int r = 0, lineno = 0;
	while (r == 0 && getline(&line, &cap, f) >= 0) {
		lineno++;
		char *n = trim(line);
		if (*n == '\0' || *n == '#')
			continue;
		if (client_name_ok(n) < 0)
			r = cert_err("%s:%d: bad name", path, lineno);
		else
			r = batch_add(b, n);
	}
	free(line);
	fclose(f);
	return r;
}

static int batch_from_count(struct batch *b, const struct cert_opts *o)
{
	const char *prefix = o->prefix ? o->prefix : "device-";
	char name[CERT_CN_MAX + 32];
	if (o->count < 1 || o->count > CERT_BATCH_MAX)
		return cert_err("--count must be 1 to %d", CERT_BATCH_MAX);
	for (long i = 1; i <= o->count; i++) {
		snprintf(name, sizeof(name), "%s%ld", prefix, i);
		if (client_name_ok(name) < 0 || batch_add(b, name) < 0)
			return -1;
	}
	return 0;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every name once, and no file in the way: checked before the first key. */
static int batch_check(const struct batch *b, const struct pki *p, bool force)
{
	char **sorted = malloc(b->n * sizeof(*sorted));
	if (!sorted)
		return cert_err("out of memory");
	memcpy(sorted, b->names, b->n * sizeof(*sorted));
	qsort(sorted, b->n, sizeof(*sorted), name_cmp);
	int r = 0;
	for (size_t i = 1; i < b->n && r == 0; i++)
		if (!strcmp(sorted[i - 1], sorted[i]))
			r = cert_err("client '%s' listed twice", sorted[i]);
	free(sorted);
	char path[PATH_MAX];
	for (size_t i = 0; i < b->n && r == 0; i++)
		r = path_fmt(path, sizeof(path), "%s/%s.pem", p->clients, b->names[i]) < 0 ||
		    file_free(path, force) < 0 ? -1 : 0;
	return r;
}

static int client_issue(struct pki *p, EVP_PKEY_CTX *kg, struct issue *is,
			const char *name, FILE *idx, bool force)
{
	char pem[PATH_MAX], keyf[PATH_MAX], rel[CERT_CN_MAX + 16];
	is->cn = name;
	snprintf(rel, sizeof(rel), "clients/%s.pem", name);
	if (path_fmt(pem, sizeof(pem), "%s/%s.pem", p->clients, name) < 0 ||
	    path_fmt(keyf, sizeof(keyf), "%s/%s.key", p->clients, name) < 0)
		return -1;
	return leaf_issue(p, kg, is, pem, keyf, rel, idx, force);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Issues every client of the batch with one CA load and one key context. */
static int batch_issue(const struct batch *b, struct cert_opts *o)
{
	struct pki p = { 0 };
	struct keyspec ks;
	struct issue is = { .eku = "clientAuth", .days = days_get(o, CERT_DAYS_CLIENT) };
	if (pki_paths(&p, o->dir) < 0 || keyspec_parse(o->key, &ks) < 0 ||
	    not_before_parse(o->not_before, &is.nb_sec) < 0 || batch_check(b, &p, o->force) < 0)
		return 1;
	int r = 1;
	size_t done = 0;
	double t0 = now_s();
	EVP_PKEY_CTX *kg = NULL;
	FILE *idx = NULL;
	if (pki_load_ca(&p, o) == 0 && dir_make(p.clients) == 0 && (kg = keygen_new(&ks)) &&
	    (idx = index_open_append(&p))) {
		while (done < b->n && client_issue(&p, kg, &is, b->names[done], idx, o->force) == 0)
			done++;
		r = done == b->n ? 0 : 1;
	}
	if (idx && fclose(idx) != 0)
		r = (cert_err("cannot write %s: %s", p.index, strerror(errno)), 1);
	double dt = now_s() - t0;
	if (b->n == 1 && r == 0)
		printf("client certificate CN=%s (%ld days): %s/%s.pem, key %s/%s.key\n",
		       b->names[0], is.days, p.clients, b->names[0], p.clients, b->names[0]);
	else if (b->n > 1)
		printf("issued %zu of %zu client certificates in %.2f s (%.0f per second) into %s\n",
		       done, b->n, dt, dt > 0 ? (double)done / dt : 0.0, p.clients);
	EVP_PKEY_CTX_free(kg);
	pki_free(&p);
	return r;
}

static int cmd_client(struct cert_opts *o)
{
	struct batch b = { 0 };
	int r = client_name_ok(o->args[0]) == 0 && batch_add(&b, o->args[0]) == 0
		? batch_issue(&b, o) : 1;
	batch_free(&b);
	return r;
}

static int cmd_clients(struct cert_opts *o)
{
	struct batch b = { 0 };
	int r = 1;
	if (!o->from == (o->count < 0))
		r = (cert_err("clients: give either --from FILE or --count N"), 1);
	else if ((o->from ? batch_from_file(&b, o->from) : batch_from_count(&b, o)) == 0)
		r = b.n ? batch_issue(&b, o) : (cert_err("%s: no names in it", o->from), 1);
	batch_free(&b);
	return r;
}

/* ---- index.txt: revoke and crl ----------------------------------------------- */

enum { IDX_STATUS, IDX_EXPIRY, IDX_REVOKED, IDX_SERIAL, IDX_FILE, IDX_SUBJECT, IDX_COLS };

struct idx_entry {
	char *line;             /* owns the text the columns point into */
	char *col[IDX_COLS];
};

struct idx {
	struct idx_entry *e;
	size_t n;
	size_t cap;
	char now[32];           /* revocation time shared by this run's entries */
};

static void idx_free(struct idx *ix)
{
	for (size_t i = 0; i < ix->n; i++)
		free(ix->e[i].line);
	free(ix->e);
	*ix = (struct idx){ 0 };
}

static int idx_split(struct idx_entry *e)
{
	char *s = e->line;
	for (int c = 0; c < IDX_COLS; c++) {
		e->col[c] = s;
		char *tab = strchr(s, c < IDX_COLS - 1 ? '\t' : '\n');
		if (!tab && c < IDX_COLS - 1)
			return -1;
		if (tab) {
			*tab = '\0';
			s = tab + 1;
		}
	}
	return 0;
}

static int idx_push(struct idx *ix, const char *line)
{
	if (ix->n == ix->cap) {
		size_t cap = ix->cap ? ix->cap * 2 : 256;
		struct idx_entry *ne = realloc(ix->e, cap * sizeof(*ne));
		if (!ne)
			return cert_err("out of memory");
		ix->e = ne;
		ix->cap = cap;
	}
	struct idx_entry *e = &ix->e[ix->n];
	e->line = strdup(line);
	if (!e->line)
		return cert_err("out of memory");
	if (idx_split(e) < 0) {
		free(e->line);
		return 1;       /* not ours: skipped */
	}
	ix->n++;
	return 0;
}

/* A missing index is an empty one (a directory from before index.txt). */
static int idx_read(struct idx *ix, const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return errno == ENOENT ? 0 : cert_err("cannot open %s: %s", path, strerror(errno));
	char *line = NULL;
	size_t cap = 0;
	int r = 0, lineno = 0;
	while (r >= 0 && getline(&line, &cap, f) >= 0) {
		lineno++;
		r = idx_push(ix, line);
		if (r > 0)
			cert_warn("%s:%d: not an index line, ignored", path, lineno);
	}
	free(line);
	fclose(f);
	return r < 0 ? -1 : 0;
}

static int idx_write(const struct idx *ix, const char *path)
{
	BIO *mem = BIO_new(BIO_s_mem());
	if (!mem)
		return cert_err_ssl("out of memory");
	for (size_t i = 0; i < ix->n; i++) {
		char *const *c = ix->e[i].col;
		BIO_printf(mem, "%s\t%s\t%s\t%s\t%s\t%s\n", c[0], c[1], c[2], c[3], c[4], c[5]);
	}
	int r = file_put(path, 0644, mem, true);
	BIO_free(mem);
	return r;
}

/* Marks every valid entry for clients/NAME.pem (every certificate ever
 * issued under that name, not only the current file) and the serial of
 * the current file as revoked. Returns how many entries changed. */
static long idx_revoke(struct idx *ix, const char *rel, const char *serial)
{
	long changed = 0;
	for (size_t i = 0; i < ix->n; i++) {
		struct idx_entry *e = &ix->e[i];
		bool match = !strcmp(e->col[IDX_FILE], rel) ||
			     (serial && !strcasecmp(e->col[IDX_SERIAL], serial));
		if (!match || e->col[IDX_STATUS][0] != 'V')
			continue;
		e->col[IDX_STATUS] = "R";
		e->col[IDX_REVOKED] = ix->now;
		changed++;
	}
	return changed;
}

static int crl_add_revoked(X509_CRL *crl, const struct idx_entry *e)
{
	X509_REVOKED *rv = X509_REVOKED_new();
	BIGNUM *bn = NULL;
	ASN1_TIME *t = ASN1_TIME_new();
	int ok = rv && t && BN_hex2bn(&bn, e->col[IDX_SERIAL]) > 0 &&
		 ASN1_TIME_set_string(t, e->col[IDX_REVOKED]) &&
		 X509_REVOKED_set_revocationDate(rv, t);
	ASN1_INTEGER *ai = ok ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
	ok = ai && X509_REVOKED_set_serialNumber(rv, ai) && X509_CRL_add0_revoked(crl, rv);
	ASN1_INTEGER_free(ai);
	ASN1_TIME_free(t);
	BN_free(bn);
	if (!ok) {
		X509_REVOKED_free(rv);
		return cert_err("bad index entry for serial %s", e->col[IDX_SERIAL]);
	}
	return 0;
}

/* The CRL number goes up by one with every CRL, starting at 1. */
static long crl_next_number(const char *path)
{
	X509_CRL *old = crl_load(path, true);
	ASN1_INTEGER *n = old ? X509_CRL_get_ext_d2i(old, NID_crl_number, NULL, NULL) : NULL;
	long v = n ? ASN1_INTEGER_get(n) : 0;
	ASN1_INTEGER_free(n);
	X509_CRL_free(old);
	return v < 0 ? 1 : v + 1;
}

static int crl_set_header(X509_CRL *crl, const struct pki *p, long days, long number)
{
	ASN1_TIME *t = ASN1_TIME_new();
	ASN1_INTEGER *num = ASN1_INTEGER_new();
	X509V3_CTX ctx;
	X509V3_set_ctx(&ctx, p->ca, NULL, NULL, crl, 0);
	X509_EXTENSION *aki = X509V3_EXT_nconf_nid(NULL, &ctx, NID_authority_key_identifier,
						   "keyid:always");
	int ok = t && num && aki && X509_CRL_set_version(crl, X509_CRL_VERSION_2) &&
		 X509_CRL_set_issuer_name(crl, X509_get_subject_name(p->ca)) &&
		 X509_gmtime_adj(t, 0) && X509_CRL_set1_lastUpdate(crl, t) &&
		 X509_time_adj_ex(t, (int)days, 0, NULL) && X509_CRL_set1_nextUpdate(crl, t) &&
		 ASN1_INTEGER_set(num, number) && X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) &&
		 X509_CRL_add_ext(crl, aki, -1);
	X509_EXTENSION_free(aki);
	ASN1_INTEGER_free(num);
	ASN1_TIME_free(t);
	return ok ? 0 : cert_err_ssl("cannot build CRL");
}

/* Writes crl.pem from the index: every revoked serial, signed by the CA,
 * nextUpdate `days` from now. */
static int crl_generate(struct pki *p, const struct idx *ix, long days, size_t *count)
{
	X509_CRL *crl = X509_CRL_new();
	int r = crl ? crl_set_header(crl, p, days, crl_next_number(p->crl)) : cert_err_ssl("out of memory");
	*count = 0;
	for (size_t i = 0; i < ix->n && r == 0; i++) {
		if (ix->e[i].col[IDX_STATUS][0] != 'R')
			continue;
		r = crl_add_revoked(crl, &ix->e[i]);
		(*count)++;
	}
	if (r == 0 && (!X509_CRL_sort(crl) || !X509_CRL_sign(crl, p->cakey, EVP_sha256())))
		r = cert_err_ssl("cannot sign CRL");
	BIO *mem = r == 0 ? BIO_new(BIO_s_mem()) : NULL;
	if (mem && PEM_write_bio_X509_CRL(mem, crl))
		r = file_put(p->crl, 0644, mem, true);
	else if (r == 0)
		r = cert_err_ssl("cannot encode CRL");
	BIO_free(mem);
	X509_CRL_free(crl);
	return r;
}

static void time_now_asn1(char *buf, size_t size)
{
	time_t t = time(NULL);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, size, "%y%m%d%H%M%SZ", &tm);
}

static int crl_refresh(struct pki *p, const struct idx *ix, const struct cert_opts *o)
{
	size_t n;
	long days = days_get(o, CERT_DAYS_CRL);
	if (crl_generate(p, ix, days, &n) < 0)
		return -1;
	printf("%s: %zu revoked certificate%s, next update in %ld days; "
	       "send SIGHUP to the broker to apply it\n", p->crl, n, n == 1 ? "" : "s", days);
	return 0;
}

static int cmd_crl(struct cert_opts *o)
{
	struct pki p = { 0 };
	struct idx ix = { 0 };
	int r = pki_paths(&p, o->dir) == 0 && pki_load_ca(&p, o) == 0 &&
			idx_read(&ix, p.index) == 0 && crl_refresh(&p, &ix, o) == 0 ? 0 : 1;
	idx_free(&ix);
	pki_free(&p);
	return r;
}

/* NAME is a client name, "server", or a certificate file. */
static int revoke_target(const struct pki *p, const char *name, char *rel, size_t relsize,
			 char **serial)
{
	char path[PATH_MAX];
	*serial = NULL;
	if (!strcmp(name, "server"))
		snprintf(rel, relsize, "server.pem");
	else if (client_name_ok(name) == 0)
		snprintf(rel, relsize, "clients/%s.pem", name);
	else
		return cert_err("revoke: give a client name, 'server' or a certificate file");
	if (path_fmt(path, sizeof(path), "%s/%s", p->dir, rel) < 0)
		return -1;
	if (file_exists(path)) {
		X509 *x = cert_load(path);
		if (!x)
			return -1;
		*serial = serial_hex(x);
		X509_free(x);
	}
	return 0;
}

static int revoke_one(struct pki *p, struct idx *ix, const char *name)
{
	char rel[CERT_CN_MAX + 16];
	char *serial = NULL;
	if (revoke_target(p, name, rel, sizeof(rel), &serial) < 0)
		return -1;
	long n = idx_revoke(ix, rel, serial);
	bool known = false;
	for (size_t i = 0; i < ix->n; i++)
		known |= !strcmp(ix->e[i].col[IDX_FILE], rel) ||
			 (serial && !strcasecmp(ix->e[i].col[IDX_SERIAL], serial));
	OPENSSL_free(serial);
	if (!known)
		return cert_err("no certificate was issued for '%s' from %s", name, p->dir);
	if (n == 0)
		printf("%s: already revoked\n", name);
	else
		printf("%s: revoked (%ld certificate%s)\n", name, n, n == 1 ? "" : "s");
	return 0;
}

static int cmd_revoke(struct cert_opts *o)
{
	struct pki p = { 0 };
	struct idx ix = { 0 };
	int r = pki_paths(&p, o->dir) == 0 && pki_load_ca(&p, o) == 0 &&
			idx_read(&ix, p.index) == 0 ? 0 : -1;
	time_now_asn1(ix.now, sizeof(ix.now));
	for (int i = 0; i < o->nargs && r == 0; i++)
		r = revoke_one(&p, &ix, o->args[i]);
	if (r == 0)
		r = idx_write(&ix, p.index) == 0 && crl_refresh(&p, &ix, o) == 0 ? 0 : -1;
	idx_free(&ix);
	pki_free(&p);
	return r == 0 ? 0 : 1;
}

/* ---- time and trust ------------------------------------------------------- */

static void time_fmt(const ASN1_TIME *t, char *buf, size_t size)
{
	struct tm tm;
	if (!t || !ASN1_TIME_to_tm(t, &tm) || !strftime(buf, size, "%Y-%m-%d %H:%M UTC", &tm))
		snprintf(buf, size, "(bad time)");
}

/* Days from now until t, rounded to the nearest (negative: past). */
static int days_from_now(const ASN1_TIME *t)
{
	int d = 0, s = 0;
	if (!ASN1_TIME_diff(&d, &s, NULL, t))
		return 0;
	long total = (long)d * 86400 + s;
	return (int)((total + (total < 0 ? -43200 : 43200)) / 86400);
}

enum validity { VALID, EXPIRED, NOT_YET_VALID };

/* The validity in words: "expires in 824 days", "EXPIRED 3 days ago". */
static enum validity cert_validity(X509 *x, char *msg, size_t size)
{
	const ASN1_TIME *nb = X509_get0_notBefore(x), *na = X509_get0_notAfter(x);
	if (X509_cmp_current_time(nb) > 0) {
		snprintf(msg, size, "NOT YET VALID: starts in %d days", days_from_now(nb));
		return NOT_YET_VALID;
	}
	int d = days_from_now(na);
	if (X509_cmp_current_time(na) <= 0) {
		snprintf(msg, size, "EXPIRED %d days ago", -d);
		return EXPIRED;
	}
	snprintf(msg, size, "expires in %d day%s", d, d == 1 ? "" : "s");
	return VALID;
}

struct trust {
	const char *cafile;
	const char *capath;
	bool system;            /* the platform's default trust store */
};

static const char *name_str(X509_NAME *n, char *buf, size_t size)
{
	BIO *b = BIO_new(BIO_s_mem());
	buf[0] = '\0';
	if (b && X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
		int len = BIO_read(b, buf, (int)size - 1);
		buf[len > 0 ? len : 0] = '\0';
	}
	BIO_free(b);
	return buf[0] ? buf : "(empty name)";
}

static X509_STORE *trust_store(const struct trust *t, char *why, size_t n)
{
	X509_STORE *st = X509_STORE_new();
	if (!st)
		return NULL;
	if ((t->cafile && X509_STORE_load_file(st, t->cafile) != 1) ||
	    (t->capath && X509_STORE_load_path(st, t->capath) != 1) ||
	    (t->system && X509_STORE_set_default_paths(st) != 1)) {
		snprintf(why, n, "cannot load the CA certificates");
		X509_STORE_free(st);
		ERR_clear_error();
		return NULL;
	}
	return st;
}

/* 0: leaf chains to a trusted CA (root subject in why); 1: it does not
 * (the reason in why); -1: the trust store could not be loaded. Validity
 * dates are ignored here: they are reported on their own. */
static int chain_verify(X509 *leaf, STACK_OF(X509) *untrusted, const struct trust *t,
			char *why, size_t n)
{
	X509_STORE *st = trust_store(t, why, n);
	X509_STORE_CTX *ctx = st ? X509_STORE_CTX_new() : NULL;
	int r = -1;
	if (ctx && X509_STORE_CTX_init(ctx, st, leaf, untrusted) == 1) {
		X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(ctx), X509_V_FLAG_NO_CHECK_TIME);
		if (X509_verify_cert(ctx) == 1) {
			STACK_OF(X509) *ch = X509_STORE_CTX_get0_chain(ctx);
			X509 *root = sk_X509_value(ch, sk_X509_num(ch) - 1);
			name_str(X509_get_subject_name(root), why, n);
			r = 0;
		} else {
			snprintf(why, n, "%s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
			r = 1;
		}
	}
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(st);
	ERR_clear_error();
	return r;
}

/* ---- show ------------------------------------------------------------------ */

static void san_str(X509 *x, char *buf, size_t size)
{
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	size_t off = 0;
	buf[0] = '\0';
	for (int i = 0; i < sk_GENERAL_NAME_num(gens) && off < size; i++) {
		GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		char v[INET6_ADDRSTRLEN + 8] = "?";
		const char *kind = "other";
		if (g->type == GEN_DNS || g->type == GEN_EMAIL || g->type == GEN_URI) {
			kind = g->type == GEN_DNS ? "DNS" : g->type == GEN_EMAIL ? "email" : "URI";
			snprintf(v, sizeof(v), "%.*s", (int)(sizeof(v) - 1), ASN1_STRING_get0_data(g->d.ia5));
		} else if (g->type == GEN_IPADD) {
			int len = ASN1_STRING_length(g->d.ip);
			kind = "IP";
			inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(g->d.ip), v, sizeof(v));
		}
		off += (size_t)snprintf(buf + off, size - off, "%s%s:%s", i ? ", " : "", kind, v);
	}
	GENERAL_NAMES_free(gens);
	if (!buf[0])
		snprintf(buf, size, "none (clients that check the host name will refuse it)");
}

static void use_str(X509 *x, char *buf, size_t size)
{
	uint32_t xku = X509_get_extended_key_usage(x);
	bool ca = X509_check_ca(x) != 0;
	snprintf(buf, size, "%s%s%s%s", ca ? "certificate authority (signs certificates)" : "",
		 !ca && (xku & XKU_SSL_SERVER) ? "TLS server" : "",
		 !ca && (xku & XKU_SSL_SERVER) && (xku & XKU_SSL_CLIENT) ? ", " : "",
		 !ca && (xku & XKU_SSL_CLIENT) ? "TLS client (identity = CN)" : "");
	if (!buf[0])
		snprintf(buf, size, "no TLS use (no serverAuth/clientAuth)");
}

static void show_cert(X509 *x, int i, int n)
{
	char buf[2048], b2[64], b3[64], st[64];
	char *hex = serial_hex(x);
	printf("certificate %d of %d\n", i + 1, n);
	printf("  subject:  %s\n", name_str(X509_get_subject_name(x), buf, sizeof(buf)));
	san_str(x, buf, sizeof(buf));
	printf("  names:    %s\n", buf);
	printf("  issuer:   %s%s\n", name_str(X509_get_issuer_name(x), buf, sizeof(buf)),
	       X509_check_issued(x, x) == X509_V_OK ? " (self-signed)" : "");
	time_fmt(X509_get0_notBefore(x), b2, sizeof(b2));
	time_fmt(X509_get0_notAfter(x), b3, sizeof(b3));
	cert_validity(x, st, sizeof(st));
	printf("  valid:    %s to %s: %s\n", b2, b3, st);
	EVP_PKEY *k = X509_get0_pubkey(x);
	if (k)
		key_describe(k, buf, sizeof(buf));
	printf("  key:      %s\n", k ? buf : "unreadable");
	use_str(x, buf, sizeof(buf));
	printf("  use:      %s\n", buf);
	printf("  serial:   %s\n", hex ? hex : "?");
	OPENSSL_free(hex);
}

static void show_trust(const struct cert_opts *o, struct trust *t, char *buf, size_t size,
		       const char **label)
{
	*t = (struct trust){ 0 };
	if (o->ca) {
		t->cafile = o->ca;
	} else if (snprintf(buf, size, "%s/ca.pem", o->dir) < (int)size && file_exists(buf)) {
		t->cafile = buf;
	} else {
		t->system = true;
		*label = "the system trust store";
		return;
	}
	*label = t->cafile;
}

static void show_chain(STACK_OF(X509) *sk, const struct cert_opts *o)
{
	char cabuf[PATH_MAX], why[512];
	const char *label;
	struct trust t;
	int n = sk_X509_num(sk);
	for (int i = 1; i < n; i++)
		if (X509_check_issued(sk_X509_value(sk, i), sk_X509_value(sk, i - 1)) != X509_V_OK)
			printf("note: certificate %d did not issue certificate %d "
			       "(a chain file lists the leaf first, then its issuers)\n", i + 1, i);
	show_trust(o, &t, cabuf, sizeof(cabuf), &label);
	STACK_OF(X509) *rest = sk_X509_dup(sk);
	X509 *leaf = sk_X509_shift(rest);
	int r = chain_verify(leaf, rest, &t, why, sizeof(why));
	sk_X509_free(rest);
	if (r == 0)
		printf("chain: certificate 1 chains to %s (root: %s)\n", label, why);
	else
		printf("chain: certificate 1 does NOT chain to %s: %s\n", label, why);
}

static void show_key_block(const char *name, const char *header, const unsigned char *data, long len)
{
	char kd[96];
	if (strstr(name, "ENCRYPTED") || strstr(header, "ENCRYPTED")) {
		printf("private key (encrypted with a passphrase)\n");
		return;
	}
	const unsigned char *p = data;
	EVP_PKEY *k = d2i_AutoPrivateKey(NULL, &p, len);
	if (k)
		key_describe(k, kd, sizeof(kd));
	printf("private key: %s\n", k ? kd : "unreadable");
	EVP_PKEY_free(k);
	ERR_clear_error();
}

static void show_crl(X509_CRL *crl)
{
	char buf[512], t1[64], t2[64];
	const ASN1_TIME *nu = X509_CRL_get0_nextUpdate(crl);
	time_fmt(X509_CRL_get0_lastUpdate(crl), t1, sizeof(t1));
	time_fmt(nu, t2, sizeof(t2));
	int d = nu ? days_from_now(nu) : 0;
	printf("certificate revocation list\n");
	printf("  issuer:   %s\n", name_str(X509_CRL_get_issuer(crl), buf, sizeof(buf)));
	printf("  revoked:  %d certificate(s)\n", sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)));
	printf("  updated:  %s, next update %s: %s%d days%s\n", t1, nu ? t2 : "none",
	       nu && X509_cmp_current_time(nu) <= 0 ? "EXPIRED " : "in ",
	       d < 0 ? -d : d, nu && X509_cmp_current_time(nu) <= 0 ? " ago" : "");
}

/* One PEM block that is not a certificate: a key, a CRL, or a note. */
static void show_other_block(const char *name, const char *header, const unsigned char *data, long len)
{
	if (strstr(name, "PRIVATE KEY")) {
		show_key_block(name, header, data, len);
	} else if (!strcmp(name, "X509 CRL")) {
		const unsigned char *p = data;
		X509_CRL *crl = d2i_X509_CRL(NULL, &p, len);
		if (crl)
			show_crl(crl);
		X509_CRL_free(crl);
	} else if (!strcmp(name, "CERTIFICATE REQUEST")) {
		printf("certificate request (CSR): not a certificate yet\n");
	} else {
		printf("%s (not shown)\n", name);
	}
}

/* Reads every PEM block: certificates are collected, the rest shown. */
static int show_blocks(BIO *in, STACK_OF(X509) *sk)
{
	char *name, *header;
	unsigned char *data;
	long len;
	int blocks = 0;
	while (PEM_read_bio(in, &name, &header, &data, &len) == 1) {
		blocks++;
		const unsigned char *p = data;
		X509 *x = NULL;
		if (!strcmp(name, "CERTIFICATE") || !strcmp(name, "TRUSTED CERTIFICATE"))
			x = d2i_X509(NULL, &p, len);
		if (x)
			sk_X509_push(sk, x);
		else
			show_other_block(name, header, data, len);
		OPENSSL_free(name);
		OPENSSL_free(header);
		OPENSSL_free(data);
	}
	ERR_clear_error();
	return blocks;
}

static int show_file(const char *path, const struct cert_opts *o)
{
	BIO *in = bio_open(path);
	if (!in)
		return -1;
	STACK_OF(X509) *sk = sk_X509_new_null();
	printf("%s:\n", path);
	int blocks = show_blocks(in, sk);
	if (blocks == 0 && BIO_reset(in) == 0) {
		X509 *x = d2i_X509_bio(in, NULL);
		if (x)
			sk_X509_push(sk, x);
		ERR_clear_error();
	}
	BIO_free(in);
	int n = sk_X509_num(sk);
	for (int i = 0; i < n; i++)
		show_cert(sk_X509_value(sk, i), i, n);
	if (n > 0)
		show_chain(sk, o);
	sk_X509_pop_free(sk, X509_free);
	if (blocks == 0 && n == 0)
		return cert_err("%s: no certificate, key or CRL in this file", path);
	return 0;
}

static int cmd_show(struct cert_opts *o)
{
	int r = 0;
	for (int i = 0; i < o->nargs; i++)
		if (show_file(o->args[i], o) < 0)
			r = 1;
	return r;
}

/* ---- check ------------------------------------------------------------------ */

enum { TLS_CAFILE, TLS_CAPATH, TLS_CERTFILE, TLS_KEYFILE, TLS_CRLFILE, TLS_FILES };

static const char *const tls_keys[TLS_FILES] = { "cafile", "capath", "certfile", "keyfile", "crlfile" };

struct tls_block {
	char where[160];
	char *file[TLS_FILES];
	bool require_cert;
};

struct check {
	int errors;
	int warnings;
	const char *passin;
};

__attribute__((format(printf, 3, 4)))
static void chk_err(struct check *c, const struct tls_block *b, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "kite cert: %s: %s\n", b->where, msg);
	c->errors++;
}

__attribute__((format(printf, 3, 4)))
static void chk_warn(struct check *c, const struct tls_block *b, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "kite cert: warning: %s: %s\n", b->where, msg);
	c->warnings++;
}

static bool chk_readable(struct check *c, const struct tls_block *b, int k)
{
	const char *path = b->file[k];
	struct stat st;
	if (stat(path, &st) < 0) {
		chk_err(c, b, "%s %s: %s", tls_keys[k], path, strerror(errno));
		return false;
	}
	bool dir = k == TLS_CAPATH;
	if (dir != S_ISDIR(st.st_mode) || access(path, dir ? R_OK | X_OK : R_OK) < 0) {
		chk_err(c, b, "%s %s: %s", tls_keys[k], path,
			dir != S_ISDIR(st.st_mode) ? (dir ? "not a directory" : "is a directory")
						   : strerror(errno));
		return false;
	}
	return true;
}

/* Expired or not yet valid is an error; close to expiry a warning. */
static bool chk_times(struct check *c, const struct tls_block *b, int k, X509 *x)
{
	char msg[64], subj[256];
	enum validity v = cert_validity(x, msg, sizeof(msg));
	name_str(X509_get_subject_name(x), subj, sizeof(subj));
	if (v != VALID) {
		chk_err(c, b, "%s %s: %s: %s", tls_keys[k], b->file[k], subj, msg);
		return false;
	}
	if (days_from_now(X509_get0_notAfter(x)) < CERT_WARN_DAYS)
		chk_warn(c, b, "%s %s: %s: %s (renew it)", tls_keys[k], b->file[k], subj, msg);
	return true;
}

static void chk_cafile(struct check *c, const struct tls_block *b)
{
	STACK_OF(X509) *sk = certs_load(b->file[TLS_CAFILE]);
	if (!sk) {
		c->errors++;
		return;
	}
	int bad = 0;
	for (int i = 0; i < sk_X509_num(sk); i++) {
		X509 *x = sk_X509_value(sk, i);
		bad += !chk_times(c, b, TLS_CAFILE, x);
		if (!X509_check_ca(x)) {
			chk_err(c, b, "cafile %s: certificate %d is not a CA certificate",
				b->file[TLS_CAFILE], i + 1);
			bad++;
		}
	}
	if (!bad)
		printf("ok: %s: cafile %s: %d CA certificate(s)\n", b->where,
		       b->file[TLS_CAFILE], sk_X509_num(sk));
	sk_X509_pop_free(sk, X509_free);
}

/* Chains to cafile/capath when given; otherwise clients need a public CA,
 * so the system store is tried and a failure only warned about. */
static bool chk_chain(struct check *c, const struct tls_block *b, STACK_OF(X509) *sk)
{
	struct trust t = { .cafile = b->file[TLS_CAFILE], .capath = b->file[TLS_CAPATH] };
	char why[512];
	t.system = !t.cafile && !t.capath;
	STACK_OF(X509) *rest = sk_X509_dup(sk);
	X509 *leaf = sk_X509_shift(rest);
	int r = chain_verify(leaf, rest, &t, why, sizeof(why));
	sk_X509_free(rest);
	if (r == 0)
		return true;
	if (t.system)
		chk_warn(c, b, "certfile %s does not chain to the system trust store (%s): "
			 "clients need its CA", b->file[TLS_CERTFILE], why);
	else
		chk_err(c, b, "certfile %s does not chain to %s: %s", b->file[TLS_CERTFILE],
			t.cafile ? t.cafile : t.capath, why);
	return t.system;
}

static void chk_keyfile(struct check *c, const struct tls_block *b, X509 *leaf)
{
	EVP_PKEY *k = key_load(b->file[TLS_KEYFILE], c->passin);
	if (!k) {
		c->errors++;
		return;
	}
	if (leaf && X509_check_private_key(leaf, k) != 1)
		chk_err(c, b, "keyfile %s does not match certfile %s", b->file[TLS_KEYFILE],
			b->file[TLS_CERTFILE]);
	else if (leaf)
		printf("ok: %s: keyfile %s matches the certificate\n", b->where, b->file[TLS_KEYFILE]);
	ERR_clear_error();
	EVP_PKEY_free(k);
}

static STACK_OF(X509) *chk_certfile(struct check *c, const struct tls_block *b)
{
	STACK_OF(X509) *sk = certs_load(b->file[TLS_CERTFILE]);
	char msg[64], subj[256];
	if (!sk) {
		c->errors++;
		return NULL;
	}
	bool ok = true;
	for (int i = 0; i < sk_X509_num(sk); i++)
		ok &= chk_times(c, b, TLS_CERTFILE, sk_X509_value(sk, i));
	ok &= chk_chain(c, b, sk);
	X509 *leaf = sk_X509_value(sk, 0);
	cert_validity(leaf, msg, sizeof(msg));
	if (ok)
		printf("ok: %s: certfile %s: %s, %s\n", b->where, b->file[TLS_CERTFILE],
		       name_str(X509_get_subject_name(leaf), subj, sizeof(subj)), msg);
	return sk;
}

/* The CRL must come from the CA in cafile and must not be past its
 * nextUpdate: OpenSSL then refuses every client certificate. */
static void chk_crl(struct check *c, const struct tls_block *b)
{
	X509_CRL *crl = crl_load(b->file[TLS_CRLFILE], false);
	if (!crl) {
		c->errors++;
		return;
	}
	const ASN1_TIME *nu = X509_CRL_get0_nextUpdate(crl);
	int d = nu ? days_from_now(nu) : 0;
	bool signed_ok = !b->file[TLS_CAFILE];
	STACK_OF(X509) *cas = b->file[TLS_CAFILE] ? certs_load(b->file[TLS_CAFILE]) : NULL;
	for (int i = 0; i < sk_X509_num(cas) && !signed_ok; i++) {
		X509 *ca = sk_X509_value(cas, i);
		signed_ok = !X509_NAME_cmp(X509_get_subject_name(ca), X509_CRL_get_issuer(crl)) &&
			    X509_CRL_verify(crl, X509_get0_pubkey(ca)) == 1;
	}
	sk_X509_pop_free(cas, X509_free);
	ERR_clear_error();
	if (!signed_ok)
		chk_err(c, b, "crlfile %s is not signed by the CA in %s", b->file[TLS_CRLFILE],
			b->file[TLS_CAFILE]);
	else if (nu && X509_cmp_current_time(nu) <= 0)
		chk_err(c, b, "crlfile %s expired %d days ago: the broker refuses every client "
			"certificate (run kite cert crl)", b->file[TLS_CRLFILE], -d);
	else if (nu && d < CERT_WARN_DAYS)
		chk_warn(c, b, "crlfile %s: next update in %d days (run kite cert crl)",
			 b->file[TLS_CRLFILE], d);
	else
		printf("ok: %s: crlfile %s: %d revoked, next update %s\n", b->where,
		       b->file[TLS_CRLFILE], sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)),
		       nu ? "in the future" : "not set");
	X509_CRL_free(crl);
}

static void chk_block(struct check *c, const struct tls_block *b)
{
	bool ok[TLS_FILES];
	for (int k = 0; k < TLS_FILES; k++)
		ok[k] = b->file[k] && chk_readable(c, b, k);
	if (b->file[TLS_CERTFILE] && !b->file[TLS_KEYFILE])
		chk_err(c, b, "certfile without keyfile");
	if (b->file[TLS_KEYFILE] && !b->file[TLS_CERTFILE])
		chk_err(c, b, "keyfile without certfile");
	if (b->require_cert && !b->file[TLS_CAFILE] && !b->file[TLS_CAPATH])
		chk_err(c, b, "require_certificate true needs cafile or capath");
	if (ok[TLS_CAFILE])
		chk_cafile(c, b);
	STACK_OF(X509) *sk = ok[TLS_CERTFILE] ? chk_certfile(c, b) : NULL;
	if (ok[TLS_KEYFILE])
		chk_keyfile(c, b, sk ? sk_X509_value(sk, 0) : NULL);
	if (ok[TLS_CRLFILE])
		chk_crl(c, b);
	sk_X509_pop_free(sk, X509_free);
}

static void blocks_free(struct tls_block *bl, int n)
{
	for (int i = 0; i < n; i++)
		for (int k = 0; k < TLS_FILES; k++)
			free(bl[i].file[k]);
}

/* One config line: "listener" opens a block, TLS file options set the
 * current one (the last value wins, as in Mosquitto). */
static int conf_line(char *line, const char *path, int lineno, struct tls_block *bl, int *n)
{
	char *key = trim(line);
	if (*key == '\0' || *key == '#')
		return 0;
	char *val = key + strcspn(key, " \t");
	if (*val)
		*val++ = '\0';
	val = trim(val);
	if (!strcmp(key, "listener")) {
		if (*n == CERT_BLOCKS_MAX)
			return cert_err("%s: more than %d listeners", path, CERT_BLOCKS_MAX);
		struct tls_block *b = &bl[(*n)++];
		snprintf(b->where, sizeof(b->where), "listener %s (%s:%d)", val, path, lineno);
		return 0;
	}
	struct tls_block *b = &bl[*n - 1];
	if (!strcmp(key, "require_certificate"))
		b->require_cert = !strcmp(val, "true");
	for (int k = 0; k < TLS_FILES; k++) {
		if (strcmp(key, tls_keys[k]))
			continue;
		free(b->file[k]);
		b->file[k] = strdup(val);
		if (!b->file[k])
			return cert_err("out of memory");
	}
	if (!strcmp(key, "include_dir"))
		cert_warn("%s:%d: include_dir %s is not followed", path, lineno, val);
	return 0;
}

/* Block 0 is the default listener (options before any `listener`). */
static int conf_scan(const char *path, struct tls_block *bl, int *n)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return cert_err("cannot open %s: %s", path, strerror(errno));
	snprintf(bl[0].where, sizeof(bl[0].where), "default listener (%s)", path);
	*n = 1;
	char *line = NULL;
	size_t cap = 0;
	int r = 0, lineno = 0;
	while (r == 0 && getline(&line, &cap, f) >= 0)
		r = conf_line(line, path, ++lineno, bl, n);
	free(line);
	fclose(f);
	return r;
}

/* Without --config: the files of --dir, as `kite cert config` names them. */
static int dir_block(const struct cert_opts *o, struct tls_block *b)
{
	static const char *const rel[TLS_FILES] = { "ca.pem", NULL, "server.pem", "server.key", "crl.pem" };
	char path[PATH_MAX];
	snprintf(b->where, sizeof(b->where), "%s", o->dir);
	for (int k = 0; k < TLS_FILES; k++) {
		if (!rel[k] || path_fmt(path, sizeof(path), "%s/%s", o->dir, rel[k]) < 0)
			continue;
		if (k == TLS_CRLFILE && !file_exists(path))
			continue;
		b->file[k] = strdup(path);
	}
	return 0;
}

static int cmd_check(struct cert_opts *o)
{
	static struct tls_block bl[CERT_BLOCKS_MAX];
	struct check c = { .passin = o->passin };
	int n = 1, checked = 0;
	memset(bl, 0, sizeof(bl));
	int r = o->config ? conf_scan(o->config, bl, &n) : dir_block(o, &bl[0]);
	for (int i = 0; i < n && r == 0; i++) {
		bool any = false;
		for (int k = 0; k < TLS_FILES; k++)
			any |= bl[i].file[k] != NULL;
		if (!any)
			continue;
		chk_block(&c, &bl[i]);
		checked++;
	}
	blocks_free(bl, n);
	if (r < 0)
		return 1;
	if (checked == 0)
		printf("check: no certificate files named in %s\n", o->config ? o->config : o->dir);
	else
		printf("check: %d listener(s), %d error(s), %d warning(s)\n", checked, c.errors, c.warnings);
	return c.errors ? 1 : 0;
}

/* ---- config ------------------------------------------------------------------- */

static int cmd_config(struct cert_opts *o)
{
	char abs[PATH_MAX], f[PATH_MAX];
	static const char *const need[] = { "ca.pem", "server.pem", "server.key" };
	if (!realpath(o->dir, abs))
		return cert_err("%s: %s (create it with: kite cert ca --dir %s)", o->dir,
				strerror(errno), o->dir), 1;
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		if (path_fmt(f, sizeof(f), "%s/%s", abs, need[i]) < 0)
			return 1;
		if (!file_exists(f))
			return cert_err("%s is missing (kite cert %s)", f,
					i == 0 ? "ca" : "server HOST..."), 1;
	}
	printf("# mutual TLS: every client needs a certificate from %s/ca.pem;\n"
	       "# its CN becomes the MQTT username (for ACLs)\n", abs);
	printf("listener %ld\n", o->port > 0 ? o->port : CERT_DEFAULT_PORT);
	printf("cafile %s/ca.pem\ncertfile %s/server.pem\nkeyfile %s/server.key\n", abs, abs, abs);
	printf("require_certificate true\nuse_identity_as_username true\n");
	if (path_fmt(f, sizeof(f), "%s/crl.pem", abs) == 0 && file_exists(f))
		printf("crlfile %s\n", f);
	return 0;
}

/* ---- command line --------------------------------------------------------------- */

enum opt_kind { OPT_STR, OPT_LONG, OPT_FLAG };

struct opt_def {
	const char *name;
	enum opt_kind kind;
	size_t off;
};

#define OPT(n, k, f) { n, k, offsetof(struct cert_opts, f) }
static const struct opt_def opt_defs[] = {
	OPT("dir", OPT_STR, dir),         OPT("cn", OPT_STR, cn),
	OPT("key", OPT_STR, key),         OPT("passin", OPT_STR, passin),
	OPT("passout", OPT_STR, passout), OPT("ca", OPT_STR, ca),
	OPT("config", OPT_STR, config),   OPT("from", OPT_STR, from),
	OPT("prefix", OPT_STR, prefix),   OPT("not-before", OPT_STR, not_before),
	OPT("days", OPT_LONG, days),      OPT("count", OPT_LONG, count),
	OPT("port", OPT_LONG, port),      OPT("force", OPT_FLAG, force),
	OPT("help", OPT_FLAG, help),
};
#undef OPT

static int opt_set(struct cert_opts *o, const struct opt_def *d, const char *val)
{
	char *field = (char *)o + d->off;
	if (d->kind == OPT_STR) {
		*(const char **)(void *)field = val;
		return 0;
	}
	char *end;
	errno = 0;
	long v = strtol(val, &end, 10);
	if (*end || end == val || errno || v < 0 || v > (d->off == offsetof(struct cert_opts, port)
							 ? 65535 : CERT_BATCH_MAX))
		return cert_err("--%s: '%s' is not a valid number", d->name, val);
	if (d->off == offsetof(struct cert_opts, days) && v > CERT_DAYS_MAX)
		return cert_err("--days: at most %d", CERT_DAYS_MAX);
	*(long *)(void *)field = v;
	return 0;
}

/* "--name value", "--name=value" or "--flag". */
static int opt_parse(struct cert_opts *o, int argc, char **argv, int *i)
{
	char *a = argv[*i] + 2;
	char *eq = strchr(a, '=');
	size_t len = eq ? (size_t)(eq - a) : strlen(a);
	for (size_t k = 0; k < sizeof(opt_defs) / sizeof(opt_defs[0]); k++) {
		const struct opt_def *d = &opt_defs[k];
		if (strlen(d->name) != len || strncmp(d->name, a, len))
			continue;
		if (d->kind == OPT_FLAG) {
			*(bool *)(void *)((char *)o + d->off) = true;
			return eq ? cert_err("--%s takes no value", d->name) : 0;
		}
		if (eq)
			return opt_set(o, d, eq + 1);
		if (++*i == argc)
			return cert_err("--%s needs a value", d->name);
		return opt_set(o, d, argv[*i]);
	}
	return cert_err("unknown option %s (see kite cert --help)", argv[*i]);
}

static int args_parse(struct cert_opts *o, int argc, char **argv)
{
	bool dashdash = false;
	for (int i = 2; i < argc; i++) {
		if (!dashdash && !strcmp(argv[i], "--")) {
			dashdash = true;
		} else if (!dashdash && !strcmp(argv[i], "-h")) {
			o->help = true;
		} else if (!dashdash && !strncmp(argv[i], "--", 2)) {
			if (opt_parse(o, argc, argv, &i) < 0)
				return -1;
		} else if (o->nargs == CERT_ARGS_MAX) {
			return cert_err("more than %d arguments", CERT_ARGS_MAX);
		} else {
			o->args[o->nargs++] = argv[i];
		}
	}
	return 0;
}

struct subcmd {
	const char *name;
	int (*run)(struct cert_opts *o);
	int args_min;
	int args_max;
	const char *usage;
};

static const struct subcmd subcmds[] = {
	{ "ca", cmd_ca, 0, 0,
	  "ca [--cn NAME] [--key ec|rsa:2048|rsa:3072|rsa:4096] [--days N (3650)]\n"
	  "   [--passout env:VAR]\n"
	  "  Creates the private CA: DIR/ca.pem and DIR/ca.key (mode 0600; encrypted\n"
	  "  with AES-256 when --passout is given). CA:TRUE, keyCertSign, cRLSign.\n" },
	{ "server", cmd_server, 1, CERT_ARGS_MAX,
	  "server HOST [HOST|IP...] [--key ...] [--days N (825)]\n"
	  "  Issues DIR/server.pem and DIR/server.key for every HOST (subjectAltName\n"
	  "  DNS or IP entries; CN = the first HOST; serverAuth). List every name\n"
	  "  clients dial: clients check the name they connect to.\n" },
	{ "client", cmd_client, 1, 1,
	  "client NAME [--key ...] [--days N (398)]\n"
	  "  Issues DIR/clients/NAME.pem and .key with CN=NAME (clientAuth): with\n"
	  "  use_identity_as_username the broker sees NAME as the username.\n" },
	{ "clients", cmd_clients, 0, 0,
	  "clients --from FILE | --count N [--prefix device-] [--days N (398)]\n"
	  "  Issues many client certificates at once (one name per line in FILE;\n"
	  "  or PREFIX1..PREFIXN). Checks every name and file before the first.\n" },
	{ "revoke", cmd_revoke, 1, CERT_ARGS_MAX,
	  "revoke NAME... [--days N (365, the CRL's next update)]\n"
	  "  Revokes every certificate issued for client NAME (or 'server') and\n"
	  "  rewrites DIR/crl.pem. The broker applies it on SIGHUP.\n" },
	{ "crl", cmd_crl, 0, 0,
	  "crl [--days N (365)]\n"
	  "  Rewrites DIR/crl.pem from DIR/index.txt, signed by the CA. Run it\n"
	  "  before the next update date: past it the broker refuses everyone.\n" },
	{ "show", cmd_show, 1, CERT_ARGS_MAX,
	  "show FILE... [--ca CAFILE]\n"
	  "  Explains every certificate (chain files too), key and CRL in FILE:\n"
	  "  names, issuer, validity, key, use, and whether it chains to the CA\n"
	  "  (--ca, else DIR/ca.pem, else the system trust store).\n" },
	{ "check", cmd_check, 0, 0,
	  "check [--config kite.conf] [--passin env:VAR]\n"
	  "  Checks every cafile/capath/certfile/keyfile/crlfile of every listener:\n"
	  "  readable, chains to cafile, dates, key matches, CRL signed and current.\n"
	  "  Without --config, checks the files in DIR. Exits 1 on any error.\n" },
	{ "config", cmd_config, 0, 0,
	  "config [--port N (8883)]\n"
	  "  Prints the listener block for DIR (absolute paths), ready to paste.\n" },
};

#define SUBCMD_COUNT (sizeof(subcmds) / sizeof(subcmds[0]))

static void usage_all(FILE *f)
{
	fprintf(f, "Usage: kite cert COMMAND [ARGS] [--dir DIR] [options]\n"
		   "Certificates for mutual TLS. Files live in DIR (default ./pki): ca.pem\n"
		   "ca.key server.pem server.key clients/NAME.pem clients/NAME.key crl.pem\n"
		   "index.txt. Nothing is overwritten without --force.\n\nCommands:\n");
	for (size_t i = 0; i < SUBCMD_COUNT; i++)
		fprintf(f, "  %.*s\n", (int)strcspn(subcmds[i].usage, "\n"), subcmds[i].usage);
	fprintf(f, "\nCommon options: --dir DIR, --force, --passin env:VAR|pass:TEXT|file:PATH\n"
		   "(for an encrypted CA key; otherwise a prompt on a terminal),\n"
		   "--not-before DAYS|YYYY-MM-DD (e.g. -10: backdated ten days).\n"
		   "Run 'kite cert COMMAND --help' for details.\n");
}

static const struct subcmd *subcmd_find(const char *name)
{
	for (size_t i = 0; i < SUBCMD_COUNT; i++)
		if (!strcmp(subcmds[i].name, name))
			return &subcmds[i];
	return NULL;
}

int cert_main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		usage_all(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	const struct subcmd *sc = subcmd_find(argv[1]);
	if (!sc)
		return cert_err("unknown command '%s' (see kite cert --help)", argv[1]), 2;
	struct cert_opts o = { .dir = "pki", .days = -1, .count = -1, .port = -1 };
	if (args_parse(&o, argc, argv) < 0)
		return 2;
	if (o.help) {
		printf("Usage: kite cert %s", sc->usage);
		return 0;
	}
	if (o.nargs < sc->args_min || o.nargs > sc->args_max)
		return cert_err("usage: kite cert %.*s", (int)strcspn(sc->usage, "\n"), sc->usage), 2;
	int r = sc->run(&o);
	fflush(stdout);
	return r;
}
