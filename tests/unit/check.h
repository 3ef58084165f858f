/* A minimal assertion kit for the unit tests: each test is a standalone
 * program that exits 0 when every CHECK held, 1 otherwise. */
#ifndef SLUICE_TEST_CHECK_H
#define SLUICE_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                            \
	do {                                                                   \
		check_count++;                                                 \
		if (!(cond)) {                                                 \
			check_failures++;                                      \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, \
				__LINE__, #cond);                              \
		}                                                              \
	} while (0)

#define CHECK_STR(a, b)                                                        \
	do {                                                                   \
		const char *check_a = (a), *check_b = (b);                     \
		check_count++;                                                 \
		if (!check_a || !check_b || strcmp(check_a, check_b) != 0) {   \
			check_failures++;                                      \
			fprintf(stderr, "%s:%d: %s is \"%s\", expected \"%s\"\n", \
				__FILE__, __LINE__, #a, check_a ? check_a : "(null)", \
				check_b ? check_b : "(null)");                 \
		}                                                              \
	} while (0)

static inline int check_done(const char *name)
{
	fprintf(stderr, "%s: %d checks, %d failed\n", name, check_count, check_failures);
	return check_failures ? 1 : 0;
}

#endif
