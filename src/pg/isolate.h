/* Isolating the rows that make a batch fail: the failed range is split
 * (around the row PostgreSQL's error names, when it names one and it lies
 * inside the range; else in halves) and the parts are retried in order,
 * until every row is either loaded or alone and failing. Pure bookkeeping:
 * the shard runs the statements. */
#ifndef SLUICE_PG_ISOLATE_H
#define SLUICE_PG_ISOLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct iso_range {
	uint32_t lo, hi; /* rows [lo, hi) of the batch */
};

struct isolate {
	struct iso_range *todo; /* a stack: the next range to try is on top */
	size_t n, cap;
};

void iso_reset(struct isolate *s);
void iso_free(struct isolate *s);
/* Range r failed with a per-row error; line is the 1-based row within r
 * that the error names, or 0. Returns true when r is a single row (the
 * culprit: dead-letter it); otherwise queues r's parts and returns false. */
bool iso_split(struct isolate *s, struct iso_range r, long line);
/* The next range to try; false when none is left. */
bool iso_next(struct isolate *s, struct iso_range *r);

#endif
