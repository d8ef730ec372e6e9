/* Helpers shared by acl/acl.c and acl/passwd.c (not public). */
#ifndef KITE_ACL_UTIL_H
#define KITE_ACL_UTIL_H

#include <stddef.h>

/* Whole file, NUL-terminated (the NUL is not counted in *len). NULL with
 * "PATH: reason" in err when it cannot be read or exceeds max bytes. */
char *acl_read_file(const char *path, size_t max, size_t *len, char *err,
		    size_t errlen);

#endif
