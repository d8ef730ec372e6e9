#include "acl/acl_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *acl_read_file(const char *path, size_t max, size_t *len, char *err,
		    size_t errlen)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	while (buf) {
		if (n + 1 >= cap) {
			char *nb = cap > max ? NULL : realloc(buf, cap * 2);
			if (!nb) {
				snprintf(err, errlen, "%s: %s", path,
					 cap > max ? "file too large"
						   : "out of memory");
				goto fail_buf;
			}
			buf = nb;
			cap *= 2;
		}
		size_t got = fread(buf + n, 1, cap - 1 - n, f);
		n += got;
		if (got == 0)
			break;
	}
	if (!buf) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto fail_file;
	}
	if (ferror(f)) {
		snprintf(err, errlen, "%s: read error", path);
		goto fail_buf;
	}
	if (n > max) {
		snprintf(err, errlen, "%s: file too large", path);
		goto fail_buf;
	}
	fclose(f);
	buf[n] = '\0';
	*len = n;
	return buf;
fail_buf:
	free(buf);
fail_file:
	fclose(f);
	return NULL;
}
