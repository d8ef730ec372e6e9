/* Keyed hashing for every table whose keys come from the network (client
 * ids, usernames, shared-subscription groups, topics): SipHash under one
 * 128-bit key per process, so no client can choose keys that share a
 * bucket (hash flooding).
 *
 * SipHash-1-3, as Rust's std HashMap and CPython (3.11+) use for their
 * tables: the output never leaves the process, so what is asked of it is
 * unpredictable bucket placement, not MAC-grade unforgeability (2-4); no
 * attack on 1-3 is known in that setting, and it does 4 SipRounds for an
 * 8-byte key where 2-4 does 8.
 *
 * The key comes from getrandom() once, before main() (a constructor, so
 * the engine, the unit tests, the fuzz targets and `kite passwd` cannot
 * forget it). getrandom() blocks until the kernel's pool is initialised;
 * if it fails anyway (a seccomp filter, say) the process aborts with the
 * reason: a predictable key would silently give up the protection. */
#ifndef KITE_HASH_H
#define KITE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_KEY_LEN 16

/* SipHash-1-3 of p under the process key. */
uint64_t hash_bytes(const void *p, size_t len);

/* SipHash-c-d of p under key (the reference's byte order: k0 is key[0..8)
 * little-endian). For tests and callers that need a key of their own. */
uint64_t hash_siphash(const uint8_t key[HASH_KEY_LEN], unsigned c_rounds,
		      unsigned d_rounds, const void *p, size_t len);

#endif
