/* The security snapshot (io/security.c): per listener the TLS server
 * context, password file and ACL cache of one config generation. */
#ifndef KITE_IO_SECURITY_H
#define KITE_IO_SECURITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "acl/acl.h"
#include "core/config.h"
#include "io/conn-t.h"
#include "io/security-t.h"
#include "io/shard-t.h"

struct msg;

struct security *security_load(const struct kite_config *cfg, char *err,
			       size_t errlen);
void security_free(struct security *sec);
/* check_retain_source: whether the publisher of a retained message may
 * still write its topic under the current ACL (Mosquitto's check at
 * retained delivery). True without a recorded source or ACL file. */
bool security_source_may_write(struct shard *s, const struct msg *m);
/* $SYS/... and $share/...: never published by a client. */
bool security_publish_reserved(const char *topic, size_t len);
/* Whether c's listener has a password file (only it can vouch for a
 * username). */
bool security_has_passwords(const struct conn *c);
enum passwd_result security_check_password(const struct conn *c,
					   const char *username,
					   const uint8_t *pw, size_t len);

#endif
