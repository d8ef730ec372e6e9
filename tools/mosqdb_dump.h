/* A mosquitto.db as text, one line per item in file order, for tests and
 * for the planned `kite db dump FILE`.
 *
 * Each line is a kind, then space-separated key=value tokens; values are
 * numbers or bytes, bytes with everything outside '!'..'~' and the four
 * characters % = : , written as %XX (Python's unquote_to_bytes reads them
 * back). A key may repeat (user_property, subscription_id). Lines:
 *   header version= crc=
 *   cfg offset= last_db_id= shutdown=
 *   msg offset= store_id= qos= retain= topic= payload= source_id=
 *       source_username= source_port= source_mid= expiry_time= [props]
 *   retain offset= store_id=
 *   client offset= id= username= session_expiry_interval=
 *       session_expiry_time= last_mid= listener_port=
 *   sub offset= client_id= filter= qos= no_local= retain_as_published=
 *       options= identifier=
 *   client_msg offset= client_id= store_id= mid= qos= retain= dup=
 *       direction=in|out state=NAME [props]
 *   unknown offset= type= length=
 *   end rc=NAME offset= chunks=
 * [props] are the MQTT 5 properties present: payload_format=
 * message_expiry= content_type= response_topic= correlation_data=
 * subscription_id= topic_alias= user_property=KEY:VALUE. */
#ifndef KITE_TOOLS_MOSQDB_DUMP_H
#define KITE_TOOLS_MOSQDB_DUMP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/mosqdb.h"

/* Writes buf's items to out, then the end line; returns mosqdb_read's
 * enum mosqdb_rc (the reason is in st->err). Complete chunks before an
 * error are written too. */
int mosqdb_dump(FILE *out, const uint8_t *buf, size_t len,
		struct mosqdb_status *st);

/* argv[0] the command's name (for messages), argv[1] the file. Dumps to
 * stdout; errors are one line on stderr, "NAME: FILE: reason". Returns the
 * exit status: 0 read whole, 1 not (what was complete is still dumped),
 * 2 usage. */
int mosqdb_dump_main(int argc, char **argv);

#endif
