/* Password files in mosquitto_passwd's formats, and `kite passwd`.
 * Formats (Mosquitto 2.0 src/password_mosq.c, pw__hash/pw__digest):
 *   $6$SALT$HASH          HASH = SHA-512(password || salt)
 *   $7$ITER$SALT$HASH     HASH = PBKDF2-HMAC-SHA512(password, salt, ITER, 64)
 * SALT is 12 bytes, HASH 64 bytes, both standard base64 without newlines. */
#include "acl/acl.h"
#include "acl/acl_util.h"
#include "core/htab.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

enum pw_type { PW_SHA512 = 6, PW_SHA512_PBKDF2 = 7 };

struct pw_entry {
	char *username;
	struct htab_link link;
	uint8_t type;
	uint32_t iterations;
	uint8_t salt[PASSWD_SALT_LEN];
	uint8_t hash[PASSWD_HASH_LEN];
};

struct passwd_db {
	struct htab users; /* username -> entry */
};

/* ------------------------------------------------------------------ base64 */

static const char b64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Strict standard base64: exactly out_len bytes, padding as OpenSSL writes
 * it. Returns 0 on success. */
static int b64_decode_exact(const char *s, size_t len, uint8_t *out,
			    size_t out_len)
{
	if (len == 0 || len % 4 || len > 4 * ((PASSWD_HASH_LEN + 2) / 3))
		return -1;
	size_t pad = 0;
	while (pad < 2 && s[len - 1 - pad] == '=')
		pad++;
	for (size_t i = 0; i < len - pad; i++)
		if (!strchr(b64_alphabet, s[i]) || s[i] == '\0')
			return -1;
	if (len / 4 * 3 - pad != out_len)
		return -1;
	unsigned char tmp[4 * ((PASSWD_HASH_LEN + 2) / 3)];
	int n = EVP_DecodeBlock(tmp, (const unsigned char *)s, (int)len);
	if (n < 0 || (size_t)n != out_len + pad)
		return -1;
	memcpy(out, tmp, out_len);
	OPENSSL_cleanse(tmp, sizeof(tmp));
	return 0;
}

static void b64_encode(const uint8_t *in, size_t len, char *out)
{
	EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

/* ------------------------------------------------------------------ hashes */

static int pw_digest(uint8_t type, uint32_t iterations, const uint8_t *salt,
		     const uint8_t *password, size_t len,
		     uint8_t hash[PASSWD_HASH_LEN])
{
	static const uint8_t nothing[1];
	if (!password)
		password = nothing;
	if (type == PW_SHA512_PBKDF2) {
		if (len > INT_MAX || iterations > INT_MAX)
			return -1;
		return PKCS5_PBKDF2_HMAC((const char *)password, (int)len, salt,
					 PASSWD_SALT_LEN, (int)iterations,
					 EVP_sha512(), PASSWD_HASH_LEN,
					 hash) == 1
			       ? 0
			       : -1;
	}
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int hl = 0;
	int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha512(), NULL) == 1 &&
		 EVP_DigestUpdate(ctx, password, len) == 1 &&
		 EVP_DigestUpdate(ctx, salt, PASSWD_SALT_LEN) == 1 &&
		 EVP_DigestFinal_ex(ctx, hash, &hl) == 1 &&
		 hl == PASSWD_HASH_LEN;
	EVP_MD_CTX_free(ctx);
	return ok ? 0 : -1;
}

/* "$6$..." or "$7$..." for password with a fresh salt; out holds at least
 * PW_LINE_HASH_MAX bytes. */
#define PW_LINE_HASH_MAX 160
static int pw_hash_string(uint8_t type, uint32_t iterations,
			  const char *password, char *out)
{
	uint8_t salt[PASSWD_SALT_LEN], hash[PASSWD_HASH_LEN];
	char salt64[4 * ((PASSWD_SALT_LEN + 2) / 3) + 1];
	char hash64[4 * ((PASSWD_HASH_LEN + 2) / 3) + 1];
	if (RAND_bytes(salt, sizeof(salt)) != 1 ||
	    pw_digest(type, iterations, salt, (const uint8_t *)password,
		      strlen(password), hash))
		return -1;
	b64_encode(salt, sizeof(salt), salt64);
	b64_encode(hash, sizeof(hash), hash64);
	OPENSSL_cleanse(hash, sizeof(hash));
	if (type == PW_SHA512_PBKDF2)
		snprintf(out, PW_LINE_HASH_MAX, "$7$%u$%s$%s", iterations,
			 salt64, hash64);
	else
		snprintf(out, PW_LINE_HASH_MAX, "$6$%s$%s", salt64, hash64);
	return 0;
}

/* ------------------------------------------------------------------ the db */

static bool pw_eq_cb(const struct htab_link *l, const void *name, size_t len)
{
	const struct pw_entry *e = htab_entry(l, const struct pw_entry, link);
	return strlen(e->username) == len && !memcmp(e->username, name, len);
}

static struct pw_entry *db_find(const struct passwd_db *db, const char *name,
				size_t len)
{
	struct htab_link *l = htab_find(&db->users, hash_bytes(name, len), name,
					len, pw_eq_cb);
	return htab_entry(l, struct pw_entry, link);
}

static void pw_entry_free(struct pw_entry *e)
{
	free(e->username);
	OPENSSL_cleanse(e, sizeof(*e));
	free(e);
}

static void pw_entry_free_cb(struct htab_link *l)
{
	pw_entry_free(htab_entry(l, struct pw_entry, link));
}

void passwd_free(struct passwd_db *db)
{
	if (!db)
		return;
	htab_fini(&db->users, pw_entry_free_cb);
	free(db);
}

size_t passwd_count(const struct passwd_db *db)
{
	return db->users.count;
}

struct pw_parse {
	const char *name;
	size_t line;
	char *err;
	size_t errlen;
};

static int pw_fail(struct pw_parse *ps, const char *fmt, ...)
{
	int n = snprintf(ps->err, ps->errlen, "%s:%zu: ", ps->name, ps->line);
	if (n >= 0 && (size_t)n < ps->errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static void trim(const char **s, const char **e)
{
	while (*s < *e && isspace((unsigned char)**s))
		(*s)++;
	while (*e > *s && isspace((unsigned char)(*e)[-1]))
		(*e)--;
}

/* Parse "$6$salt$hash" / "$7$iter$salt$hash" in [s, e) into ent. */
static int parse_hash(struct pw_parse *ps, const char *s, const char *e,
		      struct pw_entry *ent)
{
	const char *f[4];
	size_t fl[4], nf = 0;
	if (e - s < 3 || s[0] != '$' || s[2] != '$' || (s[1] != '6' && s[1] != '7'))
		return pw_fail(ps, "unknown password hash type (expected $6$ "
				   "or $7$; plain text? run `kite passwd -U`)");
	ent->type = (uint8_t)(s[1] - '0');
	for (const char *p = s + 3; nf < 4;) {
		const char *d = memchr(p, '$', (size_t)(e - p));
		f[nf] = p;
		fl[nf++] = (size_t)((d ? d : e) - p);
		if (!d)
			break;
		p = d + 1;
	}
	size_t want = ent->type == PW_SHA512_PBKDF2 ? 3 : 2;
	if (nf != want || f[nf - 1] + fl[nf - 1] != e)
		return pw_fail(ps, "malformed $%c$ password hash", s[1]);
	size_t k = 0;
	ent->iterations = 0;
	if (ent->type == PW_SHA512_PBKDF2) {
		uint64_t it = 0;
		if (fl[0] == 0 || fl[0] > 9)
			return pw_fail(ps, "invalid hash iterations");
		for (size_t i = 0; i < fl[0]; i++) {
			if (!isdigit((unsigned char)f[0][i]))
				return pw_fail(ps, "invalid hash iterations");
			it = it * 10 + (uint64_t)(f[0][i] - '0');
		}
		if (it < 1 || it > PASSWD_ITERATIONS_MAX)
			return pw_fail(ps, "hash iterations out of range 1..%d",
				       PASSWD_ITERATIONS_MAX);
		ent->iterations = (uint32_t)it;
		k = 1;
	}
	if (b64_decode_exact(f[k], fl[k], ent->salt, PASSWD_SALT_LEN))
		return pw_fail(ps, "invalid password salt (12 bytes, base64)");
	if (b64_decode_exact(f[k + 1], fl[k + 1], ent->hash, PASSWD_HASH_LEN))
		return pw_fail(ps, "invalid password hash (64 bytes, base64)");
	return 0;
}

static int parse_pw_line(struct pw_parse *ps, struct passwd_db *db,
			 const char *s, const char *e)
{
	trim(&s, &e);
	if (s == e || s[0] == '#')
		return 0;
	if (memchr(s, '\0', (size_t)(e - s)))
		return pw_fail(ps, "NUL byte in line");
	const char *colon = memchr(s, ':', (size_t)(e - s));
	if (!colon)
		return pw_fail(ps, "expected USER:HASH");
	const char *us = s, *ue = colon, *hs = colon + 1, *he = e;
	trim(&us, &ue);
	trim(&hs, &he);
	if (us == ue)
		return pw_fail(ps, "empty username");
	if (ue - us > ACL_STRING_MAX)
		return pw_fail(ps, "username too long");
	if (hs == he)
		return pw_fail(ps, "missing password hash");
	if (db_find(db, us, (size_t)(ue - us)))
		return pw_fail(ps, "duplicate user \"%.*s\"", (int)(ue - us), us);
	struct pw_entry *ent = calloc(1, sizeof(*ent));
	if (!ent)
		return pw_fail(ps, "out of memory");
	if (parse_hash(ps, hs, he, ent))
		goto fail_ent;
	ent->username = strndup(us, (size_t)(ue - us));
	if (!ent->username ||
	    htab_insert(&db->users, &ent->link,
			hash_bytes(us, (size_t)(ue - us))) < 0) {
		pw_fail(ps, "out of memory");
		goto fail_ent;
	}
	return 0;
fail_ent:
	pw_entry_free(ent);
	return -1;
}

static struct passwd_db *pw_parse_text(const char *name, const char *text,
				       size_t len, char *err, size_t errlen)
{
	struct pw_parse ps = {.name = name, .err = err, .errlen = errlen};
	struct passwd_db *db = calloc(1, sizeof(*db));
	if (!db) {
		snprintf(err, errlen, "%s: out of memory", name);
		return NULL;
	}
	const char *p = text, *end = text + len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		ps.line++;
		if (le - p > ACL_LINE_MAX) {
			pw_fail(&ps, "line too long");
			goto fail;
		}
		if (parse_pw_line(&ps, db, p, le))
			goto fail;
		p = nl ? nl + 1 : end;
	}
	if (err && errlen)
		err[0] = '\0';
	return db;
fail:
	passwd_free(db);
	return NULL;
}

struct passwd_db *passwd_load_string(const char *name, const char *text,
				     char *err, size_t errlen)
{
	return pw_parse_text(name, text, strlen(text), err, errlen);
}

struct passwd_db *passwd_load(const char *path, char *err, size_t errlen)
{
	size_t len;
	char *text = acl_read_file(path, ACL_FILE_MAX, &len, err, errlen);
	if (!text)
		return NULL;
	struct passwd_db *db = pw_parse_text(path, text, len, err, errlen);
	OPENSSL_cleanse(text, len);
	free(text);
	return db;
}

enum passwd_result passwd_check(const struct passwd_db *db,
				const char *username, const uint8_t *password,
				size_t len)
{
	assert(db);
	/* An unknown user pays for a default hash too. */
	static const struct pw_entry dummy = {
		.type = PW_SHA512_PBKDF2,
		.iterations = PASSWD_ITERATIONS_DEFAULT,
	};
	const struct pw_entry *e =
		username ? db_find(db, username, strlen(username)) : NULL;
	uint8_t hash[PASSWD_HASH_LEN];
	const struct pw_entry *use = e ? e : &dummy;
	int rc = pw_digest(use->type, use->iterations, use->salt, password,
			   password ? len : 0, hash);
	bool same = rc == 0 && CRYPTO_memcmp(hash, use->hash, sizeof(hash)) == 0;
	OPENSSL_cleanse(hash, sizeof(hash));
	if (!e)
		return PASSWD_NO_SUCH_USER;
	/* An empty password never logs in, whatever the file holds: Mosquitto
	 * reads a zero-length password as none (its 09-pwfile-parse-invalid
	 * checks that a hash of "" does not let "" in). */
	return same && password && len ? PASSWD_OK : PASSWD_BAD_PASSWORD;
}

/* ------------------------------------------------------------ kite passwd */

#define PW_INPUT_MAX 65536

struct pw_opts {
	bool batch, create, del, update;
	uint8_t type;
	uint32_t iterations;
	const char *file, *user, *password;
};

static void pw_usage(void)
{
	printf("kite passwd manages password files (mosquitto_passwd "
	       "compatible).\n\n"
	       "Usage: kite passwd [-H sha512 | -H sha512-pbkdf2] [-I ITER] "
	       "[-c | -D] passwordfile username\n"
	       "       kite passwd [-H sha512 | -H sha512-pbkdf2] [-I ITER] [-c] "
	       "-b passwordfile username password\n"
	       "       kite passwd -U passwordfile\n"
	       " -b : batch mode: the password is on the command line.\n"
	       " -c : create a new password file, overwriting it.\n"
	       " -D : delete the username.\n"
	       " -H : hash: sha512-pbkdf2 (default, $7$) or sha512 ($6$).\n"
	       " -I : PBKDF2 iterations (default %d).\n"
	       " -U : hash the plain-text passwords of a file.\n",
	       PASSWD_ITERATIONS_DEFAULT);
}

static int pw_parse_args(int argc, char **argv, struct pw_opts *o)
{
	int i = 1;
	o->type = PW_SHA512_PBKDF2;
	o->iterations = PASSWD_ITERATIONS_DEFAULT;
	for (; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-H") || !strcmp(a, "-I")) {
			if (i + 1 == argc) {
				fprintf(stderr, "Error: %s argument given but "
						"not enough other arguments.\n",
					a);
				return -1;
			}
			const char *v = argv[++i];
			if (a[1] == 'I') {
				char *end;
				long n = strtol(v, &end, 10);
				if (*end || n < 1 || n > PASSWD_ITERATIONS_MAX) {
					fprintf(stderr, "Error: Number of "
							"iterations must be "
							"1..%d.\n",
						PASSWD_ITERATIONS_MAX);
					return -1;
				}
				o->iterations = (uint32_t)n;
			} else if (!strcmp(v, "sha512")) {
				o->type = PW_SHA512;
			} else if (!strcmp(v, "sha512-pbkdf2")) {
				o->type = PW_SHA512_PBKDF2;
			} else {
				fprintf(stderr, "Error: Unknown hash type '%s'\n", v);
				return -1;
			}
		} else if (!strcmp(a, "-b")) {
			o->batch = true;
		} else if (!strcmp(a, "-c")) {
			o->create = true;
		} else if (!strcmp(a, "-D")) {
			o->del = true;
		} else if (!strcmp(a, "-U")) {
			o->update = true;
		} else {
			break;
		}
	}
	if ((o->create && o->del) || (o->create && o->update) ||
	    (o->del && o->update) || (o->del && o->batch) ||
	    (o->update && o->batch)) {
		fprintf(stderr, "Error: -c, -D, -U and -b (with -D or -U) "
				"cannot be used together.\n");
		return -1;
	}
	int left = argc - i;
	int want = o->update ? 1 : o->batch ? 3 : 2;
	if (left != want) {
		pw_usage();
		return -1;
	}
	o->file = argv[i];
	o->user = want > 1 ? argv[i + 1] : NULL;
	o->password = want > 2 ? argv[i + 2] : NULL;
	return 0;
}

static bool pw_username_valid(const char *u)
{
	size_t n = strlen(u);
	if (n == 0 || n > ACL_STRING_MAX) {
		fprintf(stderr, "Error: Username must be 1..65535 characters.\n");
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		if (iscntrl((unsigned char)u[i])) {
			fprintf(stderr, "Error: Username must not contain "
					"control characters.\n");
			return false;
		}
	}
	if (strchr(u, ':')) {
		fprintf(stderr, "Error: Username must not contain the ':' "
				"character.\n");
		return false;
	}
	return true;
}

/* One line of input, newline stripped. Echo is off when in is a terminal. */
static int pw_read_line(FILE *in, const char *prompt, char *buf, size_t size)
{
	struct termios old, quiet;
	bool tty = isatty(fileno(in)) && tcgetattr(fileno(in), &old) == 0;
	printf("%s", prompt);
	fflush(stdout);
	if (tty) {
		quiet = old;
		quiet.c_lflag &= (tcflag_t)~ECHO;
		quiet.c_lflag |= ECHONL;
		tcsetattr(fileno(in), TCSAFLUSH, &quiet);
	}
	char *got = fgets(buf, (int)size, in);
	if (tty)
		tcsetattr(fileno(in), TCSAFLUSH, &old);
	else
		printf("\n");
	if (!got)
		return -1;
	buf[strcspn(buf, "\r\n")] = '\0';
	return 0;
}

static int pw_prompt(char *pw, size_t size)
{
	char again[PW_INPUT_MAX];
	int rc = -1;
	if (pw_read_line(stdin, "Password: ", pw, size) ||
	    pw_read_line(stdin, "Reenter password: ", again, sizeof(again))) {
		fprintf(stderr, "Error: No password given.\n");
	} else if (strcmp(pw, again)) {
		fprintf(stderr, "Error: Passwords do not match.\n");
	} else if (!pw[0]) {
		fprintf(stderr, "Error: Empty password.\n");
	} else {
		rc = 0;
	}
	OPENSSL_cleanse(again, sizeof(again));
	return rc;
}

/* Growing output buffer. */
struct pw_out {
	char *p;
	size_t len, cap;
	bool oom;
};

static void out_add(struct pw_out *o, const char *s, size_t n)
{
	if (o->oom)
		return;
	if (o->len + n + 1 > o->cap) {
		size_t cap = (o->len + n + 1) * 2;
		char *p = realloc(o->p, cap);
		if (!p) {
			o->oom = true;
			return;
		}
		o->p = p;
		o->cap = cap;
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

static int out_user_line(struct pw_out *o, const struct pw_opts *opt,
			 const char *user, const char *password)
{
	char h[PW_LINE_HASH_MAX];
	if (pw_hash_string(opt->type, opt->iterations, password, h)) {
		fprintf(stderr, "Error: Unable to hash password.\n");
		return -1;
	}
	out_add(o, user, strlen(user));
	out_add(o, ":", 1);
	out_add(o, h, strlen(h));
	out_add(o, "\n", 1);
	return 0;
}

/* Rewrite the lines of an existing file into o. Comments and blank lines
 * are kept; a line without ':' is corrupt (as in mosquitto_passwd). */
static int pw_rewrite(const struct pw_opts *opt, const char *text,
		      struct pw_out *o, bool *found)
{
	size_t line = 0;
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		const char *le = nl ? nl : p + strlen(p);
		const char *s = p, *e = le;
		line++;
		p = nl ? nl + 1 : le;
		trim(&s, &e);
		if (s == e || s[0] == '#') {
			out_add(o, s, (size_t)(e - s));
			out_add(o, "\n", 1);
			continue;
		}
		const char *colon = memchr(s, ':', (size_t)(e - s));
		const char *us = s, *ue = colon, *hs = colon + 1, *he = e;
		if (colon) {
			trim(&us, &ue);
			trim(&hs, &he);
		}
		if (!colon || us == ue || hs == he) {
			fprintf(stderr, "Error: Corrupt password file at line "
					"%zu.\n",
				line);
			return -1;
		}
		bool match = opt->user && (size_t)(ue - us) == strlen(opt->user) &&
			     !memcmp(us, opt->user, (size_t)(ue - us));
		if (match)
			*found = true;
		if (match && opt->del)
			continue;
		if (match) {
			if (out_user_line(o, opt, opt->user, opt->password))
				return -1;
			continue;
		}
		bool hashed = he - hs > 3 && hs[0] == '$' && hs[2] == '$' &&
			      (hs[1] == '6' || hs[1] == '7');
		if (opt->update && !hashed) {
			char *u = strndup(us, (size_t)(ue - us));
			char *pw = strndup(hs, (size_t)(he - hs));
			int rc = u && pw ? out_user_line(o, opt, u, pw) : -1;
			if (pw)
				OPENSSL_cleanse(pw, strlen(pw));
			free(u);
			free(pw);
			if (rc)
				return -1;
			continue;
		}
		out_add(o, s, (size_t)(e - s));
		out_add(o, "\n", 1);
	}
	return 0;
}

/* Write data to path atomically, mode 0600. */
static int pw_write_file(const char *path, const char *data, size_t len)
{
	size_t pl = strlen(path);
	char *tmp = malloc(pl + sizeof(".tmp.XXXXXX"));
	if (!tmp)
		return -1;
	memcpy(tmp, path, pl);
	memcpy(tmp + pl, ".tmp.XXXXXX", sizeof(".tmp.XXXXXX"));
	int fd = mkstemp(tmp); /* mode 0600 */
	if (fd < 0) {
		fprintf(stderr, "Error: Unable to open file %s for writing. "
				"%s.\n",
			path, strerror(errno));
		free(tmp);
		return -1;
	}
	size_t off = 0;
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			goto fail;
		off += (size_t)n;
	}
	if (fchmod(fd, 0600) || fsync(fd))
		goto fail;
	if (close(fd)) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	if (rename(tmp, path))
		goto fail;
	free(tmp);
	return 0;
fail:
	fprintf(stderr, "Error: Unable to write %s. %s.\n", path,
		strerror(errno));
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	free(tmp);
	return -1;
}

static int pw_run(struct pw_opts *opt)
{
	char *text = NULL;
	struct pw_out o = {0};
	bool found = false;
	int rc = 1;
	if (!opt->create) {
		char err[512];
		size_t len;
		text = acl_read_file(opt->file, ACL_FILE_MAX, &len, err,
				     sizeof(err));
		if (!text) {
			fprintf(stderr, "Error: Unable to open password file "
					"%s\n",
				err);
			return 1;
		}
		if (strlen(text) != len) {
			fprintf(stderr, "Error: NUL byte in %s.\n", opt->file);
			goto out;
		}
		if (pw_rewrite(opt, text, &o, &found))
			goto out;
	}
	if (opt->del && !found) {
		fprintf(stderr, "Warning: User %s not found in password file.\n",
			opt->user);
		goto out;
	}
	if (opt->user && !opt->del && !found &&
	    out_user_line(&o, opt, opt->user, opt->password))
		goto out;
	if (o.oom) {
		fprintf(stderr, "Error: Out of memory.\n");
		goto out;
	}
	rc = pw_write_file(opt->file, o.p ? o.p : "", o.len) ? 1 : 0;
out:
	if (text) {
		OPENSSL_cleanse(text, strlen(text));
		free(text);
	}
	if (o.p) {
		OPENSSL_cleanse(o.p, o.len);
		free(o.p);
	}
	return rc;
}

int passwd_main(int argc, char **argv)
{
	struct pw_opts opt = {0};
	char pw[PW_INPUT_MAX];
	if (argc <= 1) {
		pw_usage();
		return 1;
	}
	if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		pw_usage();
		return 0;
	}
	if (pw_parse_args(argc, argv, &opt))
		return 1;
	if (opt.user && !pw_username_valid(opt.user))
		return 1;
	if (opt.password && strlen(opt.password) > ACL_STRING_MAX) {
		fprintf(stderr, "Error: Password must be less than 65536 "
				"characters long.\n");
		return 1;
	}
	if (opt.user && !opt.del && !opt.batch) {
		if (pw_prompt(pw, sizeof(pw)))
			return 1;
		opt.password = pw;
	}
	int rc = pw_run(&opt);
	OPENSSL_cleanse(pw, sizeof(pw));
	return rc;
}
