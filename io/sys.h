/* $SYS topics (io/sys.c). */
#ifndef KITE_IO_SYS_H
#define KITE_IO_SYS_H

#include "io/shard-t.h"

void sys_publish(struct shard *s);

#endif
