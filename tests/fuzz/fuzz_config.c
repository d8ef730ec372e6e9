/* libFuzzer target: arbitrary text through config_load_string() and
 * config_finalize(). Must never crash, leak or trip a sanitizer, and every
 * outcome must be well formed: an error is one NUL-terminated
 * "NAME:LINE: ..." or "NAME: ..." message, a success a usable config. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Config files are small; bigger inputs only slow the fuzzer down. */
#define FUZZ_INPUT_MAX (64 * 1024)

static void check_error(const char *err)
{
	size_t len = strnlen(err, KITE_CONFIG_ERR_MAX);
	if (len == 0 || len >= KITE_CONFIG_ERR_MAX || !strstr(err, ": "))
		__builtin_trap();
}

static void check_config(const struct kite_config *cfg)
{
	if (cfg->listener_count < 1 || cfg->listener_count > KITE_LISTENERS_MAX)
		__builtin_trap();
	if (cfg->local_only && cfg->listener_count != 1)
		__builtin_trap();
	for (unsigned i = 0; i < cfg->listener_count; i++) {
		const struct kite_listener_cfg *l = &cfg->listeners[i];
		if (l->port == 0 || (l->allow_anonymous != 0 &&
				     l->allow_anonymous != 1))
			__builtin_trap();
		if (l->max_connections < -1 ||
		    strnlen(l->bind_address, KITE_HOST_MAX) == KITE_HOST_MAX)
			__builtin_trap();
	}
	if (cfg->shards > KITE_SHARDS_MAX || cfg->max_keepalive_s > 65535 ||
	    strnlen(cfg->log_file, KITE_PATH_MAX) == KITE_PATH_MAX ||
	    strnlen(cfg->pid_file, KITE_PATH_MAX) == KITE_PATH_MAX)
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct kite_config cfg; /* ~45 KB */
	char err[KITE_CONFIG_ERR_MAX];
	if (size > FUZZ_INPUT_MAX)
		return 0;
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0'; /* an embedded NUL just ends the text early */

	config_defaults(&cfg);
	int rc = config_load_string(&cfg, "fuzz.conf", text, err, sizeof(err));
	if (rc == 0)
		rc = config_finalize(&cfg, err, sizeof(err));
	if (rc == 0)
		check_config(&cfg);
	else if (rc == -1)
		check_error(err);
	else
		__builtin_trap();
	free(text);
	return 0;
}
