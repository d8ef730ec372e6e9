/* test_driver.c: drives the flood filter API for tests until kite is wired.
 *
 *   flood-filter-driver --iface IF [--iface IF...] --port P [--port P...]
 *       [--rate R] [--burst B] [--strikes N] [--block S] [--allow S]
 *       [--pin-root DIR]
 *
 * Prints "ready PIN_DIR" (or "error: REASON" and exits 77: the test skips),
 * then answers one line per command on stdin:
 *   strike ADDR | allow ADDR | clear ADDR  -> "ok" / "error: ..."
 *   stats -> "passed=N dropped_rate=N dropped_block=N blocks_added=N sources_allowed=N"
 *   list  -> "ADDR SECONDS" lines, then "end"
 *   cli ARGS... -> runs flood_filter_cli_main (output, then "end")
 * EOF or "quit" unloads and exits 0. */
#include "bpf/flood_filter.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define DRIVER_ARGS_MAX 16

static int parse_addr(const char *s, struct sockaddr_storage *ss)
{
	struct sockaddr_in *in = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, s, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, s, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		return 0;
	}
	return -1;
}

static void run_cli(char *rest)
{
	char *argv[DRIVER_ARGS_MAX + 1] = { "filter" };
	int argc = 1;

	for (char *t = strtok(rest, " \n"); t && argc < DRIVER_ARGS_MAX; t = strtok(NULL, " \n"))
		argv[argc++] = t;
	fflush(stdout);
	printf("rc=%d\nend\n", flood_filter_cli_main(argc, argv));
}

static void serve(struct flood_filter *ff)
{
	char line[512], *arg;
	struct sockaddr_storage ss;
	struct flood_filter_stats st;

	while (fgets(line, sizeof(line), stdin)) {
		line[strcspn(line, "\n")] = 0;
		arg = strchr(line, ' ');
		if (arg)
			*arg++ = 0;
		if (!strcmp(line, "quit"))
			break;
		if (!strcmp(line, "stats")) {
			flood_filter_stats(ff, &st);
			printf("passed=%llu dropped_rate=%llu dropped_block=%llu "
			       "blocks_added=%llu sources_allowed=%llu\n",
			       (unsigned long long)st.passed, (unsigned long long)st.dropped_rate,
			       (unsigned long long)st.dropped_block,
			       (unsigned long long)st.blocks_added,
			       (unsigned long long)st.sources_allowed);
		} else if (!strcmp(line, "list")) {
			flood_filter_list(ff, stdout);
			printf("end\n");
		} else if (!strcmp(line, "cli")) {
			run_cli(arg ? arg : (char[]){ 0 });
		} else if (!arg || parse_addr(arg, &ss)) {
			printf("error: bad command or address\n");
		} else if (!strcmp(line, "strike")) {
			flood_filter_strike(ff, (struct sockaddr *)&ss);
			printf("ok\n");
		} else if (!strcmp(line, "allow")) {
			flood_filter_allow(ff, (struct sockaddr *)&ss);
			printf("ok\n");
		} else if (!strcmp(line, "clear")) {
			int rc = flood_filter_clear(ff, (struct sockaddr *)&ss);

			printf(rc ? "error: %s\n" : "ok\n", strerror(-rc));
		} else {
			printf("error: unknown command\n");
		}
		fflush(stdout);
	}
}

int main(int argc, char **argv)
{
	const char *ifaces[FLOOD_FILTER_IFACES_MAX];
	uint16_t ports[FLOOD_FILTER_PORTS_MAX];
	struct flood_filter_opts o = {
		.ifaces = ifaces, .ports = ports, .syn_rate = 10, .syn_burst = 10,
		.strikes = 3, .block_seconds = 2,
	};
	struct flood_filter *ff;
	char err[256];

	for (int i = 1; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];

		if (!strcmp(k, "--iface") && o.n_ifaces < FLOOD_FILTER_IFACES_MAX)
			ifaces[o.n_ifaces++] = v;
		else if (!strcmp(k, "--port") && o.n_ports < FLOOD_FILTER_PORTS_MAX)
			ports[o.n_ports++] = (uint16_t)atoi(v);
		else if (!strcmp(k, "--rate"))
			o.syn_rate = (uint32_t)atoi(v);
		else if (!strcmp(k, "--burst"))
			o.syn_burst = (uint32_t)atoi(v);
		else if (!strcmp(k, "--strikes"))
			o.strikes = (uint32_t)atoi(v);
		else if (!strcmp(k, "--block"))
			o.block_seconds = (uint32_t)atoi(v);
		else if (!strcmp(k, "--allow"))
			o.allow_seconds = (uint32_t)atoi(v);
		else if (!strcmp(k, "--pin-root"))
			o.pin_root = v;
		else {
			fprintf(stderr, "flood-filter-driver: bad argument %s\n", k);
			return 2;
		}
	}
	ff = flood_filter_load(&o, err, sizeof(err));
	if (!ff) {
		printf("error: %s\n", err);
		return 77;
	}
	printf("ready %s\n", o.pin_root && !*o.pin_root ? "-" : "pinned");
	fflush(stdout);
	serve(ff);
	flood_filter_unload(ff);
	return 0;
}
