/* Config parser (Mosquitto 2.0.11 semantics) and broker log. */
#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"

/* ---- helpers ----------------------------------------------------------- */

static struct kite_config cfg_g; /* ~45 KB: keep it off the stack */
static char err_g[KITE_CONFIG_ERR_MAX];

/* Parses text as "t.conf" into cfg_g and finalizes it; returns the error
 * message, "" on success. */
static const char *load_err(const char *text)
{
	config_defaults(&cfg_g);
	if (config_load_string(&cfg_g, "t.conf", text, err_g, sizeof(err_g)) <
	    0)
		return err_g;
	if (config_finalize(&cfg_g, err_g, sizeof(err_g)) < 0)
		return err_g;
	return "";
}

/* Same, without finalizing. */
static const char *parse_err(const char *text)
{
	config_defaults(&cfg_g);
	if (config_load_string(&cfg_g, "t.conf", text, err_g, sizeof(err_g)) <
	    0)
		return err_g;
	return "";
}

static const char *load_file_err(const char *path)
{
	config_defaults(&cfg_g);
	if (config_load(&cfg_g, path, err_g, sizeof(err_g)) < 0)
		return err_g;
	if (config_finalize(&cfg_g, err_g, sizeof(err_g)) < 0)
		return err_g;
	return "";
}

static char *tmpdir_make(char buf[64])
{
	snprintf(buf, 64, "/tmp/kite-config-XXXXXX");
	return mkdtemp(buf);
}

static int remove_cb(const char *path, const struct stat *sb, int flag,
		     struct FTW *ftw)
{
	return remove(path);
}

static void tmpdir_remove(const char *dir)
{
	nftw(dir, remove_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Writes text to dir/name; returns the path (static buffer). */
static const char *write_file(const char *dir, const char *name,
			      const char *text)
{
	static char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	if (f) {
		fputs(text, f);
		fclose(f);
	}
	return path;
}

/* Whole file into a static buffer ("" if unreadable). */
static const char *slurp(const char *path)
{
	static char buf[256 * 1024];
	size_t len = 0;
	int fd = open(path, O_RDONLY);
	if (fd >= 0) {
		ssize_t n;
		while (len < sizeof(buf) - 1 &&
		       (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
			len += (size_t)n;
		close(fd);
	}
	buf[len] = '\0';
	return buf;
}

/* ---- defaults and local-only mode -------------------------------------- */

TEST(config_defaults_match_mosquitto_2)
{
	config_defaults(&cfg_g);
	CHECK_EQ(cfg_g.listener_count, 0);
	CHECK(!cfg_g.per_listener_settings);
	CHECK_EQ(cfg_g.allow_anonymous, -1);
	CHECK_EQ(cfg_g.max_keepalive_s, 65535);
	CHECK_EQ(cfg_g.max_packet_size, 0);
	CHECK_EQ(cfg_g.message_size_limit, 0);
	CHECK_EQ(cfg_g.max_inflight_messages, 20);
	CHECK_EQ(cfg_g.max_queued_messages, 1000);
	CHECK(cfg_g.retain_available);
	CHECK(cfg_g.connection_messages);
	CHECK_EQ(cfg_g.sys_interval_s, 10);
	CHECK_EQ(cfg_g.log_dest, KITE_LOGDEST_STDERR);
	CHECK_EQ(cfg_g.log_type, KITE_LOG_ERR | KITE_LOG_WARNING |
					 KITE_LOG_NOTICE | KITE_LOG_INFO);
	CHECK_STR(cfg_g.log_file, "");
	CHECK_STR(cfg_g.pid_file, "");
	CHECK_EQ(cfg_g.shards, 0);
	CHECK(!cfg_g.local_only);
}

TEST(config_without_listener_is_local_only_with_anonymous)
{
	const char *texts[] = {"", "# only a comment\n\n", "sys_interval 5\n",
			       "max_connections 5\n", "allow_anonymous false\n"};
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		CHECK_STR(load_err(texts[i]), "");
		CHECK(cfg_g.local_only);
		CHECK_EQ(cfg_g.listener_count, 1);
		CHECK_STR(cfg_g.listeners[0].bind_address, "127.0.0.1");
		CHECK_EQ(cfg_g.listeners[0].port, 1883);
		CHECK_EQ(cfg_g.listeners[0].max_connections, -1);
		CHECK_EQ(cfg_g.listeners[0].allow_anonymous, 1);
		CHECK_EQ(cfg_g.allow_anonymous, 1);
	}
}

TEST(config_finalize_twice_is_harmless)
{
	CHECK_STR(load_err(""), "");
	CHECK_EQ(config_finalize(&cfg_g, err_g, sizeof(err_g)), 0);
	CHECK(cfg_g.local_only);
	CHECK_EQ(cfg_g.listener_count, 1);
}

/* ---- listeners --------------------------------------------------------- */

TEST(config_listener_records_port_address_and_location)
{
	CHECK_STR(load_err("\nlistener 1883\nlistener 8883 0.0.0.0\n"
			   "listener 1884 ::1\n"),
		  "");
	CHECK(!cfg_g.local_only);
	CHECK_EQ(cfg_g.listener_count, 3);
	CHECK_EQ(cfg_g.listeners[0].port, 1883);
	CHECK_STR(cfg_g.listeners[0].bind_address, "");
	CHECK_STR(cfg_g.listeners[0].file, "t.conf");
	CHECK_EQ(cfg_g.listeners[0].line, 2);
	CHECK_EQ(cfg_g.listeners[1].port, 8883);
	CHECK_STR(cfg_g.listeners[1].bind_address, "0.0.0.0");
	CHECK_EQ(cfg_g.listeners[1].line, 3);
	CHECK_STR(cfg_g.listeners[2].bind_address, "::1");
	CHECK_EQ(cfg_g.listeners[2].max_connections, -1);
}

TEST(config_listener_options_apply_to_the_latest_listener)
{
	CHECK_STR(load_err("listener 1883\nmax_connections 10\n"
			   "listener 1884\n"
			   "listener 1885\nmax_connections -5\n"),
		  "");
	CHECK_EQ(cfg_g.listeners[0].max_connections, 10);
	CHECK_EQ(cfg_g.listeners[1].max_connections, -1);
	CHECK_EQ(cfg_g.listeners[2].max_connections, -1); /* negative */
}

TEST(config_bad_listener_port_reports_expected_range)
{
	CHECK_STR(load_err("listener abc\n"),
		  "t.conf:1: option 'listener': expects a port number "
		  "1-65535, got 'abc'");
	CHECK_STR(load_err("\nlistener 65536\n"),
		  "t.conf:2: option 'listener': expects a port number "
		  "1-65535, got '65536'");
	CHECK_STR(load_err("listener 0\n"),
		  "t.conf:1: option 'listener': expects a port number "
		  "1-65535, got '0'");
	CHECK_STR(load_err("listener\n"),
		  "t.conf:1: option 'listener': missing value (expects a port "
		  "number 1-65535)");
	CHECK_STR(load_err("listener 1883 127.0.0.1 extra\n"),
		  "t.conf:1: option 'listener': unexpected extra argument "
		  "'extra'");
}

TEST(config_unix_socket_listener_is_not_supported_yet)
{
	CHECK_STR(load_err("listener 0 /run/kite.sock\n"),
		  "t.conf:1: option 'listener': unix socket listeners are not "
		  "supported yet");
}

TEST(config_port_creates_default_listener_after_explicit_ones)
{
	CHECK_STR(load_err("port 1884\nlistener 8883\n"), "");
	CHECK(!cfg_g.local_only);
	CHECK_EQ(cfg_g.listener_count, 2);
	CHECK_EQ(cfg_g.listeners[0].port, 8883);
	CHECK_EQ(cfg_g.listeners[1].port, 1884);
	CHECK_STR(cfg_g.listeners[1].bind_address, "");
	CHECK_EQ(cfg_g.listeners[1].line, 1);
}

TEST(config_port_given_twice_uses_the_last)
{
	CHECK_STR(load_err("port 1884\nport 1885\n"), "");
	CHECK_EQ(cfg_g.listener_count, 1);
	CHECK_EQ(cfg_g.listeners[0].port, 1885);
}

TEST(config_bind_address_without_port_listens_on_1883)
{
	CHECK_STR(load_err("bind_address 10.0.0.1\n"), "");
	CHECK(!cfg_g.local_only);
	CHECK_EQ(cfg_g.listener_count, 1);
	CHECK_EQ(cfg_g.listeners[0].port, 1883);
	CHECK_STR(cfg_g.listeners[0].bind_address, "10.0.0.1");
	CHECK_EQ(cfg_g.listeners[0].allow_anonymous, 0);

	CHECK_STR(load_err("bind_address 10.0.0.1\nport 1999\n"), "");
	CHECK_EQ(cfg_g.listeners[0].port, 1999);
	CHECK_STR(cfg_g.listeners[0].bind_address, "10.0.0.1");
}

TEST(config_bind_address_given_twice_is_an_error)
{
	CHECK_STR(load_err("bind_address 10.0.0.1\nbind_address 10.0.0.1\n"),
		  "t.conf:2: option 'bind_address': given more than once");
}

TEST(config_listener_options_before_any_listener_go_to_default_listener)
{
	CHECK_STR(load_err("max_connections 7\nlistener 8883\nport 1883\n"),
		  "");
	CHECK_EQ(cfg_g.listener_count, 2);
	CHECK_EQ(cfg_g.listeners[0].max_connections, -1);
	CHECK_EQ(cfg_g.listeners[1].port, 1883);
	CHECK_EQ(cfg_g.listeners[1].max_connections, 7);
}

TEST(config_duplicate_listener_names_both_lines)
{
	CHECK_STR(load_err("listener 1883 0.0.0.0\nlistener 1884\n"
			   "listener 1883 0.0.0.0\n"),
		  "t.conf:3: listener on port 1883 (0.0.0.0) duplicates the "
		  "one at t.conf:1");
	CHECK_STR(load_err("listener 1883\n\nlistener 1883\n"),
		  "t.conf:3: listener on port 1883 (all addresses) duplicates "
		  "the one at t.conf:1");
}

TEST(config_duplicate_of_default_listener_names_both_lines)
{
	CHECK_STR(load_err("port 1883\nlistener 1883\n"),
		  "t.conf:1: listener on port 1883 (all addresses) duplicates "
		  "the one at t.conf:2");
}

TEST(config_same_port_on_different_addresses_is_allowed)
{
	CHECK_STR(load_err("listener 1883 127.0.0.1\nlistener 1883 ::1\n"
			   "listener 1884\n"),
		  "");
	CHECK_EQ(cfg_g.listener_count, 3);
}

TEST(config_too_many_listeners_is_an_error)
{
	char text[KITE_LISTENERS_MAX * 24 + 64];
	size_t off = 0;
	for (int i = 0; i < KITE_LISTENERS_MAX; i++)
		off += (size_t)snprintf(text + off, sizeof(text) - off,
					"listener %d\n", 2000 + i);
	CHECK_STR(load_err(text), "");
	CHECK_EQ(cfg_g.listener_count, KITE_LISTENERS_MAX);

	snprintf(text + off, sizeof(text) - off, "listener 1883\n");
	char want[128];
	snprintf(want, sizeof(want),
		 "t.conf:%d: option 'listener': too many listeners (at most "
		 "%d)",
		 KITE_LISTENERS_MAX + 1, KITE_LISTENERS_MAX);
	CHECK_STR(load_err(text), want);

	snprintf(text + off, sizeof(text) - off, "port 1883\n");
	snprintf(want, sizeof(want),
		 "t.conf:%d: too many listeners (at most %d)",
		 KITE_LISTENERS_MAX + 1, KITE_LISTENERS_MAX);
	CHECK_STR(load_err(text), want);
}

TEST(config_listener_address_longer_than_limit_is_an_error)
{
	char text[KITE_HOST_MAX + 64];
	char host[KITE_HOST_MAX + 1];
	memset(host, 'a', KITE_HOST_MAX);
	host[KITE_HOST_MAX] = '\0';
	snprintf(text, sizeof(text), "listener 1883 %s\n", host);
	char want[128];
	snprintf(want, sizeof(want),
		 "t.conf:1: option 'listener': address longer than %d bytes",
		 KITE_HOST_MAX - 1);
	CHECK_STR(load_err(text), want);
}

/* ---- allow_anonymous and per_listener_settings ------------------------- */

TEST(config_allow_anonymous_defaults_to_false_once_a_listener_exists)
{
	CHECK_STR(load_err("listener 1883\nlistener 1884\n"), "");
	CHECK_EQ(cfg_g.allow_anonymous, 0);
	CHECK_EQ(cfg_g.listeners[0].allow_anonymous, 0);
	CHECK_EQ(cfg_g.listeners[1].allow_anonymous, 0);

	CHECK_STR(load_err("per_listener_settings true\nlistener 1883\n"), "");
	CHECK_EQ(cfg_g.listeners[0].allow_anonymous, 0);
}

TEST(config_global_allow_anonymous_applies_to_every_listener)
{
	/* Without per_listener_settings the position does not matter. */
	CHECK_STR(load_err("listener 1883\nlistener 1884\n"
			   "allow_anonymous true\n"),
		  "");
	CHECK_EQ(cfg_g.allow_anonymous, 1);
	CHECK_EQ(cfg_g.listeners[0].allow_anonymous, 1);
	CHECK_EQ(cfg_g.listeners[1].allow_anonymous, 1);

	CHECK_STR(load_err("allow_anonymous true\nlistener 1883\n"
			   "allow_anonymous false\n"),
		  "");
	CHECK_EQ(cfg_g.listeners[0].allow_anonymous, 0);
}

TEST(config_per_listener_settings_scopes_allow_anonymous)
{
	CHECK_STR(load_err("per_listener_settings true\n"
			   "listener 1883\nallow_anonymous true\n"
			   "listener 1884\n"
			   "listener 1885\nallow_anonymous false\n"),
		  "");
	CHECK(cfg_g.per_listener_settings);
	CHECK_EQ(cfg_g.listeners[0].allow_anonymous, 1);
	CHECK_EQ(cfg_g.listeners[1].allow_anonymous, 0); /* unset */
	CHECK_EQ(cfg_g.listeners[2].allow_anonymous, 0);
	CHECK_EQ(cfg_g.allow_anonymous, -1); /* no global value */
}

TEST(config_per_listener_allow_anonymous_before_listener_goes_to_default)
{
	CHECK_STR(load_err("per_listener_settings true\nallow_anonymous true\n"
			   "listener 8883\nport 1883\n"),
		  "");
	CHECK_EQ(cfg_g.listener_count, 2);
	CHECK_EQ(cfg_g.listeners[0].port, 8883);
	CHECK_EQ(cfg_g.listeners[0].allow_anonymous, 0);
	CHECK_EQ(cfg_g.listeners[1].port, 1883);
	CHECK_EQ(cfg_g.listeners[1].allow_anonymous, 1);
}

TEST(config_per_listener_settings_after_allow_anonymous_is_an_error)
{
	const char *want = "t.conf:3: option 'per_listener_settings': must be "
			   "set before allow_anonymous and any other security "
			   "option";
	CHECK_STR(load_err("allow_anonymous true\nlistener 1883\n"
			   "per_listener_settings true\n"),
		  want);
	CHECK_STR(load_err("per_listener_settings true\nlistener 1883\n"
			   "allow_anonymous true\nper_listener_settings false\n"),
		  "");
	CHECK(!cfg_g.per_listener_settings); /* Mosquitto lets it be unset */
	CHECK_STR(load_err("allow_anonymous true\nlistener 1883\n"
			   "per_listener_settings false\n"),
		  "");
}

/* The seed from the migration guide: per-listener anonymous access. */
static const char seed_conf[] = "per_listener_settings true\n"
				"\n"
				"listener 1883 127.0.0.1\n"
				"allow_anonymous true\n"
				"\n"
				"listener 8883 0.0.0.0\n"
				"allow_anonymous false\n";

TEST(config_seed_per_listener_config_parses)
{
	CHECK_STR(load_err(seed_conf), "");
	CHECK(!cfg_g.local_only);
	CHECK(cfg_g.per_listener_settings);
	CHECK_EQ(cfg_g.listener_count, 2);
	CHECK_EQ(cfg_g.listeners[0].port, 1883);
	CHECK_STR(cfg_g.listeners[0].bind_address, "127.0.0.1");
	CHECK_EQ(cfg_g.listeners[0].allow_anonymous, 1);
	CHECK_EQ(cfg_g.listeners[1].port, 8883);
	CHECK_STR(cfg_g.listeners[1].bind_address, "0.0.0.0");
	CHECK_EQ(cfg_g.listeners[1].allow_anonymous, 0);
	CHECK_EQ(cfg_g.listeners[1].line, 6);
}

/* Seed 003 as written: a plain local listener next to an mTLS listener
 * with its ACL, per_listener_settings true. */
TEST(config_seed_003_mtls_listener_parses_with_its_tls_and_acl_options)
{
	CHECK_STR(load_err("per_listener_settings true\n\n"
			   "listener 1883 127.0.0.1\nallow_anonymous true\n\n"
			   "listener 8883 0.0.0.0\n"
			   "cafile /etc/mosquitto/certs/ca.pem\n"
			   "certfile /etc/mosquitto/certs/mqtt-server.pem\n"
			   "keyfile /etc/mosquitto/certs/mqtt-server-key.pem\n"
			   "allow_anonymous false\n"
			   "require_certificate true\n"
			   "use_identity_as_username true\n"
			   "acl_file /etc/mosquitto/acl\n"),
		  "");
	const struct kite_listener_cfg *plain = &cfg_g.listeners[0];
	const struct kite_listener_cfg *tls = &cfg_g.listeners[1];
	CHECK_STR(plain->tls.certfile, "");
	CHECK_EQ(plain->allow_anonymous, 1);
	CHECK_STR(plain->acl_file, "");
	CHECK_STR(tls->tls.cafile, "/etc/mosquitto/certs/ca.pem");
	CHECK_STR(tls->tls.certfile, "/etc/mosquitto/certs/mqtt-server.pem");
	CHECK_STR(tls->tls.keyfile, "/etc/mosquitto/certs/mqtt-server-key.pem");
	CHECK(tls->tls.require_certificate);
	CHECK(tls->tls.use_identity_as_username);
	CHECK_EQ(tls->allow_anonymous, 0);
	CHECK_STR(tls->acl_file, "/etc/mosquitto/acl");
}

TEST(config_global_acl_and_password_files_apply_to_every_listener)
{
	CHECK_STR(load_err("listener 1883\nlistener 1884\n"
			   "acl_file /a\npassword_file /p\n"),
		  "");
	for (unsigned i = 0; i < 2; i++) {
		CHECK_STR(cfg_g.listeners[i].acl_file, "/a");
		CHECK_STR(cfg_g.listeners[i].password_file, "/p");
	}
}

TEST(config_tls_options_that_cannot_work_together_name_the_listener)
{
	CHECK_STR(load_err("listener 8883\ncertfile /s.pem\n"),
		  "t.conf:1: listener on port 8883: certfile without keyfile");
	CHECK_STR(load_err("listener 8883\ncafile /ca.pem\n"),
		  "t.conf:1: listener on port 8883: TLS options without "
		  "certfile and keyfile");
	CHECK_STR(load_err("listener 8883\ncertfile /s\nkeyfile /k\n"
			   "require_certificate true\n"),
		  "t.conf:1: listener on port 8883: require_certificate true "
		  "needs cafile or capath");
	CHECK_STR(load_err("listener 8883\ncertfile /s\nkeyfile /k\n"
			   "tls_version tlsv1.1\n"),
		  "t.conf:4: option 'tls_version': 'tlsv1.1' is insecure; "
		  "kite accepts tlsv1.2 or tlsv1.3");
}

TEST(config_flood_filter_options_are_parsed)
{
	CHECK_STR(load_err("listener 1883\nflood_filter_interface eth0\n"
			   "flood_filter_interface eth1\n"
			   "flood_filter_syn_rate 5\nflood_filter_syn_burst 7\n"
			   "flood_filter_strikes 3\n"
			   "flood_filter_block_seconds 2\n"
			   "flood_filter_required true\n"),
		  "");
	CHECK_EQ(cfg_g.flood_filter_iface_count, 2);
	CHECK_STR(cfg_g.flood_filter_ifaces[1], "eth1");
	CHECK_EQ(cfg_g.flood_filter_syn_rate, 5);
	CHECK_EQ(cfg_g.flood_filter_syn_burst, 7);
	CHECK_EQ(cfg_g.flood_filter_strikes, 3);
	CHECK_EQ(cfg_g.flood_filter_block_seconds, 2);
	CHECK(cfg_g.flood_filter_required);
}

/* ---- every global option ----------------------------------------------- */

TEST(config_every_supported_option_is_parsed)
{
	CHECK_STR(load_err("listener 1883\n"
			   "max_connections 100\n"
			   "max_keepalive 300\n"
			   "max_packet_size 1048576\n"
			   "message_size_limit 65536\n"
			   "max_inflight_messages 40\n"
			   "max_queued_messages 5000\n"
			   "max_queued_bytes 1048576\n"
			   "retain_available false\n"
			   "allow_anonymous true\n"
			   "connection_messages false\n"
			   "sys_interval 0\n"
			   "pid_file /run/kite.pid\n"
			   "log_dest stdout\n"
			   "log_dest syslog\n"
			   "log_dest topic\n"
			   "log_dest file /var/log/kite.log\n"
			   "log_type error\n"
			   "log_type subscribe\n"
			   "shards 4\n"),
		  "");
	CHECK_EQ(cfg_g.listeners[0].max_connections, 100);
	CHECK_EQ(cfg_g.max_keepalive_s, 300);
	CHECK_EQ(cfg_g.max_packet_size, 1048576);
	CHECK_EQ(cfg_g.message_size_limit, 65536);
	CHECK_EQ(cfg_g.max_inflight_messages, 40);
	CHECK_EQ(cfg_g.max_queued_messages, 5000);
	CHECK_EQ(cfg_g.max_queued_bytes, 1048576);
	CHECK(!cfg_g.retain_available);
	CHECK_EQ(cfg_g.allow_anonymous, 1);
	CHECK(!cfg_g.connection_messages);
	CHECK_EQ(cfg_g.sys_interval_s, 0);
	CHECK_STR(cfg_g.pid_file, "/run/kite.pid");
	CHECK_EQ(cfg_g.log_dest, KITE_LOGDEST_STDOUT | KITE_LOGDEST_SYSLOG |
					 KITE_LOGDEST_TOPIC | KITE_LOGDEST_FILE);
	CHECK_STR(cfg_g.log_file, "/var/log/kite.log");
	CHECK_EQ(cfg_g.log_type, KITE_LOG_ERR | KITE_LOG_SUBSCRIBE);
	CHECK_EQ(cfg_g.shards, 4);
	CHECK_EQ(config_shard_count(&cfg_g), 4);
}

/* Fixture table: one line, whether Mosquitto 2.0.11 accepts it, and the
 * value it stores. */
struct range_case {
	const char *line;
	bool ok;
	long long value;
};

static long long range_value(const char *line)
{
	if (!strncmp(line, "max_keepalive", 13))
		return cfg_g.max_keepalive_s;
	if (!strncmp(line, "max_packet_size", 15))
		return cfg_g.max_packet_size;
	if (!strncmp(line, "message_size_limit", 18))
		return cfg_g.message_size_limit;
	if (!strncmp(line, "max_inflight_messages", 21))
		return cfg_g.max_inflight_messages;
	if (!strncmp(line, "max_queued_messages", 19))
		return cfg_g.max_queued_messages;
	if (!strncmp(line, "max_queued_bytes", 16))
		return (long long)cfg_g.max_queued_bytes;
	if (!strncmp(line, "sys_interval", 12))
		return cfg_g.sys_interval_s;
	if (!strncmp(line, "shards", 6))
		return cfg_g.shards;
	if (!strncmp(line, "port", 4))
		return cfg_g.listeners[0].port;
	if (!strncmp(line, "max_connections", 15))
		return cfg_g.listeners[0].max_connections;
	return -999;
}

TEST(config_numeric_limits_follow_mosquitto_ranges)
{
	static const struct range_case cases[] = {
		{"max_keepalive 9", false, 0},
		{"max_keepalive 10", true, 10},
		{"max_keepalive 65535", true, 65535},
		{"max_keepalive 65536", false, 0},
		{"max_packet_size 19", false, 0},
		{"max_packet_size 20", true, 20},
		{"max_packet_size 2147483647", true, 2147483647},
		{"max_packet_size 2147483648", false, 0},
		{"message_size_limit 0", true, 0},
		{"message_size_limit 268435455", true, 268435455},
		{"message_size_limit 268435456", false, 0},
		{"message_size_limit -1", false, 0},
		{"max_inflight_messages 0", true, 0},
		{"max_inflight_messages -1", true, 0},
		{"max_inflight_messages 65534", true, 65534},
		{"max_inflight_messages 65535", true, 0},
		{"max_inflight_messages 65536", false, 0},
		{"max_queued_messages -1", true, 0},
		{"max_queued_messages 0", true, 0},
		{"max_queued_messages 2147483647", true, 2147483647},
		{"max_queued_bytes -1", true, 0},
		{"max_queued_bytes 0", true, 0},
		{"max_queued_bytes 4294967296", true, 4294967296LL},
		{"max_queued_bytes 1k", false, 0},
		{"sys_interval -1", false, 0},
		{"sys_interval 65535", true, 65535},
		{"sys_interval 65536", false, 0},
		{"shards 0", true, 0},
		{"shards 64", true, 64},
		{"shards 65", false, 0},
		{"shards -1", false, 0},
		{"port 0", false, 0},
		{"port 1", true, 1},
		{"port 65535", true, 65535},
		{"port 65536", false, 0},
		{"max_connections -1", true, -1},
		{"max_connections 0", true, 0},
		{"max_connections -2147483648", true, -1},
		{"max_connections 2147483648", false, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char text[128];
		snprintf(text, sizeof(text), "listener 2000\n%s\n",
			 cases[i].line);
		if (!strncmp(cases[i].line, "port", 4))
			snprintf(text, sizeof(text), "%s\n", cases[i].line);
		const char *err = parse_err(text);
		if (cases[i].ok != (err[0] == '\0') ||
		    (cases[i].ok && range_value(cases[i].line) != cases[i].value))
			fprintf(stderr, "  case '%s': err '%s'\n",
				cases[i].line, err);
		CHECK_EQ(err[0] == '\0', cases[i].ok);
		if (cases[i].ok)
			CHECK_EQ(range_value(cases[i].line), cases[i].value);
		else
			CHECK(strstr(err, "expects") != NULL);
	}
}

TEST(config_numbers_are_strict)
{
	static const char *const bad[] = {
		"60s", "0x10", "1e3", "+60", " ", "--60", "-", "6 0",
		"99999999999999999999", "-99999999999999999999", "60.0",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char text[96];
		snprintf(text, sizeof(text), "max_keepalive %s\n", bad[i]);
		CHECK(parse_err(text)[0] != '\0');
	}
	CHECK_STR(parse_err("max_keepalive 60s\n"),
		  "t.conf:1: option 'max_keepalive': expects a number "
		  "10-65535, got '60s'");
	CHECK_STR(parse_err("max_keepalive 6 0\n"),
		  "t.conf:1: option 'max_keepalive': unexpected extra argument "
		  "'0'");
}

TEST(config_booleans_accept_true_false_1_and_0)
{
	static const struct {
		const char *word;
		int value; /* -1 = rejected */
	} cases[] = {
		{"true", 1}, {"false", 0}, {"1", 1},	 {"0", 0},
		{"yes", -1}, {"no", -1},   {"TRUE", -1}, {"True", -1},
		{"on", -1},  {"2", -1},	   {"truex", -1},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char text[64], want[160];
		snprintf(text, sizeof(text), "retain_available %s\n",
			 cases[i].word);
		const char *err = parse_err(text);
		if (cases[i].value < 0) {
			snprintf(want, sizeof(want),
				 "t.conf:1: option 'retain_available': expects "
				 "true or false, got '%s'",
				 cases[i].word);
			CHECK_STR(err, want);
		} else {
			CHECK_STR(err, "");
			CHECK_EQ(cfg_g.retain_available, cases[i].value);
		}
	}
}

/* ---- error classes ----------------------------------------------------- */

TEST(config_unknown_option_reports_file_and_line)
{
	CHECK_STR(load_err("listener 1883\n\n# comment\nfrobnicate 1\n"),
		  "t.conf:4: unknown option 'frobnicate'");
	/* Newer Mosquitto options are unknown to 2.0.11 as well. */
	CHECK_STR(load_err("accept_protocol_versions 5\n"),
		  "t.conf:1: unknown option 'accept_protocol_versions'");
	CHECK_STR(load_err("Listener 1883\n"),
		  "t.conf:1: unknown option 'Listener'");
}

TEST(config_mosquitto_only_option_is_not_supported_yet)
{
	static const char *const names[] = {
		"retained_persistence true",
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char text[128], want[160], name[64];
		snprintf(text, sizeof(text), "listener 1883\n%s\n", names[i]);
		sscanf(names[i], "%63s", name);
		snprintf(want, sizeof(want),
			 "t.conf:2: option '%s' is not supported yet", name);
		CHECK_STR(load_err(text), want);
	}
}

TEST(config_bridge_block)
{
	struct kite_config cfg;
	char err[KITE_CONFIG_ERR_MAX];
	config_defaults(&cfg);
	CHECK_EQ(config_load_string(&cfg, "t.conf",
		"listener 1883\nconnection b1\naddresses 10.0.0.1:1884 h2\n"
		"topic # both 2 l/ r/\nrestart_timeout 3 9\n"
		"bridge_protocol_version mqttv50\nremote_clientid rc\n",
		err, sizeof(err)), 0);
	CHECK_EQ(config_finalize(&cfg, err, sizeof(err)), 0);
	CHECK_EQ(cfg.bridge_count, 1u);
	const struct kite_bridge_cfg *b = &cfg.bridges[0];
	CHECK_EQ(b->addr_count, 2u);
	CHECK_EQ(b->addrs[0].port, 1884);
	CHECK_EQ(b->addrs[1].port, 1883);
	CHECK_STR(b->topics[0].local_topic, "l/#");
	CHECK_STR(b->topics[0].remote_topic, "r/#");
	CHECK_EQ(b->topics[0].qos, 2);
	CHECK_EQ(b->restart_cap_s, 9u);
	CHECK_EQ(b->protocol, 5);
	CHECK_STR(b->local_clientid, "local.rc");
	CHECK_STR(b->notification_topic, "$SYS/broker/connection/rc/state");
	CHECK_STR(load_err("address 10.0.0.1\n"),
		  "t.conf:1: option 'address' is only valid in a bridge "
		  "('connection') block");
}

TEST(config_listener_protocol_metrics_or_mqtt)
{
	struct kite_config cfg;
	config_defaults(&cfg);
	char err[KITE_CONFIG_ERR_MAX];
	CHECK_EQ(config_load_string(&cfg, "t.conf",
				    "listener 1883\nlistener 9100 127.0.0.1\n"
				    "protocol metrics\nlistener 1884\n"
				    "protocol mqtt\n",
				    err, sizeof(err)), 0);
	CHECK_EQ(cfg.listener_count, 3u);
	CHECK_EQ(cfg.listeners[0].protocol, LISTENER_PROTO_MQTT);
	CHECK_EQ(cfg.listeners[1].protocol, LISTENER_PROTO_METRICS);
	CHECK_EQ(cfg.listeners[2].protocol, LISTENER_PROTO_MQTT);
	CHECK_STR(load_err("listener 1883\nprotocol http\n"),
		  "t.conf:2: option 'protocol': expects mqtt, websockets or "
		  "metrics, got 'http'");
}

TEST(config_log_options)
{
	struct kite_config cfg;
	config_defaults(&cfg);
	CHECK(cfg.log_timestamp);
	CHECK_EQ(cfg.log_facility, -1);
	CHECK_EQ(cfg.log_format, KITE_LOG_FORMAT_MOSQUITTO);
	char err[KITE_CONFIG_ERR_MAX];
	CHECK_EQ(config_load_string(&cfg, "t.conf",
				    "log_timestamp false\n"
				    "log_timestamp_format %Y-%m-%d %H:%M:%S\n"
				    "log_facility 5\nlog_format json\n",
				    err, sizeof(err)), 0);
	CHECK(!cfg.log_timestamp);
	CHECK_STR(cfg.log_timestamp_format, "%Y-%m-%d %H:%M:%S");
	CHECK_EQ(cfg.log_facility, 5);
	CHECK_EQ(cfg.log_format, KITE_LOG_FORMAT_JSON);
	CHECK(cfg.log_format_set);
	CHECK_STR(load_err("log_facility 8\n"),
		  "t.conf:1: option 'log_facility': expects a number 0-7 "
		  "(local0-local7), got '8'");
	CHECK_STR(load_err("log_format xml\n"),
		  "t.conf:1: option 'log_format': expects mosquitto, json or "
		  "journal, got 'xml'");
}

TEST(config_bridge_psk_and_ocsp)
{
	CHECK_STR(load_err("connection b\naddress 127.0.0.1\ntopic a\n"
			   "bridge_identity edge\nbridge_psk 0a0B\n"
			   "bridge_tls_version tlsv1.3\n"), "");
	CHECK_STR(cfg_g.bridges[0].psk_identity, "edge");
	CHECK_STR(cfg_g.bridges[0].psk, "0a0B");
	CHECK_STR(load_err("connection b\naddress 127.0.0.1\ntopic a\n"
			   "bridge_cafile /c.pem\nbridge_require_ocsp true\n"),
		  "");
	CHECK(cfg_g.bridges[0].require_ocsp);
	CHECK_STR(load_err("connection b\naddress 127.0.0.1\ntopic a\n"
			   "bridge_psk 0a0b\n"),
		  "t.conf:1: bridge 'b' needs both bridge_identity and "
		  "bridge_psk");
	CHECK_STR(load_err("connection b\naddress 127.0.0.1\ntopic a\n"
			   "bridge_identity e\nbridge_psk 0x0a\n"),
		  "t.conf:1: bridge 'b' has a bridge_psk that is not an even "
		  "number of hexadecimal digits (without 0x)");
	CHECK_STR(load_err("connection b\naddress 127.0.0.1\ntopic a\n"
			   "bridge_nonsense 1\n"),
		  "t.conf:4: unknown option 'bridge_nonsense' (not a bridge "
		  "option of Mosquitto 2.0's)");
}

TEST(config_plugin_lines_name_the_plugin_and_the_alternative)
{
	CHECK_STR(load_err("listener 1883\nauth_plugin /x.so\n"),
		  "t.conf:2: option 'auth_plugin /x.so': kite cannot load "
		  "Mosquitto plugins; use password_file, acl_file and psk_file "
		  "instead");
	CHECK_STR(load_err("plugin /y.so\n"),
		  "t.conf:1: option 'plugin /y.so': kite cannot load Mosquitto "
		  "plugins; use password_file, acl_file and psk_file instead");
	CHECK_STR(load_err("auth_opt_db x\n"),
		  "t.conf:1: option 'auth_opt_db' configures a Mosquitto plugin, "
		  "which kite cannot load; use password_file, acl_file and "
		  "psk_file instead");
}

TEST(config_general_options_take_mosquitto_defaults_and_values)
{
	CHECK_STR(load_err("listener 1883\n"), "");
	CHECK(cfg_g.check_retain_source && !cfg_g.upgrade_outgoing_qos);
	CHECK(cfg_g.set_tcp_nodelay && !cfg_g.queue_qos0_messages);
	CHECK(!strcmp(cfg_g.user, "mosquitto") && !cfg_g.user_set);
	CHECK(cfg_g.listeners[0].sec.allow_zero_length_clientid);
	CHECK(!strcmp(cfg_g.listeners[0].sec.auto_id_prefix, "auto-"));
	CHECK_STR(load_err("check_retain_source false\nupgrade_outgoing_qos 1\n"
			   "max_inflight_bytes 100\nmemory_limit 5000000000\n"
			   "queue_qos0_messages true\nset_tcp_nodelay false\n"
			   "clientid_prefixes sec-\nuser nobody\n"
			   "allow_zero_length_clientid false\nauto_id_prefix p-\n"
			   "listener 1883\nmount_point m/\nsocket_domain ipv6\n"
			   "bind_interface lo\nuse_username_as_clientid true\n"),
		  "");
	CHECK(!cfg_g.check_retain_source && cfg_g.upgrade_outgoing_qos);
	CHECK(cfg_g.max_inflight_bytes == 100);
	CHECK(cfg_g.memory_limit == 5000000000ull);
	CHECK(cfg_g.queue_qos0_messages && !cfg_g.set_tcp_nodelay);
	CHECK(!strcmp(cfg_g.clientid_prefixes, "sec-"));
	CHECK(!strcmp(cfg_g.user, "nobody") && cfg_g.user_set);
	const struct kite_listener_cfg *l = &cfg_g.listeners[0];
	CHECK(!l->sec.allow_zero_length_clientid); /* copied from global */
	CHECK(!strcmp(l->sec.auto_id_prefix, "p-"));
	CHECK(!strcmp(l->mount_point, "m/") && !strcmp(l->bind_interface, "lo"));
	CHECK(l->socket_domain == KITE_DOMAIN_IPV6 && l->use_username_as_clientid);
}

TEST(config_new_option_values_are_checked)
{
	CHECK_STR(load_err("socket_domain ipv5\n"),
		  "t.conf:1: option 'socket_domain': expects ipv4 or ipv6, got "
		  "'ipv5'");
	CHECK_STR(load_err("mount_point a/#\n"),
		  "t.conf:1: option 'mount_point': 'a/#' contains a wildcard "
		  "(+ or #)");
	CHECK_STR(load_err("max_inflight_bytes -1\n"),
		  "t.conf:1: option 'max_inflight_bytes': expects a number "
		  "0-4294967295, got '-1'");
	CHECK_STR(load_err("tls_keyform der\n"),
		  "t.conf:1: option 'tls_keyform': expects pem or engine, got "
		  "'der'");
	CHECK_STR(load_err("listener 8883\npsk_hint h\n"),
		  "t.conf:1: listener on port 8883: psk_hint needs a psk_file");
	CHECK_STR(load_err("psk_file /p\nlistener 8883\npsk_hint h\n"
			   "use_identity_as_username true\n"), "");
}

TEST(config_obsolete_options_warn)
{
	CHECK_STR(load_err("tls_engine pkcs11\nretry_interval 10\n"), "");
	CHECK(cfg_g.warning_count == 2);
	CHECK(strstr(cfg_g.warnings[0], "t.conf:1: option 'tls_engine' is "
					"obsolete with OpenSSL 3") != NULL);
	CHECK(strstr(cfg_g.warnings[1], "no longer available") != NULL);
}

TEST(config_missing_argument_is_reported)
{
	CHECK_STR(load_err("max_keepalive\n"),
		  "t.conf:1: option 'max_keepalive': missing value (expects a "
		  "number 10-65535)");
	CHECK_STR(load_err("allow_anonymous   \n"),
		  "t.conf:1: option 'allow_anonymous': missing value (expects "
		  "true or false)");
	CHECK_STR(load_err("pid_file\n"),
		  "t.conf:1: option 'pid_file': missing value (expects a "
		  "path)");
	CHECK_STR(load_err("log_dest\n"),
		  "t.conf:1: option 'log_dest': missing value (expects stdout, "
		  "stderr, syslog, topic, file PATH or none)");
	CHECK_STR(load_err("log_dest file   \n"),
		  "t.conf:1: option 'log_dest': missing value (expects a path "
		  "after 'file')");
	CHECK_STR(load_err("include_dir\n"),
		  "t.conf:1: option 'include_dir': missing value (expects a "
		  "directory)");
	CHECK_STR(load_err("port # no port\n"),
		  "t.conf:1: option 'port': missing value (expects a port "
		  "number 1-65535)");
}

TEST(config_extra_argument_is_reported)
{
	CHECK_STR(load_err("allow_anonymous true false\n"),
		  "t.conf:1: option 'allow_anonymous': unexpected extra "
		  "argument 'false'");
	CHECK_STR(load_err("log_dest stdout stderr\n"),
		  "t.conf:1: option 'log_dest': unexpected extra argument "
		  "'stderr'");
	CHECK_STR(load_err("log_type error warning\n"),
		  "t.conf:1: option 'log_type': unexpected extra argument "
		  "'warning'");
	CHECK_STR(load_err("bind_address 10.0.0.1 10.0.0.2\n"),
		  "t.conf:1: option 'bind_address': unexpected extra argument "
		  "'10.0.0.2'");
}

TEST(config_trailing_hash_word_is_a_comment)
{
	CHECK_STR(load_err("listener 1883 # plain MQTT\n"
			   "allow_anonymous true # for now\n"
			   "log_dest stdout #note\n"),
		  "");
	CHECK_STR(cfg_g.listeners[0].bind_address, "");
	CHECK_EQ(cfg_g.allow_anonymous, 1);
	CHECK_EQ(cfg_g.log_dest, KITE_LOGDEST_STDOUT);
	/* Paths take the rest of the line, '#' included, as in Mosquitto. */
	CHECK_STR(load_err("pid_file /run/kite #1.pid\n"), "");
	CHECK_STR(cfg_g.pid_file, "/run/kite #1.pid");
}

TEST(config_comments_blank_lines_crlf_and_tabs_are_handled)
{
	CHECK_STR(load_err("# comment\r\n"
			   "   # indented comment\n"
			   "\t\n"
			   "\r\n"
			   "listener 1883\r\n"
			   "  max_connections\t 12  \t\r\n"
			   "listener\t1884\t127.0.0.1   \n"
			   "sys_interval 20"), /* no final newline */
		  "");
	CHECK_EQ(cfg_g.listener_count, 2);
	CHECK_EQ(cfg_g.listeners[0].max_connections, 12);
	CHECK_EQ(cfg_g.listeners[1].port, 1884);
	CHECK_STR(cfg_g.listeners[1].bind_address, "127.0.0.1");
	CHECK_EQ(cfg_g.listeners[1].line, 7);
	CHECK_EQ(cfg_g.sys_interval_s, 20);
}

TEST(config_error_message_is_cut_to_the_buffer)
{
	char small[12];
	config_defaults(&cfg_g);
	CHECK_EQ(config_load_string(&cfg_g, "t.conf", "frobnicate\n", small,
				    sizeof(small)),
		 -1);
	CHECK_STR(small, "t.conf:1: u");
}

TEST(config_non_utf8_value_is_an_error)
{
	CHECK_STR(load_err("pid_file /run/\xff.pid\n"),
		  "t.conf:1: option 'pid_file': value is not valid UTF-8 text");
	CHECK_STR(load_err("bind_address \xc0\x80\n"),
		  "t.conf:1: option 'bind_address': value is not valid UTF-8 "
		  "text");
	CHECK_STR(load_err("pid_file /run/k\xc3\xa9.pid\n"), "");
	CHECK_STR(cfg_g.pid_file, "/run/k\xc3\xa9.pid");
}

TEST(config_pid_file_given_twice_is_an_error)
{
	CHECK_STR(load_err("pid_file /a\npid_file /b\n"),
		  "t.conf:2: option 'pid_file': given more than once");
}

TEST(config_path_longer_than_limit_is_an_error)
{
	char text[KITE_PATH_MAX + 64];
	int n = snprintf(text, sizeof(text), "pid_file /");
	memset(text + n, 'p', KITE_PATH_MAX);
	snprintf(text + n + KITE_PATH_MAX, 8, "\n");
	char want[96];
	snprintf(want, sizeof(want),
		 "t.conf:1: option 'pid_file': value longer than %d bytes",
		 KITE_PATH_MAX - 1);
	CHECK_STR(load_err(text), want);
}

/* ---- logging options --------------------------------------------------- */

TEST(config_log_dest_first_line_replaces_default_then_accumulates)
{
	CHECK_STR(load_err("log_dest stdout\n"), "");
	CHECK_EQ(cfg_g.log_dest, KITE_LOGDEST_STDOUT);
	CHECK_STR(load_err("log_dest stdout\nlog_dest stderr\n"), "");
	CHECK_EQ(cfg_g.log_dest, KITE_LOGDEST_STDOUT | KITE_LOGDEST_STDERR);
	CHECK_STR(load_err("log_dest stdout\nlog_dest none\nlog_dest syslog\n"),
		  "");
	CHECK_EQ(cfg_g.log_dest, KITE_LOGDEST_SYSLOG);
	CHECK_STR(load_err("log_dest none\n"), "");
	CHECK_EQ(cfg_g.log_dest, 0);
}

TEST(config_log_dest_file_takes_the_rest_of_the_line)
{
	CHECK_STR(load_err("log_dest file   /var/log/my kite.log  \n"), "");
	CHECK_STR(cfg_g.log_file, "/var/log/my kite.log");
	CHECK_EQ(cfg_g.log_dest, KITE_LOGDEST_FILE);
	CHECK_STR(load_err("log_dest file /a\nlog_dest file /b\n"),
		  "t.conf:2: option 'log_dest': 'file' given more than once");
	CHECK_STR(load_err("log_dest file /a\nlog_dest none\n"
			   "log_dest file /b\n"),
		  "t.conf:3: option 'log_dest': 'file' given more than once");
}

TEST(config_log_dest_invalid_value_is_reported)
{
	CHECK_STR(load_err("log_dest console\n"),
		  "t.conf:1: option 'log_dest': expects stdout, stderr, syslog, "
		  "topic, file PATH or none, got 'console'");
	CHECK_STR(load_err("log_dest dlt\n"),
		  "t.conf:1: option 'log_dest': 'dlt' is not supported yet");
}

TEST(config_log_type_accumulates_all_and_none)
{
	CHECK_STR(load_err("log_type warning\n"), "");
	CHECK_EQ(cfg_g.log_type, KITE_LOG_WARNING);
	CHECK_STR(load_err("log_type error\nlog_type warning\nlog_type notice\n"
			   "log_type information\nlog_type debug\n"
			   "log_type subscribe\nlog_type unsubscribe\n"
			   "log_type websockets\n"),
		  "");
	CHECK_EQ(cfg_g.log_type, KITE_LOG_ALL);
	CHECK_STR(load_err("log_type all\n"), "");
	CHECK_EQ(cfg_g.log_type, KITE_LOG_ALL);
	CHECK_STR(load_err("log_type all\nlog_type none\n"), "");
	CHECK_EQ(cfg_g.log_type, 0);
	CHECK_STR(load_err("log_type none\nlog_type debug\n"), "");
	CHECK_EQ(cfg_g.log_type, KITE_LOG_DEBUG);
}

TEST(config_log_type_invalid_value_is_reported)
{
	CHECK_STR(load_err("log_type verbose\n"),
		  "t.conf:1: option 'log_type': expects error, warning, notice, "
		  "information, debug, subscribe, unsubscribe, websockets, all "
		  "or none, got 'verbose'");
	CHECK_STR(load_err("log_type internal\n"),
		  "t.conf:1: option 'log_type': 'internal' is not supported "
		  "yet");
}

/* ---- files and include_dir --------------------------------------------- */

TEST(config_load_reads_file_and_records_path)
{
	char dirbuf[64];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	char path[512];
	snprintf(path, sizeof(path), "%s", write_file(dir, "kite.conf",
						      "listener 1883\n"
						      "max_keepalive 60\n"));
	CHECK_STR(load_file_err(path), "");
	CHECK_STR(cfg_g.path, path);
	CHECK_STR(cfg_g.listeners[0].file, path);
	CHECK_EQ(cfg_g.max_keepalive_s, 60);

	write_file(dir, "bad.conf", "listener 1883\nbogus 1\n");
	char want[400];
	snprintf(want, sizeof(want), "%s/bad.conf:2: unknown option 'bogus'",
		 dir);
	snprintf(path, sizeof(path), "%s/bad.conf", dir);
	CHECK_STR(load_file_err(path), want);
	tmpdir_remove(dir);
}

TEST(config_unreadable_file_reports_strerror)
{
	CHECK_STR(load_file_err("/nonexistent-kite-dir/kite.conf"),
		  "/nonexistent-kite-dir/kite.conf: No such file or directory");
	CHECK_STR(load_file_err("/tmp"), "/tmp: Is a directory");
}

TEST(config_file_larger_than_limit_is_an_error)
{
	char dirbuf[64];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	char path[256], want[300];
	snprintf(path, sizeof(path), "%s/big.conf", dir);
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (f) {
		static char comments[64 * 1024];
		memset(comments, '#', sizeof(comments));
		comments[sizeof(comments) - 1] = '\n';
		for (int i = 0; i < 64; i++) /* 4 MiB */
			fwrite(comments, 1, sizeof(comments), f);
		fclose(f);
	}
	snprintf(want, sizeof(want), "%s: File too large", path);
	CHECK_STR(load_file_err(path), want);
	tmpdir_remove(dir);
}

TEST(config_nul_byte_in_file_is_an_error)
{
	char dirbuf[64];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	char path[256];
	snprintf(path, sizeof(path), "%s/nul.conf", dir);
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (f) {
		fwrite("listener 1883\nsys_\0interval 5\n", 1, 30, f);
		fclose(f);
	}
	char want[300];
	snprintf(want, sizeof(want), "%s:2: NUL byte in line", path);
	CHECK_STR(load_file_err(path), want);
	tmpdir_remove(dir);
}

TEST(config_include_dir_reads_conf_files_in_mosquitto_order)
{
	char dirbuf[64];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	char inc[128];
	snprintf(inc, sizeof(inc), "%s/conf.d", dir);
	CHECK_EQ(mkdir(inc, 0700), 0);
	write_file(inc, "b.conf", "listener 1004\n");
	write_file(inc, "a.conf", "listener 1003\n");
	write_file(inc, "A.conf", "listener 1002\n");
	write_file(inc, "10-first.conf", "listener 1001\n");
	write_file(inc, "notes.txt", "bogus\n");
	write_file(inc, ".conf", "bogus\n"); /* Mosquitto needs a name */
	write_file(inc, "x.conf.bak", "bogus\n");

	char text[256];
	snprintf(text, sizeof(text),
		 "listener 1000\ninclude_dir %s\nlistener 1005\n", inc);
	CHECK_STR(load_err(text), "");
	CHECK_EQ(cfg_g.listener_count, 6);
	for (unsigned i = 0; i < cfg_g.listener_count && i < 6; i++)
		CHECK_EQ(cfg_g.listeners[i].port, 1000 + i);
	char want[256];
	snprintf(want, sizeof(want), "%s/10-first.conf", inc);
	CHECK_STR(cfg_g.listeners[1].file, want);
	CHECK_EQ(cfg_g.listeners[1].line, 1);

	/* A trailing slash does not double up in the file names. */
	snprintf(text, sizeof(text), "include_dir %s/\n", inc);
	CHECK_STR(load_err(text), "");
	CHECK_STR(cfg_g.listeners[0].file, want);
	tmpdir_remove(dir);
}

TEST(config_include_dir_error_names_included_file_and_line)
{
	char dirbuf[64];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	write_file(dir, "a.conf", "listener 1883\n");
	write_file(dir, "b.conf", "# TLS\n\nlistener 8883\nfrobnicate true\n");
	char text[256], want[256];
	snprintf(text, sizeof(text), "include_dir %s\nlistener 1884\n", dir);
	snprintf(want, sizeof(want),
		 "%s/b.conf:4: unknown option 'frobnicate'", dir);
	CHECK_STR(load_err(text), want);
	tmpdir_remove(dir);
}

TEST(config_include_dir_missing_directory_is_an_error)
{
	CHECK_STR(load_err("\ninclude_dir /nonexistent-kite-dir\n"),
		  "t.conf:2: option 'include_dir': cannot open directory "
		  "'/nonexistent-kite-dir': No such file or directory");
}

TEST(config_include_dir_inside_an_included_file_is_ignored)
{
	char dirbuf[64];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	char sub[128], text[256];
	snprintf(sub, sizeof(sub), "%s/sub", dir);
	CHECK_EQ(mkdir(sub, 0700), 0);
	write_file(sub, "x.conf", "listener 1999\n");
	snprintf(text, sizeof(text), "listener 1883\ninclude_dir %s\n", sub);
	write_file(dir, "a.conf", text);
	snprintf(text, sizeof(text), "include_dir %s\n", dir);
	CHECK_STR(load_err(text), "");
	CHECK_EQ(cfg_g.listener_count, 1); /* sub/ was not read */
	CHECK_EQ(cfg_g.listeners[0].port, 1883);
	tmpdir_remove(dir);
}

TEST(config_included_file_starts_without_a_current_listener)
{
	char dirbuf[64];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	/* Mosquitto's current listener is per file: options at the top of
	 * an included file go to the default listener, and the main file
	 * carries on with its own listener afterwards. */
	write_file(dir, "a.conf", "max_connections 5\nport 1999\n"
				  "listener 1884\nmax_connections 6\n");
	char text[256];
	snprintf(text, sizeof(text),
		 "listener 1883\ninclude_dir %s\nmax_connections 7\n", dir);
	CHECK_STR(load_err(text), "");
	CHECK_EQ(cfg_g.listener_count, 3);
	CHECK_EQ(cfg_g.listeners[0].port, 1883);
	CHECK_EQ(cfg_g.listeners[0].max_connections, 7);
	CHECK_EQ(cfg_g.listeners[1].port, 1884);
	CHECK_EQ(cfg_g.listeners[1].max_connections, 6);
	CHECK_EQ(cfg_g.listeners[2].port, 1999);
	CHECK_EQ(cfg_g.listeners[2].max_connections, 5);
	tmpdir_remove(dir);
}

TEST(config_include_dir_conf_entry_that_is_a_directory_is_an_error)
{
	char dirbuf[64];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	char sub[128], text[256], want[300];
	snprintf(sub, sizeof(sub), "%s/dir.conf", dir);
	CHECK_EQ(mkdir(sub, 0700), 0);
	snprintf(text, sizeof(text), "include_dir %s\n", dir);
	snprintf(want, sizeof(want), "%s: Is a directory", sub);
	CHECK_STR(load_err(text), want);
	tmpdir_remove(dir);
}

/* Debian 12's /etc/mosquitto/mosquitto.conf, as packaged. */
/* Debian's stock /etc/mosquitto/mosquitto.conf (its include_dir aside). */
TEST(config_debian_default_config_takes_persistence)
{
	const char *debian = "# Place your local configuration in "
			     "/etc/mosquitto/conf.d/\n"
			     "#\n"
			     "# A full description of the configuration file "
			     "is at\n"
			     "# /usr/share/doc/mosquitto/examples/"
			     "mosquitto.conf.example\n"
			     "\n"
			     "pid_file /run/mosquitto/mosquitto.pid\n"
			     "\n"
			     "persistence true\n"
			     "persistence_location /var/lib/mosquitto/\n"
			     "\n"
			     "log_dest file /var/log/mosquitto/mosquitto.log\n";
	CHECK_STR(load_err(debian), "");
	CHECK(cfg_g.persistence);
	CHECK_STR(cfg_g.persistence_location, "/var/lib/mosquitto/");
	CHECK_STR(cfg_g.persistence_file, "mosquitto.db");
	CHECK_EQ(cfg_g.autosave_interval_s, 1800);
	CHECK_EQ(cfg_g.persistence_sync_ms, 1000);
}

TEST(config_persistence_options_parse_as_mosquitto_does)
{
	CHECK_STR(load_err("persistence false\npersistence_file kite.db\n"
			   "autosave_interval 60\nautosave_on_changes true\n"
			   "persistent_client_expiration 14d\n"
			   "persistence_sync always\n"), "");
	CHECK(!cfg_g.persistence);
	CHECK_STR(cfg_g.persistence_file, "kite.db");
	CHECK_EQ(cfg_g.autosave_interval_s, 60);
	CHECK(cfg_g.autosave_on_changes);
	CHECK_EQ(cfg_g.persistent_client_expiration_s, 14 * 86400);
	CHECK_EQ(cfg_g.persistence_sync_ms, KITE_PERSISTENCE_SYNC_ALWAYS);
	static const struct {
		const char *line;
		uint32_t secs;
	} exp[] = {{"2h", 7200}, {"1w", 604800}, {"2m", 5184000},
		   {"1y", 31536000}};
	for (size_t i = 0; i < sizeof(exp) / sizeof(exp[0]); i++) {
		char text[64];
		snprintf(text, sizeof(text), "persistent_client_expiration %s\n",
			 exp[i].line);
		CHECK_STR(load_err(text), "");
		CHECK_EQ(cfg_g.persistent_client_expiration_s, exp[i].secs);
	}
	CHECK_STR(load_err("persistence_sync never\n"), "");
	CHECK_EQ(cfg_g.persistence_sync_ms, KITE_PERSISTENCE_SYNC_NEVER);
	CHECK_STR(load_err("persistence_sync 250\n"), "");
	CHECK_EQ(cfg_g.persistence_sync_ms, 250);
	CHECK_STR(load_err("persistent_client_expiration 3x\n"),
		  "t.conf:1: option 'persistent_client_expiration': expects a "
		  "duration such as 12h, 14d, 2w, 6m or 1y, got '3x'");
	CHECK_STR(load_err("persistence_sync 0\n"),
		  "t.conf:1: option 'persistence_sync': expects always, never or "
		  "a number of milliseconds (1-3600000), got '0'");
	CHECK_STR(load_err("autosave_interval -1\n"),
		  "t.conf:1: option 'autosave_interval': expects a number of "
		  "seconds (or changes) >= 0, got '-1'");
}

TEST(config_mosquitto_example_config_parses_as_local_only)
{
	const char *example = "/usr/share/doc/mosquitto/examples/mosquitto.conf";
	if (access(example, R_OK) != 0)
		SKIP("%s not installed (Debian package mosquitto)", example);
	CHECK_STR(load_file_err(example), "");
	CHECK(cfg_g.local_only);
}

TEST(config_shard_count_is_cpus_when_zero)
{
	config_defaults(&cfg_g);
	unsigned n = config_shard_count(&cfg_g);
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	CHECK(n >= 1 && n <= KITE_SHARDS_MAX);
	if (cpus >= 1 && cpus <= KITE_SHARDS_MAX)
		CHECK_EQ(n, cpus);
	cfg_g.shards = 3;
	CHECK_EQ(config_shard_count(&cfg_g), 3);
}

/* ---- log --------------------------------------------------------------- */

/* Points fd at path (truncated); returns a dup of the old fd. */
static int redirect_fd(int fd, const char *path)
{
	fflush(stdout);
	fflush(stderr);
	int saved = dup(fd);
	int f = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (f >= 0) {
		dup2(f, fd);
		close(f);
	}
	return saved;
}

static void restore_fd(int fd, int saved)
{
	if (saved >= 0) {
		dup2(saved, fd);
		close(saved);
	}
}

/* "<unix time in [t0, now]>: msg\n" exactly. */
static bool log_line_is(const char *text, time_t t0, const char *msg)
{
	char *end;
	long long t = strtoll(text, &end, 10);
	if (end == text || t < (long long)t0 || t > (long long)time(NULL))
		return false;
	if (strncmp(end, ": ", 2) != 0)
		return false;
	size_t len = strlen(msg);
	return !strncmp(end + 2, msg, len) && !strcmp(end + 2 + len, "\n");
}

static void log_cfg(struct kite_config *cfg, unsigned dest, unsigned types,
		    const char *file)
{
	config_defaults(cfg);
	cfg->log_dest = dest;
	cfg->log_type = types;
	if (file)
		snprintf(cfg->log_file, sizeof(cfg->log_file), "%s", file);
}

TEST(log_default_writes_errors_to_information_to_stderr)
{
	char dirbuf[64], path[128];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/stderr", dir);
	log_close(); /* back to the pre-configuration defaults */
	CHECK(log_enabled(KITE_LOG_ERR));
	CHECK(log_enabled(KITE_LOG_WARNING));
	CHECK(log_enabled(KITE_LOG_NOTICE));
	CHECK(log_enabled(KITE_LOG_INFO));
	CHECK(!log_enabled(KITE_LOG_DEBUG));
	CHECK(!log_enabled(KITE_LOG_SUBSCRIBE));

	time_t t0 = time(NULL);
	int saved = redirect_fd(STDERR_FILENO, path);
	log_msg(KITE_LOG_INFO, "hello %d", 42);
	log_msg(KITE_LOG_DEBUG, "not shown");
	restore_fd(STDERR_FILENO, saved);
	CHECK(log_line_is(slurp(path), t0, "hello 42"));
	tmpdir_remove(dir);
}

TEST(log_file_lines_are_unix_time_colon_message)
{
	char dirbuf[64], path[128];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/kite.log", dir);
	write_file(dir, "kite.log", "old line\n"); /* appended to */
	struct kite_config cfg;
	log_cfg(&cfg, KITE_LOGDEST_FILE, KITE_LOG_ALL, path);
	time_t t0 = time(NULL);
	CHECK_EQ(log_configure(&cfg), 0);
	log_msg(KITE_LOG_NOTICE, "client %s connected", "c1");
	log_close();

	const char *text = slurp(path);
	CHECK(!strncmp(text, "old line\n", 9));
	CHECK(log_line_is(text + 9, t0, "client c1 connected"));
	tmpdir_remove(dir);
}

TEST(log_type_filters_lines)
{
	char dirbuf[64], path[128];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/kite.log", dir);
	struct kite_config cfg;
	log_cfg(&cfg, KITE_LOGDEST_FILE, KITE_LOG_ERR | KITE_LOG_SUBSCRIBE,
		path);
	time_t t0 = time(NULL);
	CHECK_EQ(log_configure(&cfg), 0);
	CHECK(log_enabled(KITE_LOG_ERR));
	CHECK(log_enabled(KITE_LOG_SUBSCRIBE));
	CHECK(!log_enabled(KITE_LOG_INFO));
	log_msg(KITE_LOG_INFO, "info");
	log_msg(KITE_LOG_DEBUG, "debug");
	log_msg(KITE_LOG_ERR, "err");
	log_close();
	CHECK(log_line_is(slurp(path), t0, "err"));
	tmpdir_remove(dir);
}

TEST(log_enabled_is_false_with_no_destination)
{
	struct kite_config cfg;
	log_cfg(&cfg, 0, KITE_LOG_ALL, NULL);
	CHECK_EQ(log_configure(&cfg), 0);
	CHECK(!log_enabled(KITE_LOG_ERR));
	log_cfg(&cfg, KITE_LOGDEST_TOPIC, KITE_LOG_ALL, NULL);
	CHECK_EQ(log_configure(&cfg), 0);
	CHECK(!log_enabled(KITE_LOG_ERR)); /* $SYS is not written here */
	log_close();
	CHECK(log_enabled(KITE_LOG_ERR));
}

TEST(log_configure_reopens_the_file)
{
	char dirbuf[64], path[128], rotated[128];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/kite.log", dir);
	snprintf(rotated, sizeof(rotated), "%s/kite.log.1", dir);
	struct kite_config cfg;
	log_cfg(&cfg, KITE_LOGDEST_FILE, KITE_LOG_ALL, path);
	time_t t0 = time(NULL);
	CHECK_EQ(log_configure(&cfg), 0);
	log_msg(KITE_LOG_ERR, "before");
	CHECK_EQ(rename(path, rotated), 0); /* logrotate, then SIGHUP */
	CHECK_EQ(log_configure(&cfg), 0);
	log_msg(KITE_LOG_ERR, "after");
	log_close();
	CHECK(log_line_is(slurp(rotated), t0, "before"));
	CHECK(log_line_is(slurp(path), t0, "after"));
	struct stat sb;
	CHECK_EQ(stat(path, &sb), 0);
	CHECK_EQ(sb.st_mode & 0777, 0600);
	tmpdir_remove(dir);
}

TEST(log_configure_failure_keeps_the_old_destination)
{
	char dirbuf[64], path[128];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/kite.log", dir);
	struct kite_config cfg, bad;
	log_cfg(&cfg, KITE_LOGDEST_FILE, KITE_LOG_ERR, path);
	log_cfg(&bad, KITE_LOGDEST_STDOUT | KITE_LOGDEST_FILE, KITE_LOG_ALL,
		"/nonexistent-kite-dir/kite.log");
	time_t t0 = time(NULL);
	CHECK_EQ(log_configure(&cfg), 0);
	CHECK_EQ(log_configure(&bad), -1);
	CHECK(!log_enabled(KITE_LOG_DEBUG));
	log_msg(KITE_LOG_ERR, "still here");
	log_close();
	CHECK(log_line_is(slurp(path), t0, "still here"));
	tmpdir_remove(dir);
}

TEST(log_long_message_is_cut_to_one_line)
{
	char dirbuf[64], path[128];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/kite.log", dir);
	struct kite_config cfg;
	log_cfg(&cfg, KITE_LOGDEST_FILE, KITE_LOG_ALL, path);
	CHECK_EQ(log_configure(&cfg), 0);
	static char big[5000];
	memset(big, 'x', sizeof(big) - 1);
	log_msg(KITE_LOG_WARNING, "%s", big);
	log_msg(KITE_LOG_WARNING, "next");
	log_close();
	const char *text = slurp(path);
	const char *nl = strchr(text, '\n');
	CHECK(nl != NULL);
	if (nl) {
		CHECK_EQ(nl - text + 1, 1024);
		CHECK(strstr(nl + 1, ": next\n") != NULL);
	}
	tmpdir_remove(dir);
}

static const char *log_one_line(struct kite_config *cfg, const char *path,
				enum kite_log_type type, const char *msg)
{
	cfg->log_dest = KITE_LOGDEST_FILE;
	cfg->log_type = KITE_LOG_ALL;
	snprintf(cfg->log_file, sizeof(cfg->log_file), "%s", path);
	unlink(path);
	if (log_configure(cfg) < 0)
		return "";
	log_msg(type, "%s", msg);
	log_close();
	return slurp(path);
}

TEST(log_timestamp_false_and_timestamp_format)
{
	char dirbuf[64], path[128];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/kite.log", dir);
	struct kite_config cfg;
	config_defaults(&cfg);
	cfg.log_timestamp = false;
	CHECK_STR(log_one_line(&cfg, path, KITE_LOG_NOTICE, "plain"), "plain\n");
	cfg.log_timestamp = true;
	snprintf(cfg.log_timestamp_format, sizeof(cfg.log_timestamp_format),
		 "[%%Y]");
	char want[64];
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	snprintf(want, sizeof(want), "[%d]: stamped\n", tm.tm_year + 1900);
	CHECK_STR(log_one_line(&cfg, path, KITE_LOG_NOTICE, "stamped"), want);
	tmpdir_remove(dir);
}

TEST(log_format_json_escapes_and_stays_one_line)
{
	char dirbuf[64], path[128];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/kite.log", dir);
	struct kite_config cfg;
	config_defaults(&cfg);
	cfg.log_format = KITE_LOG_FORMAT_JSON;
	const char *text = log_one_line(&cfg, path, KITE_LOG_WARNING,
					"a \"q\" \\ \n\x01 \xff \xc3\xa9");
	CHECK(!strncmp(text, "{\"time\":\"", 9));
	CHECK(strstr(text, "\"type\":\"warning\",\"priority\":4,") != NULL);
	CHECK(strstr(text, "\"message\":\"a \\\"q\\\" \\\\ \\u000a\\u0001 "
			   "\\ufffd \xc3\xa9\"}\n") != NULL);
	static char big[5000];
	memset(big, '"', sizeof(big) - 1);
	text = log_one_line(&cfg, path, KITE_LOG_ERR, big);
	const char *nl = strchr(text, '\n');
	CHECK(nl != NULL && nl[1] == '\0');
	CHECK(nl != NULL && nl - text + 1 <= 1024);
	CHECK(nl != NULL && !strncmp(nl - 2, "\"}", 2));
	tmpdir_remove(dir);
}

TEST(log_stderr_under_journald_has_priority_and_no_timestamp)
{
	char dirbuf[64], path[128], js[64];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/stderr", dir);
	int saved = redirect_fd(STDERR_FILENO, path);
	struct stat st;
	fstat(STDERR_FILENO, &st);
	snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	setenv("JOURNAL_STREAM", js, 1);
	struct kite_config cfg;
	config_defaults(&cfg);
	log_configure(&cfg);
	log_msg(KITE_LOG_WARNING, "careful");
	log_msg(KITE_LOG_ERR, "broken");
	cfg.log_format_set = true; /* log_format mosquitto: as asked */
	log_configure(&cfg);
	log_msg(KITE_LOG_NOTICE, "mosq");
	log_close();
	unsetenv("JOURNAL_STREAM");
	restore_fd(STDERR_FILENO, saved);
	const char *text = slurp(path);
	CHECK(!strncmp(text, "<4>careful\n<3>broken\n", 21));
	CHECK(log_line_is(text + 21, 0, "mosq"));
	tmpdir_remove(dir);
}

TEST(log_stdout_destination_writes_stdout)
{
	char dirbuf[64], path[128];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/stdout", dir);
	struct kite_config cfg;
	log_cfg(&cfg, KITE_LOGDEST_STDOUT, KITE_LOG_ALL, NULL);
	time_t t0 = time(NULL);
	int saved = redirect_fd(STDOUT_FILENO, path);
	CHECK_EQ(log_configure(&cfg), 0);
	log_msg(KITE_LOG_DEBUG, "to stdout");
	log_close();
	restore_fd(STDOUT_FILENO, saved);
	CHECK(log_line_is(slurp(path), t0, "to stdout"));
	tmpdir_remove(dir);
}

#define LOG_THREADS 4
#define LOG_LINES 500

static void *log_thread_cb(void *arg)
{
	long id = (long)(intptr_t)arg;
	for (int i = 0; i < LOG_LINES; i++)
		log_msg(KITE_LOG_INFO, "thread %ld line %d %s", id, i,
			"padding-padding-padding-padding-padding-padding");
	return NULL;
}

TEST(log_lines_from_many_threads_never_interleave)
{
	char dirbuf[64], path[128];
	const char *dir = tmpdir_make(dirbuf);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/kite.log", dir);
	struct kite_config cfg;
	log_cfg(&cfg, KITE_LOGDEST_FILE, KITE_LOG_ALL, path);
	CHECK_EQ(log_configure(&cfg), 0);
	pthread_t th[LOG_THREADS];
	for (long i = 0; i < LOG_THREADS; i++)
		pthread_create(&th[i], NULL, log_thread_cb, (void *)(intptr_t)i);
	for (int i = 0; i < LOG_THREADS; i++)
		pthread_join(th[i], NULL);
	log_close();

	int lines = 0, bad = 0;
	const char *p = slurp(path);
	while (*p) {
		const char *nl = strchr(p, '\n');
		long id;
		int n, used = 0;
		if (!nl)
			break;
		if (sscanf(p, "%*d: thread %ld line %d padding-padding-padding-"
			      "padding-padding-padding%n",
			   &id, &n, &used) != 2 ||
		    p + used != nl)
			bad++;
		lines++;
		p = nl + 1;
	}
	CHECK_EQ(lines, LOG_THREADS * LOG_LINES);
	CHECK_EQ(bad, 0);
	tmpdir_remove(dir);
}

TEST(config_websockets_listener_options)
{
	config_defaults(&cfg_g);
	char err[KITE_CONFIG_ERR_MAX];
	CHECK_EQ(config_load_string(&cfg_g, "t.conf",
				    "listener 1883\nlistener 8080\n"
				    "protocol websockets\nhttp_dir /srv/www\n"
				    "websockets_headers_size 2048\n"
				    "websockets_log_level 255\n",
				    err, sizeof(err)), 0);
	CHECK_EQ(cfg_g.listeners[0].protocol, LISTENER_PROTO_MQTT);
	CHECK_EQ(cfg_g.listeners[1].protocol, LISTENER_PROTO_WEBSOCKETS);
	CHECK_STR(cfg_g.listeners[1].http_dir, "/srv/www");
	CHECK_EQ(cfg_g.websockets_headers_size, 2048);
	CHECK_EQ(cfg_g.websockets_log_level, 255);
	CHECK_STR(load_err("listener 1883\nprotocol http\n"),
		  "t.conf:2: option 'protocol': expects mqtt, websockets or "
		  "metrics, got 'http'");
}

TEST(config_enable_proxy_protocol_is_per_listener_and_checked)
{
	CHECK_STR(load_err("listener 1883\nenable_proxy_protocol 2\n"
			   "listener 1884\nenable_proxy_protocol 1\n"
			   "listener 1885\n"), "");
	CHECK_EQ(cfg_g.listeners[0].proxy_protocol, 2);
	CHECK_EQ(cfg_g.listeners[1].proxy_protocol, 1);
	CHECK_EQ(cfg_g.listeners[2].proxy_protocol, 0);
	CHECK_STR(load_err("listener 1883\nenable_proxy_protocol 3\n"),
		  "t.conf:2: option 'enable_proxy_protocol': expects a number "
		  "1-2, got '3'");
	CHECK_STR(load_err("listener 1883\nenable_proxy_protocol\n"),
		  "t.conf:2: option 'enable_proxy_protocol': missing value "
		  "(expects a number 1-2)");
	CHECK_STR(load_err("listener 9100\nprotocol metrics\n"
			   "enable_proxy_protocol 2\n"),
		  "t.conf:1: listener on port 9100: enable_proxy_protocol on a "
		  "metrics listener is not supported");
}
