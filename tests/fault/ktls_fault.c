/* A fault-injection seam for kite's kernel TLS hand-off, for machines
 * whose kernel has no TLS (CONFIG_TLS off): LD_PRELOAD it into kite.
 *
 * It answers kite's startup probe as a kernel that can do kTLS (and
 * re-key), so kite tries the hand-off on every TLS connection, then makes
 * the hand-off fail the way a real kernel can:
 *
 *   ulp  TCP_ULP "tls" refused (a peer that already sent its FIN: the
 *        socket is no longer ESTABLISHED, ENOTCONN)
 *   rx   TCP_ULP taken, the receive key refused (EINVAL)
 *   tx   the receive key taken, the send key refused (ENOMEM): the
 *        connection can no longer be spoken to
 *
 * The mode is read at every hand-off from the file $KITE_KTLS_FAULT_FILE
 * ("ulp", "rx" or "tx", optionally followed by "delay=MS" to hold the
 * shard inside TCP_ULP while the client's next bytes, close_notify or FIN
 * arrive; each hold first appends a line to $KITE_KTLS_FAULT_FILE.held, so
 * a test can wait until kite is inside it). No file, or an unknown word:
 * "ulp". Keys "taken" here never reach a kernel, so a hand-off that fully
 * succeeds cannot be faked: every mode ends in userspace TLS or a closed
 * connection, which is what the tests assert. Not linked into kite. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#define TLS_TX 1
#define TLS_RX 2

typedef int (*setsockopt_fn)(int, int, int, const void *, socklen_t);

static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;
/* kite's startup probe: the first TCP_ULP socket, then two TLS_TX on it. */
static int probe_fd = -2; /* -2: not seen yet; -1: over */
static int probe_tx;

enum mode { MODE_ULP, MODE_RX, MODE_TX };

static enum mode read_mode(unsigned *delay_ms)
{
	const char *path = getenv("KITE_KTLS_FAULT_FILE");
	char buf[64] = "";
	*delay_ms = 0;
	FILE *f = path ? fopen(path, "re") : NULL;
	if (f) {
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		buf[n] = 0;
		fclose(f);
	}
	const char *d = strstr(buf, "delay=");
	if (d)
		*delay_ms = (unsigned)strtoul(d + 6, NULL, 10);
	if (!strncmp(buf, "rx", 2))
		return MODE_RX;
	if (!strncmp(buf, "tx", 2))
		return MODE_TX;
	return MODE_ULP;
}

/* One line in $KITE_KTLS_FAULT_FILE.held per hold inside TCP_ULP. */
static void say_held(void)
{
	const char *path = getenv("KITE_KTLS_FAULT_FILE");
	char held[4096];
	if (!path || snprintf(held, sizeof(held), "%s.held", path) >= (int)sizeof(held))
		return;
	FILE *f = fopen(held, "ae");
	if (f) {
		fputs("held\n", f);
		fclose(f);
	}
}

static int fail(int e)
{
	errno = e;
	return -1;
}

/* 1: the probe's call, answered with success; 0: not the probe. */
static int probe_call(int fd, int level, int name)
{
	int ours = 0;
	pthread_mutex_lock(&probe_lock);
	if (level == IPPROTO_TCP && probe_fd == -2) {
		probe_fd = fd;
		ours = 1;
	} else if (level == SOL_TLS && fd == probe_fd && name == TLS_TX) {
		ours = 1;
		if (++probe_tx == 2)
			probe_fd = -1;
	}
	pthread_mutex_unlock(&probe_lock);
	return ours;
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	static setsockopt_fn real;
	if (!real)
		real = (setsockopt_fn)dlsym(RTLD_NEXT, "setsockopt");
	int is_ulp = level == IPPROTO_TCP && name == TCP_ULP;
	if (!is_ulp && level != SOL_TLS)
		return real(fd, level, name, val, len);
	if (probe_call(fd, level, name))
		return 0;
	unsigned delay_ms;
	enum mode m = read_mode(&delay_ms);
	if (is_ulp) {
		if (delay_ms) {
			struct timespec ts = {delay_ms / 1000,
					      (long)(delay_ms % 1000) * 1000000};
			say_held();
			nanosleep(&ts, NULL);
		}
		return m == MODE_ULP ? fail(ENOTCONN) : 0;
	}
	if (name == TLS_RX)
		return m == MODE_RX ? fail(EINVAL) : 0;
	if (name == TLS_TX)
		return m == MODE_TX ? fail(ENOMEM) : 0;
	return fail(ENOPROTOOPT);
}
