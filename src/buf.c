/* Growth policy for struct buf: doubling, starting at 4 KiB. */
#include "buf.h"

#include <stdio.h>
#include <stdlib.h>

void buf_grow(struct buf *b, size_t n)
{
	size_t cap = b->cap ? b->cap : 4096;
	while (cap - b->len < n)
		cap *= 2;
	uint8_t *p = realloc(b->data, cap);
	if (!p) {
		fprintf(stderr, "sluice: out of memory growing a buffer to %zu bytes\n", cap);
		abort();
	}
	b->data = p;
	b->cap = cap;
}

void buf_free(struct buf *b)
{
	free(b->data);
	*b = (struct buf){0};
}
