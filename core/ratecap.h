/* A cap on how often a peer may make us do something expensive: at most
 * RATECAP_EVENTS events in any window of window_ms. The window slides
 * over the times of the last RATECAP_EVENTS events; a count per calendar
 * second would let twice the cap through a burst that straddles a
 * second's boundary. */
#ifndef KITE_RATECAP_H
#define KITE_RATECAP_H

#include <stdbool.h>
#include <stdint.h>

#define RATECAP_EVENTS 8

struct ratecap {
	uint32_t at_ms[RATECAP_EVENTS]; /* a ring, oldest at next once full */
	uint8_t next;
	uint8_t seen; /* up to RATECAP_EVENTS */
};

/* Counts an event at now_ms (any monotonic milliseconds; only
 * differences under 49 days matter). False, and not counted, when
 * RATECAP_EVENTS events already fell within the window_ms before it. */
static inline bool ratecap_admit(struct ratecap *r, uint64_t now_ms,
				 uint32_t window_ms)
{
	uint32_t now = (uint32_t)now_ms;
	if (r->seen == RATECAP_EVENTS && now - r->at_ms[r->next] < window_ms)
		return false;
	r->at_ms[r->next] = now;
	r->next = (uint8_t)((r->next + 1) % RATECAP_EVENTS);
	if (r->seen < RATECAP_EVENTS)
		r->seen++;
	return true;
}

#endif
