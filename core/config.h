/* Broker configuration: Mosquitto's config language, as kite reads it.
 *
 * config_load() parses a file (and what it includes) into a struct
 * kite_config. Any unknown or not-yet-supported option, a bad value, or a
 * missing argument is an error reported as "FILE:LINE: what is wrong" and
 * the broker does not start: nothing is silently ignored. */
#ifndef KITE_CONFIG_H
#define KITE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KITE_LISTENERS_MAX 32
#define KITE_PATH_MAX 1024
#define KITE_HOST_MAX 256
#define KITE_SHARDS_MAX 64
#define KITE_CONFIG_ERR_MAX 512

/* log_type bits (Mosquitto names). */
enum kite_log_type {
	KITE_LOG_ERR = 1 << 0,	 /* error */
	KITE_LOG_WARNING = 1 << 1,	 /* warning */
	KITE_LOG_NOTICE = 1 << 2,	 /* notice */
	KITE_LOG_INFO = 1 << 3,	 /* information */
	KITE_LOG_DEBUG = 1 << 4,	 /* debug */
	KITE_LOG_SUBSCRIBE = 1 << 5,	 /* subscribe */
	KITE_LOG_UNSUBSCRIBE = 1 << 6, /* unsubscribe */
	KITE_LOG_WEBSOCKETS = 1 << 7,	 /* websockets (websockets_log_level) */
	KITE_LOG_ALL = 0xff,
};

/* log_dest bits. */
enum kite_log_dest {
	KITE_LOGDEST_STDOUT = 1 << 0,
	KITE_LOGDEST_STDERR = 1 << 1,
	KITE_LOGDEST_SYSLOG = 1 << 2,
	KITE_LOGDEST_FILE = 1 << 3,
	KITE_LOGDEST_TOPIC = 1 << 4, /* accepted: logs go to $SYS/broker/log/... */
};

/* A listener's TLS options, Mosquitto's names. Empty strings: not set. */
struct kite_tls_cfg {
	char cafile[KITE_PATH_MAX], capath[KITE_PATH_MAX];
	char certfile[KITE_PATH_MAX], keyfile[KITE_PATH_MAX];
	char crlfile[KITE_PATH_MAX], dhparamfile[KITE_PATH_MAX];
	char ciphers[512], ciphers_tls13[512];
	char tls_version[16]; /* minimum version: "tlsv1.2" or "tlsv1.3" */
	bool require_certificate;
	bool use_identity_as_username;
	bool use_subject_as_username;
};

#define KITE_FLOOD_IFACES_MAX 8
#define KITE_CLIENTID_PREFIX_MAX 256
#define KITE_CONFIG_WARNINGS_MAX 8

/* socket_domain: which address families a listener without an address
 * binds (Mosquitto's default: both). */
enum kite_socket_domain {
	KITE_DOMAIN_ANY = 0,
	KITE_DOMAIN_IPV4,
	KITE_DOMAIN_IPV6,
};

/* Options scoped like allow_anonymous: global, or per listener with
 * per_listener_settings true (config_finalize copies the global values
 * into every listener otherwise). */
struct kite_listener_sec {
	bool allow_zero_length_clientid;  /* default true */
	char auto_id_prefix[64];	  /* default "auto-" */
	char psk_file[KITE_PATH_MAX];	  /* "" = none */
};

/* What a listener speaks (`protocol`; `metrics` is kite's own). */
enum listener_protocol {
	LISTENER_PROTO_MQTT,	   /* MQTT over TCP or TLS (the default) */
	LISTENER_PROTO_WEBSOCKETS, /* MQTT over RFC 6455, plain or TLS */
	LISTENER_PROTO_METRICS,	   /* Prometheus text at GET /metrics */
};

/* log_format (kite's own): Mosquitto's lines; one JSON object per line;
 * or journald's "<N>message" (chosen by itself for stderr when stderr is
 * the journal, JOURNAL_STREAM). */
enum kite_log_format {
	KITE_LOG_FORMAT_MOSQUITTO,
	KITE_LOG_FORMAT_JSON,
	KITE_LOG_FORMAT_JOURNAL,
};

#define KITE_LOG_TS_FORMAT_MAX 128

/* websockets_headers_size 0 (or unset): the bound on a WebSocket upgrade
 * request's head. Mosquitto's 1024 is libwebsockets' room for the header
 * values it keeps; kite bounds the whole head, request line included. */
#define KITE_WS_HEADERS_SIZE_DEFAULT 4096
#define KITE_WS_HEADERS_SIZE_MAX (1u << 20)

struct kite_listener_cfg {
	char bind_address[KITE_HOST_MAX]; /* "" = all addresses */
	uint16_t port;
	enum listener_protocol protocol;
	int max_connections; /* -1 = unlimited */
	/* With per_listener_settings true, set from the lines after this
	 * listener; otherwise copied from the global value by
	 * config_finalize(). -1 = not set in the file. */
	int allow_anonymous;
	/* Same scoping as allow_anonymous; "" = none. */
	char acl_file[KITE_PATH_MAX];
	char password_file[KITE_PATH_MAX];
	struct kite_listener_sec sec;
	/* TLS: on when certfile or psk_hint is set (Mosquitto's rule). */
	struct kite_tls_cfg tls;
	/* WebSockets listeners: static files served from here; "" = none. */
	char http_dir[KITE_PATH_MAX];
	char psk_hint[KITE_HOST_MAX];	/* "" = no TLS-PSK */
	/* Prefixed to every topic this listener's clients use, removed from
	 * what they receive; "" = none. */
	char mount_point[KITE_HOST_MAX];
	char bind_interface[16];	/* "" = none (IFNAMSIZ) */
	uint8_t socket_domain;		/* enum kite_socket_domain */
	bool use_username_as_clientid;
	/* enable_proxy_protocol 1|2 (Mosquitto 2.1's name): every connection
	 * starts with a PROXY header of that version, whose source address
	 * then stands for the client's; 0 = none. */
	uint32_t proxy_protocol;
	/* Where it was declared, for messages. */
	char file[KITE_PATH_MAX];
	int line;
};

/* Bridges (Mosquitto's `connection` blocks): outgoing MQTT connections
 * to other brokers. Bounded like listeners: a fixed table in the config. */
#define KITE_BRIDGES_MAX 8
#define KITE_BRIDGE_TOPICS_MAX 32
#define KITE_BRIDGE_ADDRS_MAX 8
#define KITE_BRIDGE_TOPIC_MAX 256
#define KITE_BRIDGE_PREFIX_MAX 128
#define KITE_BRIDGE_STR_MAX 256
/* A PSK of up to 512 bytes (OpenSSL's PSK_MAX_PSK_LEN), in hex. */
#define KITE_BRIDGE_PSK_HEX_MAX 1024

enum kite_bridge_dir {
	BRIDGE_OUT = 1,
	BRIDGE_IN = 2,
	BRIDGE_BOTH = 3,
};

struct kite_bridge_topic {
	/* Both topics as used: prefix + pattern (Mosquitto's local_topic
	 * and remote_topic), and the prefixes that are swapped. */
	char local_topic[KITE_BRIDGE_TOPIC_MAX + KITE_BRIDGE_PREFIX_MAX];
	char remote_topic[KITE_BRIDGE_TOPIC_MAX + KITE_BRIDGE_PREFIX_MAX];
	char local_prefix[KITE_BRIDGE_PREFIX_MAX];
	char remote_prefix[KITE_BRIDGE_PREFIX_MAX];
	uint8_t dir; /* enum kite_bridge_dir */
	uint8_t qos;
};

struct kite_bridge_addr {
	char host[KITE_HOST_MAX];
	uint16_t port;
};

struct kite_bridge_cfg {
	char name[KITE_BRIDGE_STR_MAX];
	struct kite_bridge_addr addrs[KITE_BRIDGE_ADDRS_MAX];
	unsigned addr_count;
	bool round_robin;
	struct kite_bridge_topic topics[KITE_BRIDGE_TOPICS_MAX];
	unsigned topic_count;
	bool cleansession;	   /* default false */
	int local_cleansession;	   /* -1: as cleansession */
	char local_clientid[KITE_BRIDGE_STR_MAX];  /* "" = local.<remote> */
	char remote_clientid[KITE_BRIDGE_STR_MAX]; /* "" = hostname.name */
	char remote_username[KITE_BRIDGE_STR_MAX];
	char remote_password[KITE_BRIDGE_STR_MAX];
	bool remote_password_set;
	char local_username[KITE_BRIDGE_STR_MAX];
	char local_password[KITE_BRIDGE_STR_MAX];
	bool notifications;	   /* default true */
	bool notifications_local_only;
	char notification_topic[KITE_BRIDGE_STR_MAX]; /* "" = default */
	uint32_t keepalive_s;	   /* default 60 */
	uint32_t restart_base_s;   /* default 5 (jitter base) */
	uint32_t restart_cap_s;	   /* default 30; 0 = constant base */
	uint8_t start_type;	   /* 0 automatic, 1 lazy, 2 once */
	uint32_t idle_timeout_s, threshold;
	bool try_private;	   /* default true */
	uint8_t protocol;	   /* 4 (mqttv311, default), 3 (mqttv31), 5 */
	bool outgoing_retain;	   /* default true */
	bool attempt_unsubscribe;  /* default true */
	uint32_t max_packet_size;  /* 0 = none */
	char cafile[KITE_PATH_MAX], capath[KITE_PATH_MAX];
	char certfile[KITE_PATH_MAX], keyfile[KITE_PATH_MAX];
	char tls_version[16];
	bool insecure;
	char alpn[64];
	/* bridge_identity / bridge_psk: TLS-PSK instead of certificates
	 * (the key in hex, as Mosquitto takes it). */
	char psk_identity[KITE_BRIDGE_STR_MAX];
	char psk[KITE_BRIDGE_PSK_HEX_MAX + 1];
	bool require_ocsp; /* bridge_require_ocsp */
	char bind_address[KITE_HOST_MAX];
	char file[KITE_PATH_MAX];
	int line;
};

struct kite_config {
	struct kite_listener_cfg listeners[KITE_LISTENERS_MAX];
	unsigned listener_count;

	bool per_listener_settings;
	int allow_anonymous; /* global; -1 = not set */
	char acl_file[KITE_PATH_MAX];	   /* global unless per listener */
	char password_file[KITE_PATH_MAX]; /* global unless per listener */
	struct kite_listener_sec sec;	   /* global unless per listener */
	uint32_t max_topic_alias;	   /* MQTT 5; default 10 */
	uint8_t max_qos;		   /* highest QoS granted; default 2 */

	/* kite's own: the XDP flood filter (none loaded without an iface). */
	char flood_filter_ifaces[KITE_FLOOD_IFACES_MAX][16];
	unsigned flood_filter_iface_count;
	uint32_t flood_filter_syn_rate;	    /* SYNs per source per second */
	uint32_t flood_filter_syn_burst;
	uint32_t flood_filter_strikes;
	uint32_t flood_filter_block_seconds;
	bool flood_filter_required;

	uint32_t websockets_headers_size; /* 0 = KITE_WS_HEADERS_SIZE_DEFAULT */
	int websockets_log_level;	  /* ws/ws.h enum ws_log bits; default 0 */

	uint32_t max_keepalive_s;	 /* default 65535 */
	uint32_t max_packet_size;	 /* 0 = no limit beyond the protocol's */
	uint32_t message_size_limit;	 /* 0 = no limit */
	uint32_t max_inflight_messages; /* default 20; 0 = no limit */
	uint32_t max_queued_messages;	 /* default 1000; 0 = no limit */
	uint64_t max_queued_bytes;	 /* default 0 = no limit */
	bool retain_available;		 /* default true */
	bool connection_messages;	 /* default true */
	uint32_t sys_interval_s;	 /* default 10; 0 = never */
	unsigned log_dest;		 /* enum kite_log_dest bits */
	unsigned log_type;		 /* enum kite_log_type bits */
	char log_file[KITE_PATH_MAX];
	int log_facility;	 /* 0-7: LOG_LOCAL0-7; -1 = LOG_DAEMON */
	bool log_timestamp;	 /* default true */
	/* strftime(3) format, local time; "" = unix seconds (Mosquitto) */
	char log_timestamp_format[KITE_LOG_TS_FORMAT_MAX];
	enum kite_log_format log_format;
	bool log_format_set; /* log_format given: no journald detection */
	char pid_file[KITE_PATH_MAX];
	unsigned shards; /* 0 = one per online CPU */
	/* Each shard bound to one CPU of kite's affinity mask. Off by
	 * default: a bound shard cannot leave a CPU another process keeps
	 * busy, even when others are idle. */
	bool pin_shards;

	/* Mosquitto's general options, its defaults. */
	char user[64];			/* default "mosquitto" (when root) */
	bool user_set;			/* `user` given: a missing user fails */
	bool set_tcp_nodelay;		/* kite's default true (see README) */
	char clientid_prefixes[KITE_CLIENTID_PREFIX_MAX]; /* "" = any id */
	bool check_retain_source;	/* default true */
	bool upgrade_outgoing_qos;	/* default false */
	uint32_t max_inflight_bytes;	/* default 0 = no limit */
	bool queue_qos0_messages;	/* default false */
	uint64_t memory_limit;		/* bytes; default 0 = no limit */
	bool allow_duplicate_messages;	/* accepted; kite sends one copy */

	/* What the parser wants logged once logging is up (deprecated or
	 * obsolete options): messages without the "Warning: " prefix. */
	char warnings[KITE_CONFIG_WARNINGS_MAX][KITE_CONFIG_ERR_MAX];
	unsigned warning_count;

	/* Durable state (docs/PERSISTENCE.md), Mosquitto's options. */
	bool persistence;			/* default false */
	char persistence_location[KITE_PATH_MAX]; /* "" = working directory */
	char persistence_file[KITE_PATH_MAX];	/* default mosquitto.db */
	uint32_t autosave_interval_s;		/* default 1800; compaction */
	bool autosave_on_changes;		/* the interval counts changes */
	/* 3.1.1 persistent sessions (no expiry of their own) end after this
	 * long offline; 0 = never (the default). */
	uint32_t persistent_client_expiration_s;
	/* kite's own: acknowledgements wait for fdatasync (ALWAYS), or the
	 * write and a sync at most this many ms later, or never a sync. */
	uint32_t persistence_sync_ms;

	/* True when no listener, port or bind_address was configured: kite
	 * then listens on 127.0.0.1:1883 only with anonymous access, as
	 * Mosquitto 2 does ("local only mode"). Set by config_finalize(). */
	bool local_only;
	struct kite_bridge_cfg bridges[KITE_BRIDGES_MAX];
	unsigned bridge_count;
	/* kite's own: a cluster on NATS (docs/CLUSTER.md). "" = no cluster.
	 * The URL may list several servers, comma-separated. */
	char cluster_nats_url[1024];
	char cluster_node_name[64]; /* "" = host name and pid */
	/* The file given with -c, "" for none. Kept for reloads. */
	char path[KITE_PATH_MAX];
};

#define KITE_PERSISTENCE_SYNC_ALWAYS 0u
#define KITE_PERSISTENCE_SYNC_NEVER UINT32_MAX

/* Fills Mosquitto 2.0's defaults (no listeners yet). */
void config_defaults(struct kite_config *cfg);

/* Parses `path` into cfg (which config_defaults() prepared), following
 * include_dir. On error returns -1 and writes "FILE:LINE: message" (or
 * "FILE: message" for an unreadable file) into err. */
int config_load(struct kite_config *cfg, const char *path, char *err,
		size_t errlen);

/* Same, from a string, as if it were the file named `name` (for tests and
 * the fuzzer). */
int config_load_string(struct kite_config *cfg, const char *name,
		       const char *text, char *err, size_t errlen);

/* Applies the defaults that depend on the whole file: local-only mode
 * (127.0.0.1:1883, anonymous allowed) when no listener is configured;
 * allow_anonymous false for configured listeners unless set; the global
 * allow_anonymous copied into every listener unless per_listener_settings.
 * Returns -1 with a message for combinations that make no sense (two
 * listeners on the same address and port). */
int config_finalize(struct kite_config *cfg, char *err, size_t errlen);

/* Whether a listener speaks TLS: a certificate or a PSK hint. */
static inline bool config_listener_tls(const struct kite_listener_cfg *l)
{
	return l->tls.certfile[0] || l->psk_hint[0];
}

/* The shard count to run: cfg->shards, or the online CPU count. */
unsigned config_shard_count(const struct kite_config *cfg);

#endif
