/* `kite db`: inspects a persistence directory (kite's logs: counts, sizes,
 * damage, a consistency check) or dumps Mosquitto's mosquitto.db, reading
 * only. */
#ifndef KITE_TOOLS_KITEDB_H
#define KITE_TOOLS_KITEDB_H

/* argv[0] is "db". Returns the exit status. */
int kitedb_main(int argc, char **argv);

#endif
