/* A batch: the rows of consecutive deliveries on one channel, in one
 * buffer of binary COPY tuples, waiting for or in one load; and those of its
 * messages that became dead letters. Its last delivery tag is acked (with
 * multiple) once it is settled. */
#ifndef SLUICE_BATCH_H
#define SLUICE_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"
#include "pg/copy.h"

struct batch {
	struct buf data; /* envelope tuples, back to back */
	struct row_ref {
		size_t at;	/* offset of the tuple in data */
		uint64_t tag;	/* its delivery tag */
	} *rows;
	uint32_t nrows, cap;
	struct buf dead; /* dead-letter tuples (--dead-letter table) */
	uint64_t *dead_tags;
	uint32_t ndead, dead_cap;
	uint64_t last_tag; /* of the batch's last message */
	int64_t first_ms;  /* monotonic ms when its first message arrived */
	bool orphan;	   /* its channel is gone: never ack, never retry */
};

void batch_reset(struct batch *b);
void batch_free(struct batch *b);
static inline uint32_t batch_msgs(const struct batch *b) { return b->nrows + b->ndead; }

/* The row that starts at data[at] has delivery tag `tag`. */
void batch_add_row(struct batch *b, size_t at, uint64_t tag);
/* The message with this tag and envelope tuple row[0..n) is a dead letter
 * (sqlstate and error say why): a dead-letter row for --dead-letter table,
 * a logged reject to come for --dead-letter reject. */
void batch_add_dead(struct batch *b, const struct config *cfg, uint64_t tag, const uint8_t *row,
		    size_t n, const char *sqlstate, const char *error);
/* Row i's tuple; rows lo..hi-1's tuples, as a COPY's payload. */
struct pgc_rows batch_row(const struct batch *b, uint32_t i);
struct pgc_rows batch_rows(const struct batch *b, uint32_t lo, uint32_t hi);
/* The highest tag of a row not rejected, or 0: basic.ack needs a tag still
 * outstanding, even with multiple set. */
uint64_t batch_ack_tag(const struct batch *b);

#endif
