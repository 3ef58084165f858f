/* Message bodies: a realistic JSON event, random bytes or UTF-8 text, each a
 * pure function of (seed, seq) rendered into a buffer reused per connection.
 * Randomness comes from splitmix64 seeded per message, never from rand(). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loadgen.h"

/* Room beyond --size for the fixed JSON fields when --size is tiny. The
 * longest fixed part (20-digit id, 3 tags, longest note) is under 300 bytes. */
#define LG_BODY_SLACK 512

/* Event timestamps start here (2023-11-14T22:13:20Z) and advance ~10 ms/seq. */
#define LG_TS_BASE_MS 1700000000000ull

struct lg_rng {
	uint64_t s;
};

struct lg_word {
	const char *s;
	size_t len;
};

#define LG_WORD(lit) { lit, sizeof(lit) - 1 }

static const char *const lg_event_types[] = {
	"view", "click", "search", "add_to_cart", "purchase", "signup", "logout",
};

static const char *const lg_tags[] = {
	"web", "ios", "android", "beta", "eu", "us", "promo", "returning",
};

/* JSON string contents (already escaped) that exercise quoting, backslashes,
 * control-character escapes, \u escapes and raw multi-byte UTF-8. */
static const char *const lg_notes[] = {
	"",
	"ok",
	"said \\\"hello\\\"",
	"C:\\\\temp\\\\report.csv",
	"line one\\nline two\\ttabbed",
	"caf\u00e9 cr\u00e8me, na\u00efve fa\u00e7ade",
	"\\u00e9t\\u00e9 \\u2603",
	"\u65e5\u672c\u8a9e \u043f\u0440\u0438\u0432\u0435\u0442 \U0001F680",
};

static const struct lg_word lg_words[] = {
	LG_WORD("lorem"),    LG_WORD("ipsum"),  LG_WORD("dolor"),
	LG_WORD("sit"),      LG_WORD("amet"),   LG_WORD("queue"),
	LG_WORD("caf\u00e9"), LG_WORD("na\u00efve"), LG_WORD("\u00fcber"),
	LG_WORD("stra\u00dfe"), LG_WORD("se\u00f1or"), LG_WORD("\u20ac42"),
	LG_WORD("\u65e5\u672c\u8a9e"), LG_WORD("\u4e2d\u6587"),
	LG_WORD("\u043f\u0440\u0438\u0432\u0435\u0442"),
	LG_WORD("\u0395\u03bb\u03bb\u03ac\u03b4\u03b1"),
	LG_WORD("\U0001F680"), LG_WORD("\U0001F642"),
};

#define LG_COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const char lg_pad_alphabet[64] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static uint64_t lg_mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t lg_rng_next(struct lg_rng *r)
{
	r->s += 0x9e3779b97f4a7c15ull;
	return lg_mix64(r->s);
}

/* Hash (seed, seq) into a starting state so neighbouring messages do not
 * share shifted streams. */
static void lg_rng_seed(struct lg_rng *r, uint64_t seed, uint64_t seq)
{
	r->s = lg_mix64(lg_mix64(seed ^ 0x6a09e667f3bcc909ull) + seq);
}

static uint64_t lg_rng_below(struct lg_rng *r, uint64_t n)
{
	return lg_rng_next(r) % n;
}

static char *lg_put(char *p, const char *s)
{
	size_t n = strlen(s);

	memcpy(p, s, n);
	return p + n;
}

static char *lg_put_u64(char *p, uint64_t v)
{
	char tmp[20];
	size_t n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

/* Zero-padded to exactly `width` digits. */
static char *lg_put_fixed(char *p, unsigned v, int width)
{
	for (int i = width - 1; i >= 0; i--) {
		p[i] = (char)('0' + v % 10);
		v /= 10;
	}
	return p + width;
}

/* ISO 8601 UTC with milliseconds: 2023-11-14T22:13:20.123Z */
static char *lg_put_ts(char *p, uint64_t ms)
{
	time_t secs = (time_t)(ms / 1000);
	struct tm tm;

	gmtime_r(&secs, &tm);
	p = lg_put_fixed(p, (unsigned)tm.tm_year + 1900, 4);
	*p++ = '-';
	p = lg_put_fixed(p, (unsigned)tm.tm_mon + 1, 2);
	*p++ = '-';
	p = lg_put_fixed(p, (unsigned)tm.tm_mday, 2);
	*p++ = 'T';
	p = lg_put_fixed(p, (unsigned)tm.tm_hour, 2);
	*p++ = ':';
	p = lg_put_fixed(p, (unsigned)tm.tm_min, 2);
	*p++ = ':';
	p = lg_put_fixed(p, (unsigned)tm.tm_sec, 2);
	*p++ = '.';
	p = lg_put_fixed(p, (unsigned)(ms % 1000), 3);
	*p++ = 'Z';
	return p;
}

static char *lg_put_tags(char *p, struct lg_rng *r)
{
	uint64_t n = lg_rng_below(r, 4);

	*p++ = '[';
	for (uint64_t i = 0; i < n; i++) {
		if (i)
			*p++ = ',';
		*p++ = '"';
		p = lg_put(p, lg_tags[lg_rng_below(r, LG_COUNT(lg_tags))]);
		*p++ = '"';
	}
	*p++ = ']';
	return p;
}

/* Fills n bytes from a 64-symbol alphabet, ten symbols per random word. */
static void lg_fill_pad(char *p, size_t n, struct lg_rng *r)
{
	while (n) {
		uint64_t v = lg_rng_next(r);

		for (int i = 0; i < 10 && n; i++, n--) {
			*p++ = lg_pad_alphabet[v & 63];
			v >>= 6;
		}
	}
}

static size_t lg_render_json(char *buf, size_t size, struct lg_rng *r,
			     uint64_t seq)
{
	uint64_t cents = lg_rng_below(r, 100000);
	char *p = buf;

	p = lg_put(p, "{\"id\":");
	p = lg_put_u64(p, seq);
	p = lg_put(p, ",\"ts\":\"");
	p = lg_put_ts(p, LG_TS_BASE_MS + seq * 10 + lg_rng_below(r, 10));
	p = lg_put(p, "\",\"user\":\"user_");
	p = lg_put_u64(p, lg_rng_below(r, 10000));
	p = lg_put(p, "\",\"type\":\"");
	p = lg_put(p, lg_event_types[lg_rng_below(r, LG_COUNT(lg_event_types))]);
	p = lg_put(p, "\",\"amount\":");
	p = lg_put_u64(p, cents / 100);
	*p++ = '.';
	p = lg_put_fixed(p, (unsigned)(cents % 100), 2);
	p = lg_put(p, ",\"tags\":");
	p = lg_put_tags(p, r);
	p = lg_put(p, ",\"note\":\"");
	p = lg_put(p, lg_notes[lg_rng_below(r, LG_COUNT(lg_notes))]);
	p = lg_put(p, "\",\"pad\":\"");

	size_t used = (size_t)(p - buf) + 2; /* closing "} */
	size_t pad = size > used ? size - used : 0;

	lg_fill_pad(p, pad, r);
	p += pad;
	return (size_t)(lg_put(p, "\"}") - buf);
}

/* Random bytes with at least one NUL (when size > 0). */
static size_t lg_render_bytes(uint8_t *buf, size_t size, struct lg_rng *r)
{
	size_t i = 0;

	for (; i + 8 <= size; i += 8) {
		uint64_t v = lg_rng_next(r);

		memcpy(buf + i, &v, 8);
	}
	if (i < size) {
		uint64_t v = lg_rng_next(r);

		memcpy(buf + i, &v, size - i);
	}
	if (size)
		buf[lg_rng_below(r, size)] = 0;
	return size;
}

/* Space-separated words, mixed ASCII and 2-4 byte UTF-8; whole words only,
 * then ASCII letters up to exactly `size` bytes so the result stays valid. */
static size_t lg_render_text(uint8_t *buf, size_t size, struct lg_rng *r)
{
	size_t n = 0;

	for (;;) {
		const struct lg_word *w = &lg_words[lg_rng_below(r, LG_COUNT(lg_words))];
		size_t need = w->len + (n > 0);

		if (n + need > size)
			break;
		if (n > 0)
			buf[n++] = ' ';
		memcpy(buf + n, w->s, w->len);
		n += w->len;
	}
	if (n > 0 && n + 1 < size)
		buf[n++] = ' ';
	while (n < size)
		buf[n++] = (uint8_t)('a' + lg_rng_below(r, 26));
	return n;
}

int lg_shape_parse(const char *name, enum lg_shape *out)
{
	static const enum lg_shape all[] = {
		LG_SHAPE_JSON, LG_SHAPE_BYTES, LG_SHAPE_TEXT,
	};

	for (size_t i = 0; i < LG_COUNT(all); i++) {
		if (strcmp(name, lg_shape_name(all[i])) == 0) {
			*out = all[i];
			return 0;
		}
	}
	return -1;
}

const char *lg_shape_name(enum lg_shape shape)
{
	switch (shape) {
	case LG_SHAPE_JSON:
		return "json";
	case LG_SHAPE_BYTES:
		return "bytes";
	case LG_SHAPE_TEXT:
		return "text";
	}
	return "?";
}

const char *lg_shape_content_type(enum lg_shape shape)
{
	switch (shape) {
	case LG_SHAPE_JSON:
		return "application/json";
	case LG_SHAPE_BYTES:
		return "application/octet-stream";
	case LG_SHAPE_TEXT:
		return "text/plain; charset=utf-8";
	}
	return "application/octet-stream";
}

int lg_body_init(struct lg_body *b, size_t size)
{
	b->cap = size + LG_BODY_SLACK;
	b->data = malloc(b->cap);
	return b->data ? 0 : -1;
}

void lg_body_free(struct lg_body *b)
{
	free(b->data);
	b->data = NULL;
	b->cap = 0;
}

size_t lg_body_render(struct lg_body *b, enum lg_shape shape, size_t size,
		      uint64_t seed, uint64_t seq)
{
	struct lg_rng r;

	lg_rng_seed(&r, seed, seq);
	switch (shape) {
	case LG_SHAPE_JSON:
		return lg_render_json((char *)b->data, size, &r, seq);
	case LG_SHAPE_BYTES:
		return lg_render_bytes(b->data, size, &r);
	case LG_SHAPE_TEXT:
		return lg_render_text(b->data, size, &r);
	}
	return 0;
}
