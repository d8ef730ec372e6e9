/* The broker (io/broker.c): starts the shards, wires the layers
 * together, stops and reloads them. io/main.c uses only this. */
#ifndef KITE_IO_BROKER_H
#define KITE_IO_BROKER_H

#include "core/config.h"
#include "io/security-t.h"
#include "io/shard-t.h"

/* Registers each layer's upcalls (conn_upcalls...); broker_start does it
 * first. For whatever runs the engine without broker_start (the tests/io
 * harness). */
void broker_wire(void);
int broker_start(struct broker *b);
/* Asks every shard to stop and joins them. */
void broker_stop(struct broker *b);
/* Applies a re-read config (the parts that can change at runtime). */
void broker_reload(struct broker *b, const struct kite_config *cfg,
		   struct security *sec);
const char *broker_version(void);

#endif
