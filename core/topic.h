/* MQTT topic matching (4.7): the one implementation of how a filter
 * relates to a topic name or to another filter. The subscription tries
 * (core/trie.c, core/gtrie.c, core/retain.c) walk their trees by these
 * rules, the ACL (acl/acl.c) and the bridge (io/bridge.c) call them, and
 * the unit tests and fuzz_trie check that the trees agree with them.
 *
 * Rules, as Mosquitto's mosquitto_topic_matches_sub:
 *  - levels are split on '/'; empty levels are real levels ("a//b" has
 *    three, "a/" has two, "/" has two empty ones);
 *  - '+' matches exactly one level, empty included ("a/+" matches "a/");
 *  - '#' matches its parent level and every level below ("a/#" matches
 *    "a", "a/" and "a/b/c");
 *  - a topic whose first byte is '$' is not matched by a filter whose first
 *    level is a wildcard ("#" and "+/x" miss "$SYS/x"; "$SYS/#" does not);
 *  - an empty filter or an empty topic matches nothing (neither is valid on
 *    the wire; an ACL pattern whose %u or %c expanded to nothing must grant
 *    nothing).
 * Strings are not NUL-terminated: no function reads past its length.
 * Filters must be valid (mqtt_topic_filter_valid); topics need not be. */
#ifndef KITE_TOPIC_H
#define KITE_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

/* End of the level that starts at pos: the index of the next '/', or len. */
size_t topic_level_end(const char *s, size_t len, size_t pos);

/* True when filter matches topic name. */
bool topic_matches(const char *filter, size_t flen, const char *topic,
		   size_t tlen);

/* True when some topic name matches both filters. */
bool topic_filters_intersect(const char *a, size_t alen, const char *b,
			     size_t blen);

/* True when filter `outer` matches every topic name that `inner` matches. */
bool topic_filter_covers(const char *outer, size_t olen, const char *inner,
			 size_t ilen);

#endif
