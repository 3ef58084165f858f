/* Batch bookkeeping; see batch.h. */
#include "batch.h"

#include <stdlib.h>

#include "clock.h"
#include "log.h"
#include "pg/deadletter.h"

void batch_reset(struct batch *b)
{
	buf_reset(&b->data);
	buf_reset(&b->dead);
	b->nrows = b->ndead = 0;
	b->last_tag = 0;
	b->orphan = false;
}

void batch_free(struct batch *b)
{
	buf_free(&b->data);
	buf_free(&b->dead);
	free(b->rows);
	free(b->dead_tags);
	*b = (struct batch){0};
}

/* Room for one more of n elements of size sz. */
static void *grow(void *p, uint32_t n, uint32_t *cap, size_t sz)
{
	if (n < *cap)
		return p;
	uint32_t c = *cap ? *cap * 2 : 256;
	p = realloc(p, c * sz);
	if (!p)
		abort(); /* as buf.c: out of memory is not recoverable here */
	*cap = c;
	return p;
}

void batch_add_row(struct batch *b, size_t at, uint64_t tag)
{
	b->rows = grow(b->rows, b->nrows, &b->cap, sizeof(*b->rows));
	b->rows[b->nrows++] = (struct row_ref){at, tag};
}

void batch_add_dead(struct batch *b, const struct config *cfg, uint64_t tag, const uint8_t *row,
		    size_t n, const char *sqlstate, const char *error)
{
	b->dead_tags = grow(b->dead_tags, b->ndead, &b->dead_cap, sizeof(*b->dead_tags));
	b->dead_tags[b->ndead++] = tag;
	if (cfg->dead_letter == DEAD_LETTER_TABLE)
		dl_row(&b->dead, cfg, row, n, sqlstate, error, clock_wall_us());
	else
		log_warn("delivery %llu goes back to the broker's dead-letter exchange: %s "
			 "(SQLSTATE %s)", (unsigned long long)tag, error, sqlstate);
}

struct pgc_rows batch_rows(const struct batch *b, uint32_t lo, uint32_t hi)
{
	size_t from = b->rows[lo].at;
	size_t to = hi < b->nrows ? b->rows[hi].at : b->data.len;
	return (struct pgc_rows){b->data.data + from, to - from};
}

struct pgc_rows batch_row(const struct batch *b, uint32_t i) { return batch_rows(b, i, i + 1); }

uint64_t batch_ack_tag(const struct batch *b)
{
	for (uint32_t i = b->nrows; i-- > 0;) {
		bool rejected = false;
		for (uint32_t k = 0; k < b->ndead && !rejected; k++)
			rejected = b->dead_tags[k] == b->rows[i].tag;
		if (!rejected)
			return b->rows[i].tag;
	}
	return 0;
}
