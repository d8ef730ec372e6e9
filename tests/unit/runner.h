/* Minimal C unit test runner. Every test file defines TEST(name) functions;
 * the runner (tests/unit/main.c) runs all registered tests, prints one line
 * per test ("ok   name", "FAIL name", "skip name: reason") and closes with
 * the line "N passed, N failed, N skipped"; it exits 1 if any failed. */
#ifndef KITE_TEST_RUNNER_H
#define KITE_TEST_RUNNER_H
#include <stdio.h>
#include <string.h>

struct test_case {
	const char *name;
	void (*fn)(int *failed);
	struct test_case *next;
};

/* What a test function leaves in its int: bits, so a test that failed a
 * CHECK and then skipped still counts as failed. */
#define TEST_FAILED 1
#define TEST_SKIPPED 2

void test_register(struct test_case *tc);
void test_skip_reason(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

#define TEST(tname)                                                          \
	static void test_##tname(int *test_failed_);                          \
	static struct test_case tc_##tname = {#tname, test_##tname, 0};       \
	__attribute__((constructor)) static void reg_##tname(void)            \
	{                                                                     \
		test_register(&tc_##tname);                                   \
	}                                                                     \
	static void test_##tname(int *test_failed_)

/* Records a failure with its location and keeps going, so one run shows
 * every broken expectation of a test. */
/* Stops the test here and counts it as skipped, not passed, with the
 * reason (printf format) on its line: for a test whose subject is missing
 * on this machine (a kernel feature, an installed file). Only in the body
 * of a TEST. */
#define SKIP(...)                                                            \
	do {                                                                  \
		test_skip_reason(__VA_ARGS__);                                \
		*test_failed_ |= TEST_SKIPPED;                                \
		return;                                                       \
	} while (0)

#define CHECK(cond)                                                          \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "  %s:%d: CHECK(%s) failed\n",        \
				__FILE__, __LINE__, #cond);                   \
			*test_failed_ |= TEST_FAILED;                         \
		}                                                             \
	} while (0)

#define CHECK_EQ(a, b)                                                       \
	do {                                                                  \
		long long a_ = (long long)(a), b_ = (long long)(b);           \
		if (a_ != b_) {                                               \
			fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", \
				__FILE__, __LINE__, #a, #b, a_, b_);          \
			*test_failed_ |= TEST_FAILED;                         \
		}                                                             \
	} while (0)

#define CHECK_STR(a, b)                                                      \
	do {                                                                  \
		const char *a_ = (a), *b_ = (b);                              \
		if (!a_ || !b_ || strcmp(a_, b_) != 0) {                      \
			fprintf(stderr, "  %s:%d: \"%s\" == \"%s\" failed\n", \
				__FILE__, __LINE__, a_ ? a_ : "(null)",       \
				b_ ? b_ : "(null)");                          \
			*test_failed_ |= TEST_FAILED;                         \
		}                                                             \
	} while (0)

#endif
