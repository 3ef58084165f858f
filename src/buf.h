/* A growable byte buffer with big-endian put helpers: the one container that
 * AMQP output, COPY batches and JSON rendering all write into. Growth aborts on
 * out-of-memory (mimalloc's behaviour under a bounded working set is the limit
 * we configure, not something to recover from per call site). */
#ifndef SLUICE_BUF_H
#define SLUICE_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct buf {
	uint8_t *data;
	size_t len;
	size_t cap;
};

/* Grow so that n more bytes fit (the slow path of buf_reserve). */
void buf_grow(struct buf *b, size_t n);
void buf_free(struct buf *b);

/* Make room for at least n more bytes; returns a pointer to the free space.
 * Inline: it runs for every field of every row. */
static inline uint8_t *buf_reserve(struct buf *b, size_t n)
{
	if (__builtin_expect(b->cap - b->len < n, 0))
		buf_grow(b, n);
	return b->data + b->len;
}

static inline void buf_reset(struct buf *b) { b->len = 0; }

static inline void buf_put(struct buf *b, const void *p, size_t n)
{
	if (n == 0)
		return;
	memcpy(buf_reserve(b, n), p, n);
	b->len += n;
}

static inline void buf_put_u8(struct buf *b, uint8_t v)
{
	*buf_reserve(b, 1) = v;
	b->len += 1;
}

static inline void buf_set_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void buf_set_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void buf_put_u16(struct buf *b, uint16_t v)
{
	buf_set_u16(buf_reserve(b, 2), v);
	b->len += 2;
}

static inline void buf_put_u32(struct buf *b, uint32_t v)
{
	buf_set_u32(buf_reserve(b, 4), v);
	b->len += 4;
}

static inline void buf_put_u64(struct buf *b, uint64_t v)
{
	buf_put_u32(b, (uint32_t)(v >> 32));
	buf_put_u32(b, (uint32_t)v);
}

static inline void buf_put_str(struct buf *b, const char *s) { buf_put(b, s, strlen(s)); }

#endif
