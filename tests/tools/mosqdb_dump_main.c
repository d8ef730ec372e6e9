/* build/mosqdb-dump FILE: the mosquitto.db reader's text form, for the
 * import tests until `kite db dump` exists (tools/mosqdb_dump.h). */
#include "tools/mosqdb_dump.h"

int main(int argc, char **argv)
{
	return mosqdb_dump_main(argc, argv);
}
