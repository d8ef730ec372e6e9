/* tls/: in-memory handshakes between an OpenSSL client (memory BIOs) and
 * tls_conn, with a PKI generated through the OpenSSL API into a mkdtemp
 * directory on first use (removed at exit).
 *
 * The kTLS proof needs no kTLS kernel: the test carries a small userspace
 * TLS record layer (AES-GCM, ChaCha20-Poly1305; TLS 1.2 and 1.3) keyed
 * with the exported kernel structs. It must open the records the OpenSSL
 * client sends after the handshake, and the client must accept records it
 * seals with the server's TX key, which checks keys, IVs and sequence
 * numbers exactly as the kernel would use them. */
#include <ftw.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "runner.h"
#include "tls/tls.h"
#include "tests/tools/tls13_craft.h"

/* ---- PKI fixture ------------------------------------------------------ */

static char pki_dir[64];
static bool pki_ready;

struct cert_spec {
	const char *cn;
	const char *o;
	long serial;
	long not_before_days, not_after_days;
	bool ca;
	const char *san;
	const char *eku;
};

/* The path of a fixture file; stable for the whole run (interned). */
static const char *pki(const char *name)
{
	static struct {
		char name[64];
		char path[192];
	} tab[64];
	static unsigned n;
	unsigned i;

	for (i = 0; i < n; i++)
		if (!strcmp(tab[i].name, name))
			return tab[i].path;
	if (n == sizeof(tab) / sizeof(tab[0]))
		abort(); /* test bug: grow the table */
	snprintf(tab[n].name, sizeof(tab[n].name), "%s", name);
	snprintf(tab[n].path, sizeof(tab[n].path), "%s/%s", pki_dir, name);
	return tab[n++].path;
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
	X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
	int ok = e && X509_add_ext(x, e, -1);

	X509_EXTENSION_free(e);
	return ok ? 0 : -1;
}

static EVP_PKEY *key_new(bool rsa)
{
	return rsa ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)
		   : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

static X509 *cert_new(const struct cert_spec *s, EVP_PKEY *key, X509 *issuer,
		      EVP_PKEY *issuer_key)
{
	X509 *x = X509_new();
	X509_NAME *n = X509_get_subject_name(x);
	X509V3_CTX v3;

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), s->serial);
	X509_gmtime_adj(X509_getm_notBefore(x), s->not_before_days * 86400L);
	X509_gmtime_adj(X509_getm_notAfter(x), s->not_after_days * 86400L);
	X509_set_pubkey(x, key);
	if (s->o)
		X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC,
					   (const unsigned char *)s->o, -1, -1, 0);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
				   (const unsigned char *)s->cn, -1, -1, 0);
	X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
	X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
	add_ext(x, &v3, NID_basic_constraints, s->ca ? "critical,CA:TRUE" : "CA:FALSE");
	add_ext(x, &v3, NID_subject_key_identifier, "hash");
	if (s->ca)
		add_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
	else
		add_ext(x, &v3, NID_key_usage, "critical,digitalSignature,keyEncipherment");
	if (s->eku)
		add_ext(x, &v3, NID_ext_key_usage, s->eku);
	if (s->san)
		add_ext(x, &v3, NID_subject_alt_name, s->san);
	X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256());
	return x;
}

static void write_pem(const char *name, X509 *x, X509 *x2, EVP_PKEY *k)
{
	BIO *b = BIO_new_file(pki(name), "w");

	if (x)
		PEM_write_bio_X509(b, x);
	if (x2)
		PEM_write_bio_X509(b, x2);
	if (k)
		PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
	BIO_free(b);
}

/* Writes name.crt and name.key: a leaf signed by issuer. */
static void leaf(const char *name, const struct cert_spec *s, bool rsa, X509 *ca,
		 EVP_PKEY *ca_key)
{
	char f[128];
	EVP_PKEY *k = key_new(rsa);
	X509 *x = cert_new(s, k, ca, ca_key);

	snprintf(f, sizeof(f), "%s.crt", name);
	write_pem(f, x, NULL, NULL);
	snprintf(f, sizeof(f), "%s.key", name);
	write_pem(f, NULL, NULL, k);
	X509_free(x);
	EVP_PKEY_free(k);
}

static void write_crl(const char *name, X509 *ca, EVP_PKEY *ca_key, long revoked)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *t = X509_gmtime_adj(NULL, -3600);
	ASN1_TIME *next = X509_gmtime_adj(NULL, 30 * 86400L);
	X509_REVOKED *r = X509_REVOKED_new();
	ASN1_INTEGER *sn = ASN1_INTEGER_new();
	BIO *b;

	X509_CRL_set_version(crl, 1);
	X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca));
	X509_CRL_set1_lastUpdate(crl, t);
	X509_CRL_set1_nextUpdate(crl, next);
	ASN1_INTEGER_set(sn, revoked);
	X509_REVOKED_set_serialNumber(r, sn);
	X509_REVOKED_set_revocationDate(r, t);
	X509_CRL_add0_revoked(crl, r);
	X509_CRL_sort(crl);
	X509_CRL_sign(crl, ca_key, EVP_sha256());
	b = BIO_new_file(pki(name), "w");
	PEM_write_bio_X509_CRL(b, crl);
	BIO_free(b);
	ASN1_INTEGER_free(sn);
	ASN1_TIME_free(t);
	ASN1_TIME_free(next);
	X509_CRL_free(crl);
}

static void write_dhparam(const char *name)
{
	EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "DH", NULL);
	EVP_PKEY *p = NULL;
	OSSL_PARAM params[2] = {
		OSSL_PARAM_construct_utf8_string("group", (char *)"ffdhe2048", 0),
		OSSL_PARAM_construct_end()};
	BIO *b;

	if (pc && EVP_PKEY_paramgen_init(pc) == 1 &&
	    EVP_PKEY_CTX_set_params(pc, params) == 1)
		EVP_PKEY_paramgen(pc, &p);
	b = BIO_new_file(pki(name), "w");
	if (p)
		PEM_write_bio_Parameters(b, p);
	BIO_free(b);
	EVP_PKEY_free(p);
	EVP_PKEY_CTX_free(pc);
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	return remove(path);
}

static void pki_cleanup(void)
{
	if (pki_dir[0])
		nftw(pki_dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
}

static const char *SAN = "DNS:localhost,IP:127.0.0.1";

/* Generates every certificate the tests use; once per process. */
static bool pki_init(void)
{
	EVP_PKEY *ca_k, *ca2_k, *root_k, *int_k, *le_k;
	X509 *ca, *ca2, *root, *inter, *le;
	char hashed[32];

	if (pki_ready)
		return true;
	strcpy(pki_dir, "/tmp/kite-tls-test.XXXXXX");
	if (!mkdtemp(pki_dir))
		return false;
	atexit(pki_cleanup);
	ca_k = key_new(false);
	ca = cert_new(&(struct cert_spec){"Kite Test CA", "Kite", 1, -1, 3650, true, NULL, NULL},
		      ca_k, NULL, NULL);
	write_pem("ca.crt", ca, NULL, NULL);
	ca2_k = key_new(false);
	ca2 = cert_new(&(struct cert_spec){"Foreign CA", "Elsewhere", 1, -1, 3650, true, NULL, NULL},
		       ca2_k, NULL, NULL);
	write_pem("ca2.crt", ca2, NULL, NULL);

	leaf("server-ec", &(struct cert_spec){"localhost", NULL, 100, -1, 365, false, SAN,
					      "serverAuth"}, false, ca, ca_k);
	leaf("server-rsa", &(struct cert_spec){"localhost", NULL, 101, -1, 365, false, SAN,
					       "serverAuth"}, true, ca, ca_k);
	leaf("server-ec2", &(struct cert_spec){"renewed.localhost", NULL, 102, -1, 365, false,
					       SAN, "serverAuth"}, false, ca, ca_k);
	leaf("client", &(struct cert_spec){"device-7", "Kite Test", 1001, -1, 365, false, NULL,
					   "clientAuth"}, false, ca, ca_k);
	leaf("client-rsa", &(struct cert_spec){"device-8", "Kite Test", 1002, -1, 365, false,
					       NULL, "clientAuth"}, true, ca, ca_k);
	leaf("client-expired", &(struct cert_spec){"device-expired", NULL, 1003, -30, -1,
						   false, NULL, "clientAuth"}, false, ca, ca_k);
	leaf("client-future", &(struct cert_spec){"device-future", NULL, 1004, 2, 30, false,
						  NULL, "clientAuth"}, false, ca, ca_k);
	leaf("client-revoked", &(struct cert_spec){"device-revoked", NULL, 1005, -1, 365,
						   false, NULL, "clientAuth"}, false, ca, ca_k);
	leaf("client-foreign", &(struct cert_spec){"device-foreign", NULL, 1006, -1, 365,
						   false, NULL, "clientAuth"}, false, ca2, ca2_k);
	write_crl("ca.crl", ca, ca_k, 1005);
	write_dhparam("dh.pem");

	/* capath: the CA under its subject-hash name. */
	mkdir(pki("capath"), 0700);
	snprintf(hashed, sizeof(hashed), "capath/%08lx.0", X509_subject_name_hash(ca));
	write_pem(hashed, ca, NULL, NULL);

	/* Let's Encrypt layout: fullchain.pem (leaf + intermediate) and
	 * privkey.pem; clients trust the root only. */
	root_k = key_new(false);
	root = cert_new(&(struct cert_spec){"ISRG Root Test", "ISRG", 1, -1, 3650, true, NULL, NULL},
			root_k, NULL, NULL);
	int_k = key_new(false);
	inter = cert_new(&(struct cert_spec){"R3 Test", "Let's Encrypt", 2, -1, 3650, true, NULL, NULL},
			 int_k, root, root_k);
	le_k = key_new(false);
	le = cert_new(&(struct cert_spec){"mqtt.example.com", NULL, 3, -1, 90, false,
					  "DNS:mqtt.example.com", "serverAuth"},
		      le_k, inter, int_k);
	write_pem("le-root.crt", root, NULL, NULL);
	write_pem("fullchain.pem", le, inter, NULL);
	write_pem("privkey.pem", NULL, NULL, le_k);

	X509_free(ca);
	X509_free(ca2);
	X509_free(root);
	X509_free(inter);
	X509_free(le);
	EVP_PKEY_free(ca_k);
	EVP_PKEY_free(ca2_k);
	EVP_PKEY_free(root_k);
	EVP_PKEY_free(int_k);
	EVP_PKEY_free(le_k);
	pki_ready = true;
	return true;
}

/* ---- client and pump ---------------------------------------------------- */

struct client_opts {
	int min_version, max_version; /* 0 = OpenSSL default */
	const char *ciphers;	      /* TLS 1.2 list */
	const char *suites;	      /* TLS 1.3 suites */
	const char *cert;	      /* "client" -> client.crt/.key */
	const char *verify_ca;	      /* server's CA; NULL = don't verify */
	const char *host;	      /* expected server name */
};

struct pair {
	SSL *cl;
	BIO *c_in, *c_out; /* client's read side, write side */
	struct tls_conn *sv;
	struct tls_buf plain;
	int last_rc;
	int hs_done_count;
};

static bool pair_init(struct pair *p, struct tls_server *srv, const struct client_opts *o)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char f[128];

	memset(p, 0, sizeof(*p));
	if (o->min_version)
		SSL_CTX_set_min_proto_version(ctx, o->min_version);
	if (o->max_version)
		SSL_CTX_set_max_proto_version(ctx, o->max_version);
	if (o->ciphers)
		SSL_CTX_set_cipher_list(ctx, o->ciphers);
	if (o->suites)
		SSL_CTX_set_ciphersuites(ctx, o->suites);
	if (o->cert) {
		snprintf(f, sizeof(f), "%s.crt", o->cert);
		SSL_CTX_use_certificate_file(ctx, pki(f), SSL_FILETYPE_PEM);
		snprintf(f, sizeof(f), "%s.key", o->cert);
		SSL_CTX_use_PrivateKey_file(ctx, pki(f), SSL_FILETYPE_PEM);
	}
	if (o->verify_ca) {
		SSL_CTX_load_verify_file(ctx, pki(o->verify_ca));
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	}
	p->cl = SSL_new(ctx);
	SSL_CTX_free(ctx);
	if (o->verify_ca)
		SSL_set1_host(p->cl, o->host ? o->host : "localhost");
	p->c_in = BIO_new(BIO_s_mem());
	p->c_out = BIO_new(BIO_s_mem());
	SSL_set_bio(p->cl, p->c_in, p->c_out);
	SSL_set_connect_state(p->cl);
	p->sv = tls_conn_new(srv);
	return p->cl && p->sv;
}

static void pair_free(struct pair *p)
{
	SSL_free(p->cl);
	tls_conn_free(p->sv);
	tls_buf_free(&p->plain);
}

/* Client bytes -> server (in chunks of at most `chunk`, 0 = all). */
static void to_server(struct pair *p, size_t chunk)
{
	uint8_t buf[1 << 16];
	int n;

	while ((n = BIO_read(p->c_out, buf, sizeof(buf))) > 0) {
		size_t off = 0;

		while (off < (size_t)n) {
			size_t k = chunk && chunk < (size_t)n - off ? chunk : (size_t)n - off;

			p->last_rc = tls_conn_feed(p->sv, buf + off, k, &p->plain);
			if (p->last_rc == TLS_HANDSHAKE_DONE)
				p->hs_done_count++;
			off += k;
			if (p->last_rc == TLS_ERROR || p->last_rc == TLS_CLOSED)
				return;
		}
	}
}

/* Server output -> client. */
static bool to_client(struct pair *p)
{
	const uint8_t *o;
	size_t n = tls_conn_pending_out(p->sv, &o);

	if (!n)
		return false;
	BIO_write(p->c_in, o, (int)n);
	tls_conn_consume_out(p->sv, n);
	return true;
}

/* Runs the handshake to its end (or failure); true if both sides are done. */
static bool pump(struct pair *p, size_t chunk)
{
	for (int i = 0; i < 20; i++) {
		if (!SSL_is_init_finished(p->cl))
			SSL_do_handshake(p->cl);
		bool moved = BIO_pending(p->c_out) > 0;

		to_server(p, chunk);
		if (p->last_rc == TLS_ERROR) {
			to_client(p); /* the alert */
			SSL_do_handshake(p->cl);
			return false;
		}
		moved |= to_client(p);
		if (!moved && SSL_is_init_finished(p->cl))
			break;
	}
	ERR_clear_error();
	return SSL_is_init_finished(p->cl) && tls_conn_handshake_done(p->sv);
}

static struct tls_server *server(const struct tls_listener_opts *o)
{
	char err[256] = "";
	struct tls_server *s = tls_server_new(o, err, sizeof(err));

	if (!s)
		fprintf(stderr, "  tls_server_new: %s\n", err);
	return s;
}

static struct tls_listener_opts opts_ec(bool mtls)
{
	return (struct tls_listener_opts){
		.certfile = pki("server-ec.crt"),
		.keyfile = pki("server-ec.key"),
		.cafile = mtls ? pki("ca.crt") : NULL,
		.require_certificate = mtls,
	};
}

/* Client -> server application data through tls_conn. */
static bool client_send(struct pair *p, const char *s)
{
	size_t n;

	if (SSL_write_ex(p->cl, s, strlen(s), &n) != 1)
		return false;
	to_server(p, 0);
	return p->last_rc == TLS_OK;
}

/* Server -> client application data; returns bytes the client read. */
static int client_recv(struct pair *p, char *buf, int cap)
{
	to_client(p);
	int n = SSL_read(p->cl, buf, cap - 1);

	buf[n > 0 ? n : 0] = 0;
	return n;
}

/* ---- handshakes ---------------------------------------------------------- */

TEST(tls_handshake_rsa_ecdsa_tls12_tls13_with_client_cert)
{
	static const struct {
		const char *server;
		int version;
		const char *client;
	} cases[] = {
		{"server-ec", TLS1_3_VERSION, "client"},
		{"server-ec", TLS1_2_VERSION, "client"},
		{"server-rsa", TLS1_3_VERSION, "client-rsa"},
		{"server-rsa", TLS1_2_VERSION, "client"},
	};
	char cf[128], kf[128];

	CHECK(pki_init());
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tls_listener_opts o = opts_ec(true);
		struct pair p;
		char buf[64];

		snprintf(cf, sizeof(cf), "%s", pki(cases[i].server));
		strcat(cf, ".crt");
		snprintf(kf, sizeof(kf), "%s", pki(cases[i].server));
		strcat(kf, ".key");
		o.certfile = cf;
		o.keyfile = kf;
		o.use_identity_as_username = true;
		struct tls_server *s = server(&o);

		CHECK(s);
		if (!s)
			continue;
		CHECK(pair_init(&p, s, &(struct client_opts){
					       .min_version = cases[i].version,
					       .max_version = cases[i].version,
					       .cert = cases[i].client,
					       .verify_ca = "ca.crt"}));
		CHECK(pump(&p, 0));
		CHECK_EQ(p.hs_done_count, 1);
		CHECK_STR(tls_conn_version(p.sv),
			  cases[i].version == TLS1_3_VERSION ? "TLSv1.3" : "TLSv1.2");
		CHECK(tls_conn_cipher(p.sv) != NULL);
		CHECK_STR(tls_conn_identity(p.sv),
			  !strcmp(cases[i].client, "client") ? "device-7" : "device-8");
		CHECK(client_send(&p, "CONNECT"));
		CHECK_EQ(p.plain.len, 7);
		CHECK(!memcmp(p.plain.data, "CONNECT", 7));
		CHECK_EQ(tls_conn_write(p.sv, (const uint8_t *)"CONNACK", 7), TLS_OK);
		CHECK_EQ(client_recv(&p, buf, sizeof(buf)), 7);
		CHECK_STR(buf, "CONNACK");
		CHECK(tls_conn_error(p.sv) == NULL);
		pair_free(&p);
		tls_server_unref(s);
	}
}

TEST(tls_identity_cn_subject_and_none)
{
	CHECK(pki_init());
	for (int mode = 0; mode < 4; mode++) {
		struct tls_listener_opts o = opts_ec(mode != 3);
		struct pair p;

		o.use_identity_as_username = mode == 0 || mode == 2;
		o.use_subject_as_username = mode == 1 || mode == 2;
		struct tls_server *s = server(&o);

		CHECK(s);
		if (!s)
			continue;
		pair_init(&p, s, &(struct client_opts){.cert = "client"});
		CHECK(pump(&p, 0));
		if (mode == 1)
			CHECK_STR(tls_conn_identity(p.sv), "CN=device-7,O=Kite Test");
		else if (mode == 3) /* no certificate asked for */
			CHECK(tls_conn_identity(p.sv) == NULL);
		else /* Mosquitto: use_identity_as_username wins over subject */
			CHECK_STR(tls_conn_identity(p.sv), "device-7");
		pair_free(&p);
		tls_server_unref(s);
	}
}

TEST(tls_letsencrypt_fullchain_without_cafile)
{
	CHECK(pki_init());
	struct tls_listener_opts o = {.certfile = pki("fullchain.pem"),
				      .keyfile = pki("privkey.pem")};
	struct tls_server *s = server(&o);
	struct pair p;

	CHECK(s);
	if (!s)
		return;
	/* The client trusts only the root: the intermediate must come from
	 * fullchain.pem. */
	pair_init(&p, s, &(struct client_opts){.verify_ca = "le-root.crt",
					       .host = "mqtt.example.com"});
	CHECK(pump(&p, 0));
	CHECK_EQ(SSL_get_verify_result(p.cl), X509_V_OK);
	CHECK_EQ(sk_X509_num(SSL_get_peer_cert_chain(p.cl)), 2);
	CHECK(tls_conn_identity(p.sv) == NULL);
	pair_free(&p);
	tls_server_unref(s);
}

TEST(tls_client_cert_refusals_name_subject_and_reason)
{
	static const struct {
		const char *cert;
		const char *reason;
	} cases[] = {
		{"client-expired", "client certificate refused: certificate has expired "
				   "(subject CN=device-expired)"},
		{"client-future", "client certificate refused: certificate is not yet valid "
				  "(subject CN=device-future)"},
		{"client-foreign", "client certificate refused: unable to get local issuer "
				   "certificate (subject CN=device-foreign)"},
		{"client-revoked", "client certificate refused: certificate revoked "
				   "(subject CN=device-revoked)"},
		{NULL, "client sent no certificate (require_certificate is true)"},
	};

	CHECK(pki_init());
	struct tls_listener_opts o = opts_ec(true);

	o.crlfile = pki("ca.crl");
	struct tls_server *s = server(&o);

	CHECK(s);
	if (!s)
		return;
	for (int v = TLS1_2_VERSION; v <= TLS1_3_VERSION; v++) {
		for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
			struct pair p;

			pair_init(&p, s, &(struct client_opts){.min_version = v,
							       .max_version = v,
							       .cert = cases[i].cert});
			CHECK(!pump(&p, 0));
			CHECK_EQ(p.last_rc, TLS_ERROR);
			CHECK_STR(tls_conn_error(p.sv), cases[i].reason);
			CHECK(tls_conn_identity(p.sv) == NULL);
			CHECK(!tls_conn_handshake_done(p.sv));
			/* Stays failed. */
			CHECK_EQ(tls_conn_feed(p.sv, (const uint8_t *)"x", 1, &p.plain),
				 TLS_ERROR);
			pair_free(&p);
		}
	}
	/* The good certificate passes the same CRL-checking server. */
	struct pair p;

	pair_init(&p, s, &(struct client_opts){.cert = "client"});
	CHECK(pump(&p, 0));
	pair_free(&p);
	tls_server_unref(s);
}

TEST(tls_capath_and_crl_check_all_accept_good_client)
{
	CHECK(pki_init());
	for (int mode = 0; mode < 2; mode++) {
		struct tls_listener_opts o = opts_ec(true);
		struct pair p;

		if (mode == 0) {
			o.cafile = NULL;
			o.capath = pki("capath");
		} else {
			o.crlfile = pki("ca.crl");
			o.crl_check_all = true;
		}
		struct tls_server *s = server(&o);

		CHECK(s);
		if (!s)
			continue;
		pair_init(&p, s, &(struct client_opts){.cert = "client"});
		CHECK(pump(&p, 0));
		pair_free(&p);
		pair_init(&p, s, &(struct client_opts){.cert = "client-foreign"});
		CHECK(!pump(&p, 0));
		pair_free(&p);
		tls_server_unref(s);
	}
}

TEST(tls_version_ciphers_and_dhparam_options)
{
	CHECK(pki_init());
	struct pair p;
	struct tls_listener_opts o = opts_ec(false);
	struct tls_server *s;

	/* tlsv1.3 minimum refuses a TLS 1.2 client. */
	o.tls_version = "tlsv1.3";
	s = server(&o);
	CHECK(s);
	pair_init(&p, s, &(struct client_opts){.max_version = TLS1_2_VERSION});
	CHECK(!pump(&p, 0));
	CHECK(tls_conn_error(p.sv) && strstr(tls_conn_error(p.sv), "TLS handshake failed"));
	pair_free(&p);
	tls_server_unref(s);

	/* ciphers and ciphers_tls1.3 pick what is negotiated. */
	o = opts_ec(false);
	o.ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305";
	o.ciphers_tls13 = "TLS_CHACHA20_POLY1305_SHA256";
	s = server(&o);
	CHECK(s);
	pair_init(&p, s, &(struct client_opts){.max_version = TLS1_2_VERSION});
	CHECK(pump(&p, 0));
	CHECK_STR(tls_conn_cipher(p.sv), "ECDHE-ECDSA-CHACHA20-POLY1305");
	pair_free(&p);
	pair_init(&p, s, &(struct client_opts){0});
	CHECK(pump(&p, 0));
	CHECK_STR(tls_conn_cipher(p.sv), "TLS_CHACHA20_POLY1305_SHA256");
	pair_free(&p);
	tls_server_unref(s);

	/* dhparamfile enables DHE. */
	o = (struct tls_listener_opts){.certfile = pki("server-rsa.crt"),
				       .keyfile = pki("server-rsa.key"),
				       .ciphers = "DHE-RSA-AES128-GCM-SHA256",
				       .dhparamfile = pki("dh.pem")};
	s = server(&o);
	CHECK(s);
	pair_init(&p, s, &(struct client_opts){.max_version = TLS1_2_VERSION});
	CHECK(pump(&p, 0));
	CHECK_STR(tls_conn_cipher(p.sv), "DHE-RSA-AES128-GCM-SHA256");
	pair_free(&p);
	tls_server_unref(s);
}

TEST(tls_server_new_errors_name_option_and_file)
{
	static const struct {
		const char *what;
		const char *expect_prefix;
	} cases[] = {
		{"no certfile", "certfile: not set"},
		{"missing certfile", "certfile /nonexistent/cert.pem: "},
		{"key mismatch", "keyfile "},
		{"tlsv1.1", "tls_version tlsv1.1: refused as insecure"},
		{"tlsv9", "tls_version tlsv9: unknown"},
		{"bad ciphers", "ciphers NOPE: "},
		{"bad ciphers13", "ciphers_tls1.3 NOPE: "},
		{"missing cafile", "cafile /nonexistent/ca.pem: "},
		{"missing capath", "capath /nonexistent: No such file or directory"},
		{"missing crlfile", "crlfile /nonexistent/crl.pem: "},
		{"require without ca", "require_certificate: needs cafile or capath"},
		{"bad dhparam", "dhparamfile "},
	};

	CHECK(pki_init());
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tls_listener_opts o = opts_ec(false);
		const char *w = cases[i].what;
		char err[256] = "";

		if (!strcmp(w, "no certfile"))
			o.certfile = NULL;
		else if (!strcmp(w, "missing certfile"))
			o.certfile = "/nonexistent/cert.pem";
		else if (!strcmp(w, "key mismatch"))
			o.keyfile = pki("server-rsa.key");
		else if (!strcmp(w, "tlsv1.1"))
			o.tls_version = "tlsv1.1";
		else if (!strcmp(w, "tlsv9"))
			o.tls_version = "tlsv9";
		else if (!strcmp(w, "bad ciphers"))
			o.ciphers = "NOPE";
		else if (!strcmp(w, "bad ciphers13"))
			o.ciphers_tls13 = "NOPE";
		else if (!strcmp(w, "missing cafile"))
			o.cafile = "/nonexistent/ca.pem";
		else if (!strcmp(w, "missing capath"))
			o.capath = "/nonexistent";
		else if (!strcmp(w, "missing crlfile"))
			o.crlfile = "/nonexistent/crl.pem";
		else if (!strcmp(w, "require without ca"))
			o.require_certificate = true;
		else if (!strcmp(w, "bad dhparam"))
			o.dhparamfile = pki("ca.crt");
		struct tls_server *s = tls_server_new(&o, err, sizeof(err));

		CHECK(s == NULL);
		tls_server_unref(s);
		if (strncmp(err, cases[i].expect_prefix, strlen(cases[i].expect_prefix))) {
			fprintf(stderr, "  %s: got \"%s\"\n", w, err);
			CHECK(0);
		}
		if (!strcmp(w, "key mismatch"))
			CHECK(strstr(err, "does not match certfile") != NULL);
	}
}

/* ---- hostile and odd input ----------------------------------------------- */

TEST(tls_plain_mqtt_connect_is_not_a_tls_handshake)
{
	static const uint8_t connect[] = {0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 4, 2,
					  0, 60, 0, 4, 'k', 'i', 't', 'e'};
	CHECK(pki_init());
	struct tls_listener_opts o = opts_ec(false);
	struct tls_server *s = server(&o);
	struct tls_conn *c = tls_conn_new(s);
	struct tls_buf plain = {0};

	CHECK_EQ(tls_conn_feed(c, connect, sizeof(connect), &plain), TLS_ERROR);
	CHECK_STR(tls_conn_error(c), "not a TLS handshake (first byte 0x10, plain MQTT CONNECT?)");
	CHECK_EQ(plain.len, 0);
	tls_conn_free(c);
	tls_server_unref(s);
}

TEST(tls_garbage_records_error_without_crash)
{
	CHECK(pki_init());
	struct tls_listener_opts o = opts_ec(false);
	struct tls_server *s = server(&o);
	uint8_t junk[4096];
	unsigned seed = 12345;

	for (int round = 0; round < 200; round++) {
		struct tls_conn *c = tls_conn_new(s);
		struct tls_buf plain = {0};
		int rc = TLS_WANT_MORE;

		for (size_t i = 0; i < sizeof(junk); i++)
			junk[i] = (uint8_t)(rand_r(&seed) >> 7);
		junk[0] = 0x16; /* get past the first-byte check */
		if (round % 2) { /* plausible record header, garbage body */
			junk[1] = 3;
			junk[2] = 1;
			junk[3] = 0x01;
			junk[4] = 0x00;
		}
		for (size_t off = 0; off < sizeof(junk) && rc != TLS_ERROR; off += 512)
			rc = tls_conn_feed(c, junk + off, 512, &plain);
		CHECK_EQ(rc, TLS_ERROR);
		CHECK(tls_conn_error(c) != NULL &&
		      !strncmp(tls_conn_error(c), "TLS handshake failed: ", 22));
		CHECK_EQ(plain.len, 0);
		tls_buf_free(&plain);
		tls_conn_free(c);
	}

	/* Garbage after a good handshake: a forged application record. */
	struct pair p;
	static const uint8_t forged[] = {0x17, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
					 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};

	pair_init(&p, s, &(struct client_opts){0});
	CHECK(pump(&p, 0));
	CHECK_EQ(tls_conn_feed(p.sv, forged, sizeof(forged), &p.plain), TLS_ERROR);
	CHECK(tls_conn_error(p.sv) && !strncmp(tls_conn_error(p.sv), "TLS error: ", 11));
	pair_free(&p);
	tls_server_unref(s);
}

TEST(tls_truncated_records_want_more)
{
	CHECK(pki_init());
	struct tls_listener_opts o = opts_ec(true);
	struct tls_server *s = server(&o);
	struct pair p;
	uint8_t rec[4096];
	int n;

	/* The whole handshake fed one byte at a time. */
	pair_init(&p, s, &(struct client_opts){.cert = "client"});
	SSL_do_handshake(p.cl);
	n = BIO_read(p.c_out, rec, sizeof(rec));
	CHECK(n > 5);
	for (int i = 0; i < n; i++) {
		int rc = tls_conn_feed(p.sv, rec + i, 1, &p.plain);

		CHECK_EQ(rc, TLS_WANT_MORE);
		/* The server answers only once the ClientHello is whole. */
		const uint8_t *out;

		CHECK_EQ(tls_conn_pending_out(p.sv, &out) > 0, i == n - 1);
	}
	CHECK(pump(&p, 1));
	CHECK_EQ(p.hs_done_count, 1);

	/* An application record split in two. */
	size_t w;

	SSL_write_ex(p.cl, "PINGREQ", 7, &w);
	n = BIO_read(p.c_out, rec, sizeof(rec));
	CHECK(n > 10);
	CHECK_EQ(tls_conn_feed(p.sv, rec, 10, &p.plain), TLS_WANT_MORE);
	CHECK_EQ(p.plain.len, 0);
	struct tls_ktls_keys k;

	CHECK_EQ(tls_conn_export_ktls(p.sv, &k, 0), TLS_KTLS_AGAIN);
	CHECK_EQ(tls_conn_feed(p.sv, rec + 10, (size_t)n - 10, &p.plain), TLS_OK);
	CHECK_EQ(p.plain.len, 7);
	pair_free(&p);
	tls_server_unref(s);
}

TEST(tls_close_notify_closes_after_last_data)
{
	CHECK(pki_init());
	struct tls_listener_opts o = opts_ec(false);
	struct tls_server *s = server(&o);
	struct pair p;
	size_t w;

	pair_init(&p, s, &(struct client_opts){0});
	CHECK(pump(&p, 0));
	/* DISCONNECT and close_notify in one segment. */
	SSL_write_ex(p.cl, "\xe0\x00", 2, &w);
	SSL_shutdown(p.cl);
	to_server(&p, 0);
	CHECK_EQ(p.last_rc, TLS_CLOSED);
	CHECK_EQ(p.plain.len, 2);
	CHECK_EQ(tls_conn_feed(p.sv, (const uint8_t *)"x", 1, &p.plain), TLS_CLOSED);
	CHECK(tls_conn_error(p.sv) == NULL);
	pair_free(&p);

	/* Our own close_notify reaches the client. */
	pair_init(&p, s, &(struct client_opts){0});
	CHECK(pump(&p, 0));
	CHECK_EQ(tls_conn_close_notify(p.sv), TLS_OK);
	char buf[8];

	CHECK_EQ(client_recv(&p, buf, sizeof(buf)), 0);
	CHECK_EQ(SSL_get_error(p.cl, 0), SSL_ERROR_ZERO_RETURN);
	pair_free(&p);
	tls_server_unref(s);
}

/* ---- reload ------------------------------------------------------------ */

static bool copy_file(const char *from, const char *to)
{
	char buf[8192];
	FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
	size_t n;
	bool ok = in && out;

	while (ok && (n = fread(buf, 1, sizeof(buf), in)) > 0)
		ok = fwrite(buf, 1, n, out) == n;
	if (in)
		fclose(in);
	if (out)
		fclose(out);
	return ok;
}

static char *peer_cn(SSL *ssl, char *buf, size_t len)
{
	X509 *x = SSL_get0_peer_certificate(ssl);

	buf[0] = 0;
	if (x)
		X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, (int)len);
	return buf;
}

TEST(tls_reload_new_files_old_connections_unaffected)
{
	CHECK(pki_init());
	struct tls_listener_opts o = opts_ec(true);
	struct pair old_p, new_p;
	char cn[64], buf[64], err[256];

	o.certfile = pki("live.crt");
	o.keyfile = pki("live.key");
	CHECK(copy_file(pki("server-ec.crt"), o.certfile));
	CHECK(copy_file(pki("server-ec.key"), o.keyfile));
	struct tls_server *s1 = server(&o);

	CHECK(s1);
	pair_init(&old_p, s1, &(struct client_opts){.cert = "client", .verify_ca = "ca.crt"});
	CHECK(pump(&old_p, 0));
	CHECK_STR(peer_cn(old_p.cl, cn, sizeof(cn)), "localhost");

	/* Renewal writes the certificate first: a reload in between fails
	 * (key mismatch) and the caller keeps s1. */
	CHECK(copy_file(pki("server-ec2.crt"), o.certfile));
	CHECK(tls_server_new(&o, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "does not match") != NULL);
	if (!strstr(err, "does not match"))
		fprintf(stderr, "  reload error: %s\n", err);
	CHECK(copy_file(pki("server-ec2.key"), o.keyfile));
	struct tls_server *s2 = server(&o);

	CHECK(s2);
	tls_server_unref(s1); /* the listener swapped; old_p keeps s1 alive */
	pair_init(&new_p, s2, &(struct client_opts){.cert = "client", .verify_ca = "ca.crt"});
	CHECK(pump(&new_p, 0));
	CHECK_STR(peer_cn(new_p.cl, cn, sizeof(cn)), "renewed.localhost");

	CHECK(client_send(&old_p, "PUBLISH"));
	CHECK_EQ(tls_conn_write(old_p.sv, (const uint8_t *)"PUBACK", 6), TLS_OK);
	CHECK_EQ(client_recv(&old_p, buf, sizeof(buf)), 6);
	CHECK_STR(tls_conn_identity(old_p.sv), "device-7");
	pair_free(&old_p);
	pair_free(&new_p);
	tls_server_unref(s2);
}

/* ---- kTLS key export, proven by a userspace record layer ------------------ */

struct rec_keys {
	const EVP_CIPHER *cipher;
	uint16_t version;
	uint8_t key[32];
	uint8_t iv[12]; /* TLS 1.2 GCM: salt in [0,4) */
	uint64_t seq;
};

static uint64_t be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

/* The kernel struct, read back the way the kernel uses it. */
static void rec_keys_from(const struct tls_ktls_keys *k, const union tls_ktls_crypto_info *ci,
			  struct rec_keys *r)
{
	memset(r, 0, sizeof(*r));
	r->version = k->version;
	switch (k->cipher_type) {
	case TLS_CIPHER_AES_GCM_128:
		r->cipher = EVP_aes_128_gcm();
		memcpy(r->key, ci->aes_gcm_128.key, 16);
		memcpy(r->iv, ci->aes_gcm_128.salt, 4);
		memcpy(r->iv + 4, ci->aes_gcm_128.iv, 8);
		r->seq = be64(ci->aes_gcm_128.rec_seq);
		break;
	case TLS_CIPHER_AES_GCM_256:
		r->cipher = EVP_aes_256_gcm();
		memcpy(r->key, ci->aes_gcm_256.key, 32);
		memcpy(r->iv, ci->aes_gcm_256.salt, 4);
		memcpy(r->iv + 4, ci->aes_gcm_256.iv, 8);
		r->seq = be64(ci->aes_gcm_256.rec_seq);
		break;
	default:
		r->cipher = EVP_chacha20_poly1305();
		memcpy(r->key, ci->chacha20_poly1305.key, 32);
		memcpy(r->iv, ci->chacha20_poly1305.iv, 12);
		r->seq = be64(ci->chacha20_poly1305.rec_seq);
		break;
	}
}

static int aead(const struct rec_keys *r, bool enc, const uint8_t nonce[12],
		const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len,
		uint8_t *out, uint8_t tag[16])
{
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	int n, ok;

	ok = EVP_CipherInit_ex(x, r->cipher, NULL, NULL, NULL, enc) &&
	     EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL) &&
	     EVP_CipherInit_ex(x, NULL, NULL, r->key, nonce, enc);
	if (ok && !enc)
		ok = EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, 16, tag);
	ok = ok && EVP_CipherUpdate(x, NULL, &n, aad, (int)aad_len) &&
	     EVP_CipherUpdate(x, out, &n, in, (int)len) &&
	     EVP_CipherFinal_ex(x, out + n, &n);
	if (ok && enc)
		ok = EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, tag);
	EVP_CIPHER_CTX_free(x);
	return ok ? 0 : -1;
}

static bool gcm12(const struct rec_keys *r)
{
	return r->version == TLS_1_2_VERSION && r->cipher != EVP_chacha20_poly1305();
}

/* Per-record nonce: TLS 1.3 and ChaCha XOR the sequence number into the
 * static IV; TLS 1.2 GCM is salt || explicit nonce. */
static void nonce_for(const struct rec_keys *r, const uint8_t *explicit_nonce, uint8_t n[12])
{
	memcpy(n, r->iv, 12);
	if (gcm12(r)) {
		memcpy(n + 4, explicit_nonce, 8);
		return;
	}
	for (int i = 0; i < 8; i++)
		n[4 + i] ^= (uint8_t)(r->seq >> (56 - 8 * i));
}

static void aad12(const struct rec_keys *r, size_t len, uint8_t aad[13])
{
	put64(aad, r->seq);
	aad[8] = 23;
	aad[9] = 3;
	aad[10] = 3;
	aad[11] = (uint8_t)(len >> 8);
	aad[12] = (uint8_t)len;
}

/* Opens one record whose TLS 1.3 inner type is `type`; returns the
 * plaintext length or -1. */
static int rec_open_type(struct rec_keys *r, const uint8_t *rec, size_t len,
			 uint8_t *out, uint8_t type)
{
	uint8_t nonce[12], aad[13], tag[16];
	size_t body = len - 5, ex = gcm12(r) ? 8 : 0, ct;

	if (len < 5 + ex + 16 || rec[0] != 23 || (size_t)(rec[3] << 8 | rec[4]) != body)
		return -1;
	ct = body - ex - 16;
	memcpy(tag, rec + 5 + ex + ct, 16);
	nonce_for(r, rec + 5, nonce);
	if (r->version == TLS_1_3_VERSION) {
		if (aead(r, false, nonce, rec, 5, rec + 5, ct, out, tag))
			return -1;
		while (ct > 0 && out[ct - 1] == 0) /* padding */
			ct--;
		if (!ct || out[--ct] != type)
			return -1;
	} else {
		aad12(r, ct, aad);
		if (aead(r, false, nonce, aad, 13, rec + 5 + ex, ct, out, tag))
			return -1;
	}
	r->seq++;
	return (int)ct;
}

/* Opens one application-data record; returns plaintext length or -1. */
static int rec_open(struct rec_keys *r, const uint8_t *rec, size_t len, uint8_t *out)
{
	return rec_open_type(r, rec, len, out, 23);
}

/* Seals pt as one record of (TLS 1.3 inner) type `type` into out;
 * returns its length. */
static size_t rec_seal_type(struct rec_keys *r, const uint8_t *pt, size_t len,
			    uint8_t *out, uint8_t type)
{
	uint8_t nonce[12], aad[13], inner[512], explicit_nonce[8];
	size_t ex = gcm12(r) ? 8 : 0, ct = len, body;

	put64(explicit_nonce, r->seq);
	nonce_for(r, explicit_nonce, nonce);
	memcpy(inner, pt, len);
	if (r->version == TLS_1_3_VERSION)
		inner[ct++] = type;
	body = ex + ct + 16;
	out[0] = 23;
	out[1] = 3;
	out[2] = 3;
	out[3] = (uint8_t)(body >> 8);
	out[4] = (uint8_t)body;
	memcpy(out + 5, explicit_nonce, ex);
	if (r->version == TLS_1_3_VERSION) {
		aead(r, true, nonce, out, 5, inner, ct, out + 5, out + 5 + ct);
	} else {
		aad12(r, ct, aad);
		aead(r, true, nonce, aad, 13, inner, ct, out + 5 + ex, out + 5 + ex + ct);
	}
	r->seq++;
	return 5 + body;
}

static size_t rec_seal(struct rec_keys *r, const uint8_t *pt, size_t len, uint8_t *out)
{
	return rec_seal_type(r, pt, len, out, 23);
}

struct ktls_case {
	int version;
	const char *cipher; /* list (1.2) or suite (1.3) */
	const char *server;
	uint16_t cipher_type;
};

/* TLS 1.3 after the handoff, as kite does it with kernel TLS: the
 * client's KeyUpdate (asking for ours) arrives under the old key, its
 * next record under the key tls_ktls_rekey_next derived; our KeyUpdate
 * goes out under the old key and OpenSSL must accept what follows under
 * our next key. Twice, so the secret is seen to move on. */
static void ktls_prove_key_update(int *test_failed_, struct pair *p,
				  const struct tls_ktls_keys *k,
				  struct rec_keys *rx, struct rec_keys *tx)
{
	static const uint8_t ours[5] = {24, 0, 0, 1, 0};
	uint8_t recs[2048], pt[1024], rec[1024];
	char buf[64], msg[32];
	union tls_ktls_crypto_info ci;
	size_t w, len;

	for (int round = 0; round < 2; round++) {
		snprintf(msg, sizeof(msg), "after update %d", round);
		CHECK_EQ(SSL_key_update(p->cl, SSL_KEY_UPDATE_REQUESTED), 1);
		CHECK_EQ(SSL_write_ex(p->cl, msg, strlen(msg), &w), 1);
		int n = BIO_read(p->c_out, recs, sizeof(recs));
		size_t first = n > 5 ? 5 + (size_t)(recs[3] << 8 | recs[4]) : 0;
		CHECK(n > 5 && first < (size_t)n);
		if (n <= 5 || first >= (size_t)n)
			return;
		/* The KeyUpdate: handshake type 24, length 1, update_requested. */
		CHECK_EQ(rec_open_type(rx, recs, first, pt, 22), 5);
		CHECK(!memcmp(pt, "\x18\x00\x00\x01\x01", 5));
		CHECK_EQ(tls_ktls_rekey_next(k->rekey, TLS_KTLS_RX, &ci, &len), 0);
		CHECK_EQ(len, k->rx_len);
		rec_keys_from(k, &ci, rx);
		CHECK_EQ(rx->seq, 0);
		CHECK_EQ(rec_open(rx, recs + first, (size_t)n - first, pt), (int)strlen(msg));
		CHECK(!memcmp(pt, msg, strlen(msg)));

		/* Ours, then data under our next key. */
		n = (int)rec_seal_type(tx, ours, sizeof(ours), rec, 22);
		BIO_write(p->c_in, rec, n);
		CHECK_EQ(tls_ktls_rekey_next(k->rekey, TLS_KTLS_TX, &ci, &len), 0);
		rec_keys_from(k, &ci, tx);
		snprintf(msg, sizeof(msg), "server after update %d", round);
		n = (int)rec_seal(tx, (const uint8_t *)msg, strlen(msg), rec);
		BIO_write(p->c_in, rec, n);
		CHECK_EQ(SSL_read(p->cl, buf, sizeof(buf) - 1), (int)strlen(msg));
		buf[strlen(msg)] = 0;
		CHECK_STR(buf, msg);
	}
	OPENSSL_cleanse(&ci, sizeof(ci));
}

/* Handshake, optional traffic, export; then the proof both ways. */
static void ktls_prove(int *test_failed_, const struct ktls_case *kc, bool traffic_first)
{
	struct tls_listener_opts o = opts_ec(true);
	char cf[128], kf[128], buf[64];
	struct pair p;
	struct tls_ktls_keys k;
	struct rec_keys rx, tx;
	uint8_t rec[1024], pt[1024];
	size_t w;
	uint64_t base = kc->version == TLS1_2_VERSION ? 1 : 0;

	snprintf(cf, sizeof(cf), "%s.crt", kc->server);
	snprintf(kf, sizeof(kf), "%s.key", kc->server);
	o.certfile = strcpy(cf, pki(cf));
	o.keyfile = strcpy(kf, pki(kf));
	struct tls_server *s = server(&o);

	CHECK(s);
	if (!s)
		return;
	pair_init(&p, s, &(struct client_opts){
				 .min_version = kc->version,
				 .max_version = kc->version,
				 .ciphers = kc->version == TLS1_2_VERSION ? kc->cipher : NULL,
				 .suites = kc->version == TLS1_3_VERSION ? kc->cipher : NULL,
				 .cert = "client"});
	CHECK(pump(&p, 0));
	if (traffic_first) { /* two records in, one out, in userspace */
		CHECK(client_send(&p, "pre-1"));
		CHECK(client_send(&p, "pre-2"));
		CHECK_EQ(tls_conn_write(p.sv, (const uint8_t *)"pre-out", 7), TLS_OK);
		CHECK_EQ(client_recv(&p, buf, sizeof(buf)), 7);
	}
	CHECK_EQ(tls_conn_export_ktls(p.sv, &k, TLS_KTLS_KEEP_SECRETS), TLS_KTLS_OK);
	CHECK_EQ(k.version, kc->version == TLS1_2_VERSION ? TLS_1_2_VERSION : TLS_1_3_VERSION);
	/* Only TLS 1.3 has key updates. */
	CHECK_EQ(k.rekey != NULL, kc->version == TLS1_3_VERSION);
	CHECK_EQ(k.cipher_type, kc->cipher_type);
	CHECK_EQ(k.tx.info.cipher_type, kc->cipher_type);
	CHECK_EQ(k.rx.info.version, k.version);
	CHECK_EQ(k.tx_len, kc->cipher_type == TLS_CIPHER_AES_GCM_128 ?
				   sizeof(struct tls12_crypto_info_aes_gcm_128) :
			   kc->cipher_type == TLS_CIPHER_AES_GCM_256 ?
				   sizeof(struct tls12_crypto_info_aes_gcm_256) :
				   sizeof(struct tls12_crypto_info_chacha20_poly1305));
	CHECK_EQ(k.rx_len, k.tx_len);
	rec_keys_from(&k, &k.rx, &rx);
	rec_keys_from(&k, &k.tx, &tx);
	struct tls_ktls_keys meta = {.version = k.version, .cipher_type = k.cipher_type,
				     .tx_len = k.tx_len, .rx_len = k.rx_len,
				     .rekey = k.rekey};
	tls_ktls_keys_wipe(&k);
	CHECK(kc->version == TLS1_2_VERSION || k.rekey); /* survives the wipe */
	CHECK_EQ(rx.seq, base + (traffic_first ? 2 : 0));
	/* TLS 1.2: our Finished was record 0 under these keys; TLS 1.3:
	 * the session ticket went out under our traffic key. */
	CHECK_EQ(tx.seq, 1 + (traffic_first ? 1 : 0));

	/* "Kernel RX": open what the client sends next. */
	for (int i = 0; i < 2; i++) {
		char msg[32];
		int n;

		snprintf(msg, sizeof(msg), "client record %d", i);
		SSL_write_ex(p.cl, msg, strlen(msg), &w);
		n = BIO_read(p.c_out, rec, sizeof(rec));
		CHECK(n > 0);
		n = rec_open(&rx, rec, (size_t)n, pt);
		CHECK_EQ(n, (int)strlen(msg));
		CHECK(n > 0 && !memcmp(pt, msg, (size_t)n));
	}
	/* "Kernel TX": the client must accept our records. */
	for (int i = 0; i < 2; i++) {
		char msg[32];
		size_t n;

		snprintf(msg, sizeof(msg), "server record %d", i);
		n = rec_seal(&tx, (const uint8_t *)msg, strlen(msg), rec);
		BIO_write(p.c_in, rec, (int)n);
		CHECK_EQ(SSL_read(p.cl, buf, sizeof(buf) - 1), (int)strlen(msg));
		buf[strlen(msg)] = 0;
		CHECK_STR(buf, msg);
	}
	if (k.rekey)
		ktls_prove_key_update(test_failed_, &p, &meta, &rx, &tx);
	tls_ktls_rekey_free(k.rekey);
	OPENSSL_cleanse(&rx, sizeof(rx));
	OPENSSL_cleanse(&tx, sizeof(tx));
	pair_free(&p);
	tls_server_unref(s);
}

TEST(tls_ktls_export_keys_and_seq_decrypt_and_encrypt)
{
	static const struct ktls_case cases[] = {
		{TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", "server-ec", TLS_CIPHER_AES_GCM_128},
		{TLS1_3_VERSION, "TLS_AES_256_GCM_SHA384", "server-ec", TLS_CIPHER_AES_GCM_256},
		{TLS1_3_VERSION, "TLS_CHACHA20_POLY1305_SHA256", "server-ec",
		 TLS_CIPHER_CHACHA20_POLY1305},
		{TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", "server-ec",
		 TLS_CIPHER_AES_GCM_128},
		{TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384", "server-ec",
		 TLS_CIPHER_AES_GCM_256},
		{TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305", "server-ec",
		 TLS_CIPHER_CHACHA20_POLY1305},
		{TLS1_2_VERSION, "ECDHE-RSA-AES128-GCM-SHA256", "server-rsa",
		 TLS_CIPHER_AES_GCM_128},
		{TLS1_3_VERSION, "TLS_AES_256_GCM_SHA384", "server-rsa", TLS_CIPHER_AES_GCM_256},
	};

	CHECK(pki_init());
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (int traffic = 0; traffic < 2; traffic++) {
			int before = *test_failed_;

			ktls_prove(test_failed_, &cases[i], traffic);
			if (*test_failed_ && !before)
				fprintf(stderr, "  ^ case %s %s%s\n", cases[i].cipher,
					cases[i].server, traffic ? " after traffic" : "");
		}
	}
}

TEST(tls_ktls_export_refuses_cbc_and_unfinished)
{
	CHECK(pki_init());
	struct tls_listener_opts o = opts_ec(false);
	struct tls_server *s = server(&o);
	struct tls_ktls_keys k;
	struct pair p;

	pair_init(&p, s, &(struct client_opts){0});
	CHECK_EQ(tls_conn_export_ktls(p.sv, &k, 0), TLS_KTLS_UNSUPPORTED); /* no handshake */
	pair_free(&p);

	pair_init(&p, s, &(struct client_opts){.max_version = TLS1_2_VERSION,
					       .ciphers = "ECDHE-ECDSA-AES128-SHA256"});
	CHECK(pump(&p, 0));
	CHECK_EQ(tls_conn_export_ktls(p.sv, &k, 0), TLS_KTLS_UNSUPPORTED);
	uint8_t zero[sizeof(k)];

	memset(zero, 0, sizeof(zero));
	CHECK(!memcmp(&k, zero, sizeof(k))); /* wiped */
	/* Still usable in userspace. */
	CHECK(client_send(&p, "still here"));
	pair_free(&p);

	/* Unsent output blocks the handoff until consumed. */
	pair_init(&p, s, &(struct client_opts){0});
	CHECK(pump(&p, 0));
	CHECK_EQ(tls_conn_write(p.sv, (const uint8_t *)"x", 1), TLS_OK);
	CHECK_EQ(tls_conn_export_ktls(p.sv, &k, 0), TLS_KTLS_AGAIN);
	to_client(&p);
	CHECK_EQ(tls_conn_export_ktls(p.sv, &k, 0), TLS_KTLS_OK);
	tls_ktls_keys_wipe(&k);
	pair_free(&p);
	tls_server_unref(s);
}

/* ---- a bridge's client side (tls_client) and kernel TLS ------------------- */

/* Moves from's pending ciphertext into to; to's plaintext lands in plain. */
static int conn_pump(struct tls_conn *from, struct tls_conn *to, struct tls_buf *plain)
{
	const uint8_t *p;
	size_t n = tls_conn_pending_out(from, &p);
	int rc = TLS_WANT_MORE;

	if (n) {
		rc = tls_conn_feed(to, p, n, plain);
		tls_conn_consume_out(from, n);
	}
	return rc;
}

/* kite's client (a bridge) against kite's server, both in memory: traffic
 * both ways in userspace (the server's TLS 1.3 session ticket included,
 * which the client reads before the handoff), then each exports its keys.
 * The client's TX must be the server's RX and the other way round, record
 * sequence numbers included; the server's export is proven against
 * OpenSSL above. Then one TLS 1.3 key update each way, from the kept
 * secrets. Certificates, or TLS-PSK (server "psk"). */
static void bridge_ktls_case(int *test_failed_, const struct ktls_case *kc)
{
	struct tls_listener_opts o = opts_ec(false);
	bool v13 = kc->version == TLS1_3_VERSION;
	bool psk = !strcmp(kc->server, "psk"); /* bridge_identity/bridge_psk */
	char err[256];
	static const char key[] = "00112233445566778899aabbccddeeff";

	if (psk) {
		FILE *f = fopen(pki("bridge.psk"), "w");
		CHECK(f && fprintf(f, "edge-7:%s\n", key) > 0);
		if (f)
			fclose(f);
		o = (struct tls_listener_opts){.psk_hint = "kite",
					       .psk_file = pki("bridge.psk")};
	}
	if (v13)
		o.ciphers_tls13 = kc->cipher;
	else
		o.ciphers = kc->cipher;
	struct tls_server *s = server(&o);
	struct tls_client *cl = tls_client_new(&(struct tls_client_opts){
		.cafile = psk ? NULL : pki("ca.crt"),
		.psk_identity = psk ? "edge-7" : NULL, .psk_hex = psk ? key : NULL,
		.version = v13 ? "tlsv1.3" : "tlsv1.2"},
		err, sizeof(err));
	CHECK(s && cl);
	if (!s || !cl)
		return;
	struct tls_conn *cc = tls_client_conn_new(cl, "localhost", true);
	struct tls_conn *sc = tls_conn_new(s);
	struct tls_buf cplain = {0}, splain = {0};
	struct tls_ktls_keys ck, sk;
	const uint8_t *p;

	for (int i = 0; i < 8; i++) {
		CHECK(conn_pump(cc, sc, &splain) != TLS_ERROR);
		CHECK(conn_pump(sc, cc, &cplain) != TLS_ERROR);
	}
	CHECK(tls_conn_handshake_done(cc) && tls_conn_handshake_done(sc));
	CHECK_EQ(tls_conn_write(cc, (const uint8_t *)"CONNECT", 7), TLS_OK);
	CHECK_EQ(conn_pump(cc, sc, &splain), TLS_OK);
	CHECK_EQ(tls_conn_write(sc, (const uint8_t *)"CONNACK", 7), TLS_OK);
	CHECK_EQ(tls_conn_write(sc, (const uint8_t *)"SUBACK", 6), TLS_OK);
	CHECK_EQ(conn_pump(sc, cc, &cplain), TLS_OK);
	CHECK(splain.len == 7 && !memcmp(splain.data, "CONNECT", 7));
	CHECK(cplain.len == 13 && !memcmp(cplain.data, "CONNACKSUBACK", 13));
	CHECK(!tls_conn_pending_out(cc, &p) && !tls_conn_pending_out(sc, &p));

	CHECK_EQ(tls_conn_export_ktls(cc, &ck, TLS_KTLS_KEEP_SECRETS), TLS_KTLS_OK);
	CHECK_EQ(tls_conn_export_ktls(sc, &sk, TLS_KTLS_KEEP_SECRETS), TLS_KTLS_OK);
	CHECK_EQ(ck.cipher_type, kc->cipher_type);
	CHECK_EQ(ck.version, sk.version);
	CHECK_EQ(ck.tx_len, sk.rx_len);
	CHECK_EQ(ck.rx_len, sk.tx_len);
	CHECK(!memcmp(&ck.tx, &sk.rx, ck.tx_len));
	CHECK(!memcmp(&ck.rx, &sk.tx, ck.rx_len));
	CHECK_EQ(ck.rekey != NULL, v13);
	if (ck.rekey && sk.rekey) {
		union tls_ktls_crypto_info a, b;
		size_t alen, blen;

		CHECK_EQ(tls_ktls_rekey_next(ck.rekey, TLS_KTLS_TX, &a, &alen), 0);
		CHECK_EQ(tls_ktls_rekey_next(sk.rekey, TLS_KTLS_RX, &b, &blen), 0);
		CHECK(alen == blen && !memcmp(&a, &b, alen));
		CHECK_EQ(tls_ktls_rekey_next(ck.rekey, TLS_KTLS_RX, &a, &alen), 0);
		CHECK_EQ(tls_ktls_rekey_next(sk.rekey, TLS_KTLS_TX, &b, &blen), 0);
		CHECK(alen == blen && !memcmp(&a, &b, alen));
		OPENSSL_cleanse(&a, sizeof(a));
		OPENSSL_cleanse(&b, sizeof(b));
	}
	tls_ktls_rekey_free(ck.rekey);
	tls_ktls_rekey_free(sk.rekey);
	tls_ktls_keys_wipe(&ck);
	tls_ktls_keys_wipe(&sk);
	tls_buf_free(&cplain);
	tls_buf_free(&splain);
	tls_conn_free(cc);
	tls_conn_free(sc);
	tls_client_free(cl);
	tls_server_unref(s);
}

TEST(tls_bridge_client_ktls_keys_are_the_servers_mirrored)
{
	static const struct ktls_case cases[] = {
		{TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", "server-ec", TLS_CIPHER_AES_GCM_128},
		{TLS1_3_VERSION, "TLS_AES_256_GCM_SHA384", "server-ec", TLS_CIPHER_AES_GCM_256},
		{TLS1_3_VERSION, "TLS_CHACHA20_POLY1305_SHA256", "server-ec",
		 TLS_CIPHER_CHACHA20_POLY1305},
		{TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", "server-ec",
		 TLS_CIPHER_AES_GCM_128},
		{TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384", "server-ec",
		 TLS_CIPHER_AES_GCM_256},
		{TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305", "server-ec",
		 TLS_CIPHER_CHACHA20_POLY1305},
		{TLS1_2_VERSION, "PSK-AES128-GCM-SHA256", "psk", TLS_CIPHER_AES_GCM_128},
		{TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", "psk", TLS_CIPHER_AES_GCM_128},
	};

	CHECK(pki_init());
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int before = *test_failed_;

		bridge_ktls_case(test_failed_, &cases[i]);
		if (*test_failed_ && !before)
			fprintf(stderr, "  ^ case %s %s\n", cases[i].cipher,
				cases[i].server);
	}
}

TEST(tls_kernel_ktls_probe)
{
	bool has = tls_kernel_ktls_support() != TLS_KERNEL_NO_ULP;

	/* Without the TLS ULP the kernel side of kTLS is not exercised on
	 * this machine: a skip, not a pass. */
	if (!has)
		SKIP("kernel has no TLS ULP (CONFIG_TLS off): kTLS install path "
		     "not exercised");
	fprintf(stderr, "  kernel TLS ULP available\n");
}

/* ---- records without OpenSSL (tls_conn_shed) ----------------------------- */

/* Client -> server in chunks of `chunk` bytes (0: at once); the server's
 * plaintext is compared with what was sent. */
static bool shed_client_send(int *test_failed_, struct pair *p, size_t len, size_t chunk)
{
	uint8_t *msg = malloc(len), *rec = malloc(2 * len + 4096);
	size_t w;
	bool ok;

	for (size_t i = 0; i < len; i++)
		msg[i] = (uint8_t)(i * 7 + len);
	CHECK_EQ(SSL_write_ex(p->cl, msg, len, &w), 1);
	int n = BIO_read(p->c_out, rec, (int)(2 * len + 4096));
	p->plain.len = 0;
	for (int off = 0; off < n;) {
		size_t k = chunk && chunk < (size_t)(n - off) ? chunk : (size_t)(n - off);
		p->last_rc = tls_conn_feed(p->sv, rec + off, k, &p->plain);
		CHECK(p->last_rc == TLS_OK || p->last_rc == TLS_WANT_MORE);
		off += (int)k;
	}
	ok = p->plain.len == len && !memcmp(p->plain.data, msg, len);
	free(msg);
	free(rec);
	return ok;
}

static bool shed_server_send(int *test_failed_, struct pair *p, size_t len)
{
	uint8_t *msg = malloc(len), *got = malloc(len);
	size_t have = 0, r;

	for (size_t i = 0; i < len; i++)
		msg[i] = (uint8_t)(i * 13 + 1);
	CHECK_EQ(tls_conn_write(p->sv, msg, len), TLS_OK);
	to_client(p);
	while (have < len && SSL_read_ex(p->cl, got + have, len - have, &r) == 1)
		have += r;
	bool ok = have == len && !memcmp(got, msg, len);
	free(msg);
	free(got);
	return ok;
}

TEST(tls_shed_records_both_ways_key_update_and_close)
{
	static const struct ktls_case cases[] = {
		{TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", "server-ec", 0},
		{TLS1_3_VERSION, "TLS_AES_256_GCM_SHA384", "server-rsa", 0},
		{TLS1_3_VERSION, "TLS_CHACHA20_POLY1305_SHA256", "server-ec", 0},
		{TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", "server-ec", 0},
		{TLS1_2_VERSION, "ECDHE-RSA-AES256-GCM-SHA384", "server-rsa", 0},
		{TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305", "server-ec", 0},
	};
	char cf[128], kf[128];

	CHECK(pki_init());
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct ktls_case *kc = &cases[i];
		struct tls_listener_opts o = opts_ec(true);
		snprintf(cf, sizeof(cf), "%s.crt", kc->server);
		snprintf(kf, sizeof(kf), "%s.key", kc->server);
		o.certfile = strcpy(cf, pki(cf));
		o.keyfile = strcpy(kf, pki(kf));
		o.use_identity_as_username = true;
		struct tls_server *s = server(&o);
		struct pair p;
		int before = *test_failed_;

		pair_init(&p, s, &(struct client_opts){
					 .min_version = kc->version,
					 .max_version = kc->version,
					 .ciphers = kc->version == TLS1_2_VERSION ? kc->cipher : NULL,
					 .suites = kc->version == TLS1_3_VERSION ? kc->cipher : NULL,
					 .cert = "client"});
		CHECK(pump(&p, 0));
		const char *id = tls_conn_identity(p.sv);
		char *id_copy = strdup(id ? id : "");
		const char *ver = tls_conn_version(p.sv), *ciph = tls_conn_cipher(p.sv);
		tls_conn_shed(p.sv);
		/* The names survive the SSL object. */
		CHECK_STR(tls_conn_version(p.sv), ver);
		CHECK_STR(tls_conn_cipher(p.sv), ciph);
		CHECK_STR(tls_conn_identity(p.sv), id_copy);
		struct tls_ktls_keys k;
		CHECK_EQ(tls_conn_export_ktls(p.sv, &k, 0), TLS_KTLS_UNSUPPORTED);

		/* Whole, byte by byte, and records larger than one feed. */
		CHECK(shed_client_send(test_failed_, &p, 100, 0));
		CHECK(shed_client_send(test_failed_, &p, 300, 1));
		CHECK(shed_client_send(test_failed_, &p, 40000, 7000));
		CHECK(shed_server_send(test_failed_, &p, 10));
		CHECK(shed_server_send(test_failed_, &p, 70000)); /* 5 records */
		if (kc->version == TLS1_3_VERSION) {
			/* The client's KeyUpdate asks for ours; data follows
			 * under the new keys both ways, twice. */
			for (int round = 0; round < 2; round++) {
				CHECK_EQ(SSL_key_update(p.cl, SSL_KEY_UPDATE_REQUESTED), 1);
				CHECK(shed_client_send(test_failed_, &p, 50, round ? 3 : 0));
				CHECK(shed_server_send(test_failed_, &p, 60));
				CHECK(shed_client_send(test_failed_, &p, 70, 0));
			}
		}
		/* Our close_notify reaches the client; its close_notify ends
		 * the connection here. */
		CHECK_EQ(tls_conn_close_notify(p.sv), TLS_OK);
		to_client(&p);
		char buf[8];
		CHECK_EQ(SSL_read(p.cl, buf, sizeof(buf)), 0);
		CHECK_EQ(SSL_get_error(p.cl, 0), SSL_ERROR_ZERO_RETURN);
		SSL_shutdown(p.cl);
		to_server(&p, 0);
		CHECK_EQ(p.last_rc, TLS_CLOSED);
		if (*test_failed_ && !before)
			fprintf(stderr, "  ^ case %s\n", kc->cipher);
		free(id_copy);
		pair_free(&p);
		tls_server_unref(s);
	}
}

TEST(tls_shed_bad_records_end_the_connection)
{
	CHECK(pki_init());
	struct tls_listener_opts o = opts_ec(true);
	struct tls_server *s = server(&o);
	for (int mode = 0; mode < 5; mode++) {
		struct pair p;
		pair_init(&p, s, &(struct client_opts){.cert = "client",
						       .max_version = mode == 3 ? TLS1_2_VERSION : 0});
		CHECK(pump(&p, 0));
		tls_conn_shed(p.sv);
		if (mode == 4) {
			/* A KeyUpdate flood: the ninth in a second ends it. */
			int rc = TLS_WANT_MORE;
			size_t kw;
			for (int i = 0; i < 9 && rc != TLS_ERROR; i++) {
				CHECK_EQ(SSL_key_update(p.cl, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
				CHECK_EQ(SSL_write_ex(p.cl, "k", 1, &kw), 1);
				to_server(&p, 0);
				rc = p.last_rc;
			}
			CHECK_EQ(rc, TLS_ERROR);
			CHECK(strstr(tls_conn_error(p.sv), "key updates") != NULL);
			pair_free(&p);
			continue;
		}
		if (mode == 3) {
			/* TLS 1.2 renegotiation is declined with a warning, as
			 * OpenSSL does; OpenSSL's client then gives up with a
			 * fatal alert, which ends the connection here. */
			CHECK_EQ(SSL_renegotiate(p.cl), 1);
			SSL_do_handshake(p.cl);
			to_server(&p, 0);
			CHECK_EQ(p.last_rc, TLS_WANT_MORE);
			to_client(&p);
			char buf[8];
			CHECK(SSL_read(p.cl, buf, sizeof(buf)) < 0);
			CHECK_EQ(ERR_GET_REASON(ERR_peek_error()), SSL_R_NO_RENEGOTIATION);
			ERR_clear_error();
			to_server(&p, 0);
			CHECK_EQ(p.last_rc, TLS_ERROR);
			CHECK(tls_conn_error(p.sv) != NULL);
			pair_free(&p);
			continue;
		}
		uint8_t rec[64];
		size_t w;
		CHECK_EQ(SSL_write_ex(p.cl, "hello", 5, &w), 1);
		int n = BIO_read(p.c_out, rec, sizeof(rec));
		CHECK(n > 5);
		if (mode == 0)
			rec[n - 1] ^= 1; /* tag */
		else if (mode == 1)
			rec[3] = 0x50, rec[4] = 0; /* length past the maximum */
		else
			rec[0] = 20; /* a ChangeCipherSpec after the handshake */
		p.plain.len = 0;
		CHECK_EQ(tls_conn_feed(p.sv, rec, (size_t)n, &p.plain), TLS_ERROR);
		CHECK_EQ(p.plain.len, 0);
		CHECK(tls_conn_error(p.sv) != NULL);
		/* Stays failed. */
		CHECK_EQ(tls_conn_feed(p.sv, rec, (size_t)n, &p.plain), TLS_ERROR);
		pair_free(&p);
	}
	tls_server_unref(s);
}

/* ---- crafted TLS 1.3 records after the shed ---------------------------- */

/* The client's application traffic secret, from its keylog. */
static struct tls13_craft_secret crafted_secret;

static void crafted_keylog_cb(const SSL *ssl, const char *line)
{
	(void)ssl;
	tls13_craft_keylog(line, &crafted_secret);
}

/* A TLS 1.3 (TLS_AES_128_GCM_SHA256) pair whose server records left
 * OpenSSL, and the client's keys to seal what no stack would send. */
static bool crafted_pair(struct pair *p, struct tls_server *s,
			 struct tls13_craft_keys *cw)
{
	crafted_secret.len = 0;
	if (!pair_init(p, s, &(struct client_opts){.min_version = TLS1_3_VERSION,
						   .suites = "TLS_AES_128_GCM_SHA256",
						   .cert = "client"}))
		return false;
	SSL_CTX_set_keylog_callback(SSL_get_SSL_CTX(p->cl), crafted_keylog_cb);
	if (!pump(p, 0))
		return false;
	tls_conn_shed(p->sv);
	return tls13_craft_keys(&crafted_secret, cw);
}

static bool error_has(const struct tls_conn *c, const char *what)
{
	const char *e = tls_conn_error(c);
	return e && strstr(e, what);
}

/* The alert the client read from the server, 0 if none. */
static int client_alert(struct pair *p)
{
	char buf[8];
	to_client(p);
	ERR_clear_error();
	if (SSL_read(p->cl, buf, sizeof(buf)) > 0)
		return 0;
	int r = ERR_GET_REASON(ERR_peek_last_error());
	ERR_clear_error();
	return r > SSL_AD_REASON_OFFSET ? r - SSL_AD_REASON_OFFSET : 0;
}

TEST(tls_shed_refuses_crafted_tls13_records_with_the_right_alert)
{
	static const struct {
		const char *what;
		uint8_t inner[16];
		size_t n;
		int alert;
		const char *error;
	} cases[] = {
		{"all-zero inner plaintext", {0, 0, 0, 0}, 4,
		 SSL_AD_UNEXPECTED_MESSAGE, "no content type"},
		{"two KeyUpdates in one record", {24, 0, 0, 1, 0, 24, 0, 0, 1, 0, 22}, 11,
		 SSL_AD_UNEXPECTED_MESSAGE, "key update not at the end"},
		{"KeyUpdate, then a byte", {24, 0, 0, 1, 0, 0x42, 22}, 7,
		 SSL_AD_UNEXPECTED_MESSAGE, "key update not at the end"},
		{"empty handshake record", {22}, 1,
		 SSL_AD_UNEXPECTED_MESSAGE, "empty handshake record"},
		{"KeyUpdate request_update 2", {24, 0, 0, 1, 2, 22}, 6,
		 SSL_AD_ILLEGAL_PARAMETER, "request_update"},
		{"ChangeCipherSpec inside", {1, 20}, 2,
		 SSL_AD_UNEXPECTED_MESSAGE, "unexpected record type"},
		{"alert of level 3", {3, 90, 21}, 3,
		 SSL_AD_ILLEGAL_PARAMETER, "unknown level"},
	};
	CHECK(pki_init());
	struct tls_listener_opts o = opts_ec(true);
	struct tls_server *s = server(&o);
	uint8_t rec[64];
	struct tls13_craft_keys cw;
	/* A fatal user_canceled ends it, without an answer. */
	{
		struct pair p;
		CHECK(crafted_pair(&p, s, &cw));
		size_t n = tls13_craft_seal(&cw, (const uint8_t *)"\x02\x5a\x15", 3, rec);
		CHECK_EQ(tls_conn_feed(p.sv, rec, n, &p.plain), TLS_ERROR);
		CHECK(error_has(p.sv, "alert from the client"));
		pair_free(&p);
	}
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct pair p;
		int before = *test_failed_;
		CHECK(crafted_pair(&p, s, &cw));
		size_t n = tls13_craft_seal(&cw, cases[i].inner, cases[i].n, rec);
		CHECK_EQ(tls_conn_feed(p.sv, rec, n, &p.plain), TLS_ERROR);
		const char *err = tls_conn_error(p.sv);
		CHECK(err && strstr(err, cases[i].error));
		CHECK_EQ(client_alert(&p), cases[i].alert);
		if (*test_failed_ && !before)
			fprintf(stderr, "  ^ case %s: %s\n", cases[i].what, err ? err : "-");
		pair_free(&p);
	}

	/* Padding is stripped; an inner plaintext longer than 2^14 + 1 is
	 * record_overflow, before any decryption. */
	static uint8_t big[16384 + 256 + 5], inner[16386];
	struct pair p;
	CHECK(crafted_pair(&p, s, &cw));
	memset(inner, 0, sizeof(inner));
	memcpy(inner, "hi\x17", 3);
	size_t n = tls13_craft_seal(&cw, inner, 3 + 100, big);
	CHECK_EQ(tls_conn_feed(p.sv, big, n, &p.plain), TLS_OK);
	CHECK(p.plain.len == 2 && !memcmp(p.plain.data, "hi", 2));
	inner[sizeof(inner) - 1] = 23; /* 16385 bytes of data and the type */
	n = tls13_craft_seal(&cw, inner, sizeof(inner), big);
	CHECK_EQ(tls_conn_feed(p.sv, big, n, &p.plain), TLS_ERROR);
	CHECK(error_has(p.sv, "record too long"));
	CHECK_EQ(client_alert(&p), SSL_AD_RECORD_OVERFLOW);
	pair_free(&p);

	/* A header that cannot start a TLS 1.3 record ends the connection
	 * at once, before its body is waited for. */
	CHECK(crafted_pair(&p, s, &cw));
	CHECK_EQ(tls_conn_feed(p.sv, (const uint8_t *)"\x14\x03\x03\x00\x01", 5, &p.plain),
		 TLS_ERROR);
	CHECK(error_has(p.sv, "unexpected record type"));
	CHECK_EQ(client_alert(&p), SSL_AD_UNEXPECTED_MESSAGE);
	pair_free(&p);

	/* Empty records: 32 in a row are taken, data resets the count, the
	 * 33rd in a row ends it; so do 33 user_canceled alerts. */
	for (int alerts = 0; alerts < 2; alerts++) {
		static const uint8_t empty[] = {23}, cancel[] = {1, 90, 21};
		CHECK(crafted_pair(&p, s, &cw));
		int rc = TLS_WANT_MORE;
		for (int i = 0; i < 32 && rc == TLS_WANT_MORE; i++) {
			n = tls13_craft_seal(&cw, alerts ? cancel : empty, alerts ? 3 : 1, rec);
			rc = tls_conn_feed(p.sv, rec, n, &p.plain);
		}
		CHECK_EQ(rc, TLS_WANT_MORE);
		n = tls13_craft_seal(&cw, (const uint8_t *)"x\x17", 2, rec);
		CHECK_EQ(tls_conn_feed(p.sv, rec, n, &p.plain), TLS_OK);
		for (int i = 0; i < 33 && rc == TLS_WANT_MORE; i++) {
			n = tls13_craft_seal(&cw, alerts ? cancel : empty, alerts ? 3 : 1, rec);
			rc = tls_conn_feed(p.sv, rec, n, &p.plain);
		}
		CHECK_EQ(rc, TLS_ERROR);
		CHECK(error_has(p.sv, "without data"));
		CHECK_EQ(client_alert(&p), SSL_AD_UNEXPECTED_MESSAGE);
		pair_free(&p);
	}

	/* Our close_notify goes out once; nothing is sealed after it. */
	CHECK(crafted_pair(&p, s, &cw));
	CHECK_EQ(tls_conn_close_notify(p.sv), TLS_OK);
	CHECK_EQ(tls_conn_close_notify(p.sv), TLS_OK);
	CHECK_EQ(tls_conn_write(p.sv, (const uint8_t *)"late", 4), TLS_ERROR);
	const uint8_t *out;
	size_t pending = tls_conn_pending_out(p.sv, &out);
	CHECK_EQ(pending, 5 + 2 + 1 + 16); /* one alert record */
	pair_free(&p);
	tls_server_unref(s);
}

/* ---- session resumption ---------------------------------------------- */

/* A finished pair's session as the client keeps it: TLS 1.3 tickets
 * arrive after the handshake, with the first read. The client closes
 * with close_notify: OpenSSL spoils the session of an SSL freed without. */
static SSL_SESSION *pair_session(struct pair *p)
{
	char buf[8];

	to_client(p);
	SSL_read(p->cl, buf, sizeof(buf)); /* takes the ticket, no data */
	SSL_shutdown(p->cl);
	ERR_clear_error();
	return SSL_get1_session(p->cl);
}

static bool pair_resume(struct pair *p, struct tls_server *s, int v,
			SSL_SESSION *sess)
{
	pair_init(p, s, &(struct client_opts){.min_version = v, .max_version = v,
					      .cert = "client"});
	SSL_set_session(p->cl, sess);
	return pump(p, 0);
}

TEST(tls_resumed_session_keeps_identity_and_dies_with_a_reload)
{
	CHECK(pki_init());
	for (int v = TLS1_2_VERSION; v <= TLS1_3_VERSION; v++) {
		struct tls_listener_opts o = opts_ec(true);
		o.use_identity_as_username = true;
		struct tls_server *s = server(&o);
		struct pair p;

		pair_init(&p, s, &(struct client_opts){.min_version = v, .max_version = v,
						       .cert = "client"});
		CHECK(pump(&p, 0));
		CHECK(!tls_conn_resumed(p.sv));
		char *id = strdup(tls_conn_identity(p.sv) ? tls_conn_identity(p.sv) : "");
		CHECK(id[0]);
		SSL_SESSION *sess = pair_session(&p);
		CHECK(sess && SSL_SESSION_is_resumable(sess));
		/* The ticket leaves the client certificate out (the server
		 * re-reads it for nothing): it is smaller than the DER. */
		X509 *cc = SSL_get_certificate(p.cl);
		const unsigned char *tick = NULL;
		size_t tick_len = 0;
		SSL_SESSION_get0_ticket(sess, &tick, &tick_len);
		fprintf(stderr, "  ticket %zu bytes, client certificate %d\n", tick_len, i2d_X509(cc, NULL));
		CHECK(tick_len > 0 && tick_len < (size_t)i2d_X509(cc, NULL));
		pair_free(&p);

		/* Twice: a stateless ticket opens more than once. */
		for (int i = 0; i < 2; i++) {
			CHECK(pair_resume(&p, s, v, sess));
			CHECK(tls_conn_resumed(p.sv));
			CHECK(SSL_session_reused(p.cl));
			CHECK_STR(tls_conn_identity(p.sv), id);
			CHECK(client_send(&p, "resumed"));
			SSL_shutdown(p.cl);
			pair_free(&p);
		}

		/* A reload builds a new server: the ticket no longer opens,
		 * the client pays a full handshake (and its certificate is
		 * checked again). */
		struct tls_server *s2 = server(&o);
		CHECK(pair_resume(&p, s2, v, sess));
		CHECK(!tls_conn_resumed(p.sv));
		CHECK_STR(tls_conn_identity(p.sv), id);
		pair_free(&p);
		tls_server_unref(s2);

		/* kTLS after a resumed handshake: TLS 1.2's Finished is
		 * record 0; TLS 1.3 sends no new ticket for a ticket of this
		 * epoch, so nothing went out under the traffic key yet. */
		CHECK(pair_resume(&p, s, v, sess));
		struct tls_ktls_keys k;
		CHECK_EQ(tls_conn_export_ktls(p.sv, &k, 0), TLS_KTLS_OK);
		const uint8_t *rs = k.cipher_type == TLS_CIPHER_AES_GCM_128 ?
					    k.tx.aes_gcm_128.rec_seq :
				    k.cipher_type == TLS_CIPHER_AES_GCM_256 ?
					    k.tx.aes_gcm_256.rec_seq :
					    k.tx.chacha20_poly1305.rec_seq;
		uint64_t seq = 0;
		for (int b = 0; b < 8; b++)
			seq = seq << 8 | rs[b];
		CHECK_EQ(seq, v == TLS1_2_VERSION ? 1u : 0u);
		tls_ktls_keys_wipe(&k);
		pair_free(&p);

		SSL_SESSION_free(sess);
		free(id);
		tls_server_unref(s);
	}
}

TEST(tls_ticket_of_another_listener_gets_a_full_handshake)
{
	CHECK(pki_init());
	struct tls_listener_opts o = opts_ec(true);
	struct tls_server *a = server(&o), *b = server(&o);
	struct pair p;

	pair_init(&p, a, &(struct client_opts){.cert = "client"});
	CHECK(pump(&p, 0));
	SSL_SESSION *sess = pair_session(&p);
	pair_free(&p);
	CHECK(pair_resume(&p, b, 0, sess));
	CHECK(!tls_conn_resumed(p.sv));
	pair_free(&p);
	SSL_SESSION_free(sess);
	tls_server_unref(a);
	tls_server_unref(b);
}

/* ---- memory --------------------------------------------------------------- */

int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
	__attribute__((weak));
size_t __sanitizer_get_current_allocated_bytes(void) __attribute__((weak));

/* Bytes allocated by the process: jemalloc, ASan or glibc, whichever
 * owns malloc. */
static size_t heap_allocated(void)
{
	if (mallctl) {
		uint64_t epoch = 1;
		size_t allocated = 0, len = sizeof(allocated);

		mallctl("epoch", &epoch, &len, &epoch, sizeof(epoch));
		len = sizeof(allocated);
		if (mallctl("stats.allocated", &allocated, &len, NULL, 0) == 0)
			return allocated;
	}
	if (__sanitizer_get_current_allocated_bytes)
		return __sanitizer_get_current_allocated_bytes();
	return mallinfo2().uordblks;
}

TEST(tls_idle_conn_memory_after_handshake)
{
#ifdef KITE_SANITIZE
	enum { N = 200 };
#else
	enum { N = 1000 };
#endif
	static struct tls_conn *conns[N];
	CHECK(pki_init());

	for (int shed = 0; shed < 2; shed++)
	for (int v = TLS1_2_VERSION; v <= TLS1_3_VERSION; v++) {
		struct tls_listener_opts o = opts_ec(true);
		struct tls_server *s = server(&o);
		size_t before, after;

		o.use_identity_as_username = true;
		before = heap_allocated();
		for (int i = 0; i < N; i++) {
			struct pair p;

			pair_init(&p, s, &(struct client_opts){.min_version = v, .max_version = v,
							       .cert = "client"});
			CHECK(pump(&p, 0));
			if (shed)
				tls_conn_shed(p.sv);
			to_client(&p); /* the handshake's tail is sent */
			conns[i] = p.sv; /* keep the server side, idle */
			p.sv = NULL;
			pair_free(&p);
		}
		after = heap_allocated();
		fprintf(stderr, "  idle %s mTLS tls_conn after handshake%s: %zu bytes each "
				"(%d conns)\n",
			v == TLS1_3_VERSION ? "TLS 1.3" : "TLS 1.2",
			shed ? ", records out of OpenSSL" : "", (after - before) / N, N);
		/* In OpenSSL: its SSL alone is ~8.7 KB; with the session, the
		 * peer certificate and cipher contexts ~21 KB (buffers are
		 * released), a regression guard. Shed: two cipher contexts
		 * and the connection's identity, within the 8 KiB an idle
		 * userspace-TLS connection may cost in all. */
		CHECK((after - before) / N < (shed ? 4 * 1024 : 32 * 1024));
		for (int i = 0; i < N; i++)
			tls_conn_free(conns[i]);
		/* Nothing stays behind per connection (no session cache). */
		size_t freed = heap_allocated();

		CHECK(freed < before || (freed - before) / N < 256);
		tls_server_unref(s);
	}
}
