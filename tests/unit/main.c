#include "runner.h"
#include <stdlib.h>

static struct test_case *tests_head;
static struct test_case **tests_tail = &tests_head;

void test_register(struct test_case *tc)
{
	*tests_tail = tc;
	tests_tail = &tc->next;
}

int main(int argc, char **argv)
{
	const char *only = argc > 1 ? argv[1] : NULL;
	int passed = 0, failed = 0;
	for (struct test_case *tc = tests_head; tc; tc = tc->next) {
		if (only && !strstr(tc->name, only))
			continue;
		int f = 0;
		tc->fn(&f);
		if (f) {
			failed++;
			printf("FAIL %s\n", tc->name);
		} else {
			passed++;
			printf("ok   %s\n", tc->name);
		}
	}
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
