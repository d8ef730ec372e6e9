/* Who may connect and what they may touch: the password and ACL files of
 * each listener, loaded once per path into a snapshot that a SIGHUP
 * replaces whole. Sessions re-fetch their compiled identity from the new
 * snapshot the first time they are checked after a swap, so connected
 * clients are held to the new rules from then on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl/acl.h"
#include "core/log.h"
#include "io/msg.h"
#include "io/security.h"

static _Atomic uint32_t security_gen;

static void *security_find(struct security *sec, unsigned upto,
			   const struct kite_config *cfg, bool acl,
			   const char *path)
{
	for (unsigned i = 0; i < upto; i++) {
		const char *p = acl ? cfg->listeners[i].acl_file
				    : cfg->listeners[i].password_file;
		if (!strcmp(p, path))
			return acl ? (void *)sec->acl[i] : (void *)sec->pw[i];
	}
	return NULL;
}

static const char *opt_or_null(const char *s)
{
	return s[0] ? s : NULL;
}

/* The listener's TLS context from Mosquitto's options; errors name the
 * listener and the file. */
static int security_load_tls(struct security *sec, unsigned i,
			     const struct kite_listener_cfg *l, char *err,
			     size_t errlen)
{
	const struct kite_tls_cfg *t = &l->tls;
	if (!config_listener_tls(l))
		return 0;
	struct tls_listener_opts o = {
		.cafile = opt_or_null(t->cafile),
		.capath = opt_or_null(t->capath),
		.certfile = opt_or_null(t->certfile),
		.keyfile = opt_or_null(t->keyfile),
		.psk_hint = opt_or_null(l->psk_hint),
		.psk_file = opt_or_null(l->sec.psk_file),
		.crlfile = opt_or_null(t->crlfile),
		.dhparamfile = opt_or_null(t->dhparamfile),
		.ciphers = opt_or_null(t->ciphers),
		.ciphers_tls13 = opt_or_null(t->ciphers_tls13),
		.tls_version = opt_or_null(t->tls_version),
		.require_certificate = t->require_certificate,
		.use_identity_as_username = t->use_identity_as_username,
		.use_subject_as_username = t->use_subject_as_username,
	};
	char why[KITE_CONFIG_ERR_MAX];
	sec->tls[i] = tls_server_new(&o, why, sizeof(why));
	if (!sec->tls[i]) {
		snprintf(err, errlen, "%s:%d: listener on port %u: %s", l->file,
			 l->line, (unsigned)l->port, why);
		return -1;
	}
	return 0;
}

static int security_load_listener(struct security *sec, unsigned i,
				  const struct kite_config *cfg, char *err,
				  size_t errlen)
{
	const struct kite_listener_cfg *l = &cfg->listeners[i];
	if (security_load_tls(sec, i, l, err, errlen) < 0)
		return -1;
	if (l->acl_file[0]) {
		struct acl_cache *c = security_find(sec, i, cfg, true, l->acl_file);
		if (!c) {
			struct acl_rules *r = acl_load(l->acl_file, err, errlen);
			if (!r)
				return -1;
			c = acl_cache_new(r);
			acl_rules_unref(r);
			if (!c) {
				snprintf(err, errlen, "%s: out of memory", l->acl_file);
				return -1;
			}
		} else {
			sec->acl_shared[i] = true;
		}
		sec->acl[i] = c;
	}
	if (l->password_file[0]) {
		struct passwd_db *p = security_find(sec, i, cfg, false,
						    l->password_file);
		if (p)
			sec->pw_shared[i] = true;
		else if (!(p = passwd_load(l->password_file, err, errlen)))
			return -1;
		sec->pw[i] = p;
	}
	return 0;
}

struct security *security_load(const struct kite_config *cfg, char *err,
			       size_t errlen)
{
	struct security *sec = calloc(1, sizeof(*sec));
	if (!sec) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	sec->count = cfg->listener_count;
	sec->gen = atomic_fetch_add(&security_gen, 1) + 1;
	for (unsigned i = 0; i < cfg->listener_count; i++) {
		if (security_load_listener(sec, i, cfg, err, errlen) < 0) {
			security_free(sec);
			return NULL;
		}
	}
	return sec;
}

void security_free(struct security *sec)
{
	if (!sec)
		return;
	for (unsigned i = 0; i < sec->count; i++) {
		if (sec->acl[i] && !sec->acl_shared[i])
			acl_cache_unref(sec->acl[i]);
		if (sec->pw[i] && !sec->pw_shared[i])
			passwd_free(sec->pw[i]);
		tls_server_unref(sec->tls[i]);
	}
	free(sec);
}

/* Topics no client may publish to, whatever its ACL says (Mosquitto's
 * acl__check_dollar): $SYS is the broker's (but for a bridge's state
 * topic), and $share names subscriptions, never messages. */
bool security_publish_reserved(const char *topic, size_t len)
{
	if (len >= 6 && !memcmp(topic, "$share", 6))
		return true;
	if (len < 4 || memcmp(topic, "$SYS", 4))
		return false;
	/* $SYS/broker/connection/+/state */
	static const char pre[] = "$SYS/broker/connection/", post[] = "/state";
	size_t np = sizeof(pre) - 1, nq = sizeof(post) - 1;
	if (len <= np + nq || memcmp(topic, pre, np) ||
	    memcmp(topic + len - nq, post, nq))
		return true;
	const char *name = topic + np;
	size_t nlen = len - np - nq;
	return memchr(name, '/', nlen) != NULL;
}

bool security_source_may_write(struct shard *s, const struct msg *m)
{
	const struct msg_source *src = m->source;
	const struct security *sec = s->sec;
	if (!src || src->listener >= sec->count || !sec->acl[src->listener])
		return true;
	struct acl_identity *id = acl_cache_get(sec->acl[src->listener],
						src->username, src->client_id);
	bool ok = id && acl_check(id, msg_topic(m), m->topic_len, ACL_WRITE);
	if (id)
		acl_identity_unref(id);
	return ok;
}

enum passwd_result security_check_password(const struct conn *c,
					   const char *username,
					   const uint8_t *pw, size_t len)
{
	const struct security *sec = c->shard->sec;
	struct passwd_db *db = c->listener < sec->count ? sec->pw[c->listener]
							: NULL;
	if (!db)
		return PASSWD_OK; /* no password file: the username is enough */
	return passwd_check(db, username, pw, len);
}

bool security_has_passwords(const struct conn *c)
{
	const struct security *sec = c->shard->sec;
	return c->listener < sec->count && sec->pw[c->listener];
}
