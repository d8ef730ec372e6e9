/* kite's version: its one home (the Makefile and the package read it
 * here). A header of its own so that $SYS and the metrics listener,
 * which sit below the broker, can say it. */
#ifndef KITE_IO_VERSION_H
#define KITE_IO_VERSION_H

#define KITE_VERSION "0.1.0"

#endif
