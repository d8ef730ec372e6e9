/* CRC32C (Castagnoli), as iSCSI, ext4 and most logs use it: the checksum
 * of every persistence record. The SSE4.2 crc32 instruction where the CPU
 * has it, a table otherwise; both give the same value. */
#ifndef KITE_CRC32C_H
#define KITE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues crc over buf (start with 0). */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/* The portable path alone, for tests comparing the two. */
uint32_t crc32c_table(uint32_t crc, const void *buf, size_t len);

#endif
