/* Row isolation; see isolate.h. */
#include "pg/isolate.h"

#include <stdlib.h>

void iso_reset(struct isolate *s) { s->n = 0; }

void iso_free(struct isolate *s)
{
	free(s->todo);
	*s = (struct isolate){0};
}

static void iso_push(struct isolate *s, uint32_t lo, uint32_t hi)
{
	if (lo == hi)
		return;
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		struct iso_range *t = realloc(s->todo, cap * sizeof(*t));
		if (!t)
			abort(); /* as buf.c: out of memory is not recoverable here */
		s->todo = t;
		s->cap = cap;
	}
	s->todo[s->n++] = (struct iso_range){lo, hi};
}

bool iso_split(struct isolate *s, struct iso_range r, long line)
{
	if (r.hi - r.lo == 1)
		return true;
	/* Pushed last-first, so they are tried in row order. */
	if (line >= 1 && line <= (long)(r.hi - r.lo)) {
		/* The rows before the named one went in before it failed; it
		 * is tried alone, to confirm rather than trust the hint. */
		uint32_t bad = r.lo + (uint32_t)(line - 1);
		iso_push(s, bad + 1, r.hi);
		iso_push(s, bad, bad + 1);
		iso_push(s, r.lo, bad);
	} else {
		uint32_t mid = r.lo + (r.hi - r.lo) / 2;
		iso_push(s, mid, r.hi);
		iso_push(s, r.lo, mid);
	}
	return false;
}

bool iso_next(struct isolate *s, struct iso_range *r)
{
	if (s->n == 0)
		return false;
	*r = s->todo[--s->n];
	return true;
}
