#include "runner.h"
#include <stdarg.h>
#include <stdlib.h>

static struct test_case *tests_head;
static struct test_case **tests_tail = &tests_head;
static char skip_reason[256];

void test_register(struct test_case *tc)
{
	*tests_tail = tc;
	tests_tail = &tc->next;
}

void test_skip_reason(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(skip_reason, sizeof(skip_reason), fmt, ap);
	va_end(ap);
}

int main(int argc, char **argv)
{
	const char *only = argc > 1 ? argv[1] : NULL;
	int passed = 0, failed = 0, skipped = 0;
	for (struct test_case *tc = tests_head; tc; tc = tc->next) {
		if (only && !strstr(tc->name, only))
			continue;
		int f = 0;
		skip_reason[0] = 0;
		tc->fn(&f);
		if (f & TEST_FAILED) {
			failed++;
			printf("FAIL %s\n", tc->name);
		} else if (f & TEST_SKIPPED) {
			skipped++;
			printf("skip %s: %s\n", tc->name,
			       skip_reason[0] ? skip_reason : "(no reason given)");
		} else {
			passed++;
			printf("ok   %s\n", tc->name);
		}
	}
	printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
	return failed ? 1 : 0;
}
