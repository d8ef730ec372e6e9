/* core/ratecap: the cap holds over any window, not per calendar second. */
#include "core/ratecap.h"
#include "runner.h"

TEST(ratecap_refuses_the_ninth_event_within_a_window)
{
	struct ratecap r = {0};
	for (int i = 0; i < RATECAP_EVENTS; i++)
		CHECK(ratecap_admit(&r, 5000 + (uint64_t)i * 10, 1000));
	CHECK(!ratecap_admit(&r, 5999, 1000));
	/* A refused event is not counted: the first falls out at 6000. */
	CHECK(ratecap_admit(&r, 6000, 1000));
	CHECK(!ratecap_admit(&r, 6001, 1000));
	CHECK(ratecap_admit(&r, 6010, 1000));
}

TEST(ratecap_counts_a_burst_that_straddles_a_second_whole)
{
	/* Four just before a second's boundary and four just after fill
	 * the window; a per-second count would have admitted eight more. */
	struct ratecap r = {0};
	for (int i = 0; i < 4; i++)
		CHECK(ratecap_admit(&r, 1900 + (uint64_t)i, 1000));
	for (int i = 0; i < 4; i++)
		CHECK(ratecap_admit(&r, 2000 + (uint64_t)i, 1000));
	CHECK(!ratecap_admit(&r, 2010, 1000));
}

TEST(ratecap_admits_a_steady_rate_at_the_cap)
{
	/* One event every window / RATECAP_EVENTS goes on for ever. */
	struct ratecap r = {0};
	for (int i = 0; i < 100; i++)
		CHECK(ratecap_admit(&r, 1ull << 32 | (uint64_t)i * 125, 1000));
}
