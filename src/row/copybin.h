/* Writer for PostgreSQL's binary COPY format ("COPY ... (FORMAT binary)",
 * PostgreSQL docs, sql-copy.html, "Binary Format"): a signature header,
 * tuples of length-prefixed fields in network byte order, a -1 trailer. */
#ifndef SLUICE_ROW_COPYBIN_H
#define SLUICE_ROW_COPYBIN_H

#include <stdint.h>

#include "buf.h"

/* Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC). */
#define CBIN_PG_EPOCH_US 946684800000000LL

#define CBIN_HEAD_LEN 19
#define CBIN_TAIL_LEN 2
extern const uint8_t cbin_head[CBIN_HEAD_LEN]; /* signature, flags, extension length */
extern const uint8_t cbin_tail[CBIN_TAIL_LEN]; /* field count -1 */

void cbin_header(struct buf *b);
void cbin_trailer(struct buf *b);

/* One field of a tuple read back; data is NULL for SQL NULL. */
struct cbin_field {
	const uint8_t *data;
	size_t len;
};

/* Read the tuple at p[0..n) (as the writers below made it): fills f[0..
 * *nfields) and returns its length in bytes, or 0 if it is malformed or has
 * more than max fields. */
size_t cbin_read_tuple(const uint8_t *p, size_t n, struct cbin_field *f, int max, int *nfields);

static inline void cbin_tuple(struct buf *b, uint16_t nfields) { buf_put_u16(b, nfields); }

static inline void cbin_null(struct buf *b) { buf_put_u32(b, UINT32_MAX); }

static inline void cbin_bytes(struct buf *b, const void *p, size_t n)
{
	buf_put_u32(b, (uint32_t)n);
	buf_put(b, p, n);
}

/* timestamptz on the wire: int64 microseconds since the PostgreSQL epoch. */
static inline void cbin_timestamptz(struct buf *b, int64_t unix_us)
{
	buf_put_u32(b, 8);
	buf_put_u64(b, (uint64_t)(unix_us - CBIN_PG_EPOCH_US));
}

/* A field whose length is known only after writing it: open returns where
 * the length goes, close patches it. */
static inline size_t cbin_open(struct buf *b)
{
	size_t at = b->len;
	buf_put_u32(b, 0);
	return at;
}

static inline void cbin_close(struct buf *b, size_t at)
{
	buf_set_u32(b->data + at, (uint32_t)(b->len - at - 4));
}

#endif
