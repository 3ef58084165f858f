/* The pure parts of failure handling: row isolation (every bad row found
 * alone, every good row loaded exactly once, for any layout of bad rows and
 * any hint, right or wrong), SQLSTATE classes, backoff bounds, dead-letter
 * rows read back from real envelope rows, and dedupe keys. */
#include <amqp.h>
#include <amqp_framing.h>
#include <stdlib.h>

#include "backoff.h"
#include "check.h"
#include "pg/connect.h"
#include "pg/deadletter.h"
#include "pg/isolate.h"
#include "row/copybin.h"
#include "row/dedupe.h"
#include "row/envelope.h"

/* Run the isolation the way the shard does against a set of bad rows; a
 * range "fails" when it holds a bad row, and its hint names the first bad
 * row, or a wrong row when `lie` is set. */
static void isolate_case(uint32_t n, const bool *bad, bool lie, unsigned *seed)
{
	struct isolate s = {0};
	int *loaded = calloc(n, sizeof(int)), *dead = calloc(n, sizeof(int));
	struct iso_range r = {0, n};
	bool more = true;
	int tries = 0;
	for (;;) {
		uint32_t first = r.hi;
		for (uint32_t i = r.lo; i < r.hi && first == r.hi; i++)
			if (bad[i])
				first = i;
		if (first == r.hi) {
			for (uint32_t i = r.lo; i < r.hi; i++)
				loaded[i]++;
		} else {
			long line = (long)(first - r.lo) + 1;
			if (lie)
				line = (long)(rand_r(seed) % (r.hi - r.lo + 3)) - 1;
			if (iso_split(&s, r, line))
				dead[r.lo]++;
		}
		more = iso_next(&s, &r);
		if (!more || ++tries > 100000)
			break;
	}
	CHECK(!more);
	for (uint32_t i = 0; i < n; i++) {
		CHECK(dead[i] == (bad[i] ? 1 : 0));
		CHECK(loaded[i] == (bad[i] ? 0 : 1));
	}
	free(loaded);
	free(dead);
	iso_free(&s);
}

static void test_isolate(void)
{
	unsigned seed = 7;
	bool bad[300];
	for (int round = 0; round < 400; round++) {
		uint32_t n = 1 + (uint32_t)rand_r(&seed) % 300;
		int density = rand_r(&seed) % 4; /* none, few, some, all */
		for (uint32_t i = 0; i < n; i++)
			bad[i] = density == 3 ||
				 (density && rand_r(&seed) % (density == 1 ? 100 : 5) == 0);
		bad[rand_r(&seed) % n] = true; /* the batch did fail */
		isolate_case(n, bad, round % 2, &seed);
	}
}

static void test_classify(void)
{
	CHECK(pg_classify("22P02") == PG_ROW);	     /* invalid JSON */
	CHECK(pg_classify("22021") == PG_ROW);	     /* bad UTF-8, NUL */
	CHECK(pg_classify("23505") == PG_ROW);	     /* unique violation */
	CHECK(pg_classify("54000") == PG_ROW);
	CHECK(pg_classify("P0001") == PG_ROW);	     /* a trigger's RAISE */
	CHECK(pg_classify("28P01") == PG_CONFIG);    /* password */
	CHECK(pg_classify("42P01") == PG_CONFIG);    /* missing table */
	CHECK(pg_classify("3D000") == PG_CONFIG);    /* missing database */
	CHECK(pg_classify("08006") == PG_TRANSIENT); /* connection */
	CHECK(pg_classify("57P01") == PG_TRANSIENT); /* terminated by admin */
	CHECK(pg_classify("40P01") == PG_TRANSIENT); /* deadlock */
	CHECK(pg_classify("55P03") == PG_TRANSIENT); /* lock not available */
	CHECK(pg_classify("XX000") == PG_TRANSIENT);
	CHECK(pg_classify("") == PG_TRANSIENT);
	CHECK(pg_classify(NULL) == PG_TRANSIENT);
}

static void test_backoff(void)
{
	struct backoff b;
	backoff_init(&b, 1);
	int64_t now = 1000, prev_cap = 0;
	CHECK(backoff_failed(&b, now, "refused"));   /* new reason: log */
	CHECK(!backoff_failed(&b, now, "refused"));  /* same: quiet */
	CHECK(backoff_failed(&b, now, "starting up"));
	for (int i = 0; i < 40; i++) {
		backoff_failed(&b, now, "starting up");
		int64_t d = b.retry_ms - now;
		int64_t cap = (int64_t)BACKOFF_BASE_MS << (b.attempts - 1 < 16 ? b.attempts - 1 : 16);
		if (cap > BACKOFF_CAP_MS)
			cap = BACKOFF_CAP_MS;
		CHECK(d >= cap / 2 && d <= cap);
		CHECK(cap >= prev_cap);
		prev_cap = cap;
	}
	CHECK(b.retry_ms - now <= BACKOFF_CAP_MS);
	CHECK(backoff_succeeded(&b) == 43);
	CHECK(b.attempts == 0 && backoff_failed(&b, now, "starting up"));
}

/* An envelope row as the shard writes it. */
static void envelope_row(struct buf *b, const amqp_basic_properties_t *p, const void *body,
			 size_t n, enum body_type bt)
{
	env_row_begin(b, ENV_NCOLS, amqp_cstring_bytes("ex"), amqp_cstring_bytes("rk"));
	CHECK(env_row_props(b, p, n, bt, CBIN_PG_EPOCH_US));
	buf_put(b, body, n);
}

static void test_dead_letter_row(void)
{
	struct config cfg = {.queue = "q", .table = "events", .body_type = BODY_JSONB};
	amqp_basic_properties_t p = {._flags = AMQP_BASIC_MESSAGE_ID_FLAG,
				     .message_id = {.len = 5, .bytes = "a\xff" "b\0c"}};
	static const uint8_t body[] = {'{', 0, 0xfe, '}'};
	struct buf env = {0}, dl = {0};
	envelope_row(&env, &p, body, sizeof(body), BODY_JSONB);
	dl_row(&dl, &cfg, env.data, env.len, "22P02", "bad \xc3", CBIN_PG_EPOCH_US + 5);

	struct cbin_field f[DL_NCOLS];
	int nf = 0;
	CHECK(cbin_read_tuple(dl.data, dl.len, f, DL_NCOLS, &nf) == dl.len);
	CHECK(nf == DL_NCOLS);
	CHECK(f[0].len == 1 && f[0].data[0] == 'q');
	CHECK(f[1].len == 2 && memcmp(f[1].data, "ex", 2) == 0);
	/* invalid byte and NUL replaced by U+FFFD, the rest kept */
	CHECK(f[3].len == 9 && memcmp(f[3].data, "a\xef\xbf\xbd" "b\xef\xbf\xbd" "c", 9) == 0);
	CHECK(f[4].data == NULL && f[5].data == NULL && f[6].data == NULL);
	/* the body exactly, without jsonb's version byte */
	CHECK(f[7].len == sizeof(body) && memcmp(f[7].data, body, sizeof(body)) == 0);
	CHECK(f[8].len == 5 && memcmp(f[8].data, "22P02", 5) == 0);
	CHECK(f[9].len == 7 && memcmp(f[9].data, "bad \xef\xbf\xbd", 7) == 0);
	CHECK(f[10].len == 6 && memcmp(f[10].data, "events", 6) == 0);
	CHECK(f[11].len == 8);

	/* A tuple cut short is refused, not overread. */
	for (size_t cut = 0; cut < dl.len; cut++)
		CHECK(cbin_read_tuple(dl.data, cut, f, DL_NCOLS, &nf) == 0);
	buf_free(&env);
	buf_free(&dl);
}

static void test_too_large_body(void)
{
	amqp_basic_properties_t p = {0};
	struct buf b = {0};
	env_row_begin(&b, ENV_NCOLS, amqp_empty_bytes, amqp_empty_bytes);
	CHECK(env_row_props(&b, &p, ENV_BODY_MAX, BODY_BYTEA, 0));
	buf_reset(&b);
	env_row_begin(&b, ENV_NCOLS, amqp_empty_bytes, amqp_empty_bytes);
	CHECK(!env_row_props(&b, &p, ENV_BODY_MAX + 1, BODY_BYTEA, 0));
	struct cbin_field f[ENV_NCOLS];
	int nf = 0;
	CHECK(cbin_read_tuple(b.data, b.len, f, ENV_NCOLS, &nf) == b.len && nf == ENV_NCOLS);
	CHECK(f[ENV_NCOLS - 1].data == NULL); /* body NULL: a complete tuple */
	buf_free(&b);
}

static const char *dedupe_key(enum dedupe_kind kind, const char *header,
			      const amqp_basic_properties_t *p, const char *body, struct buf *out)
{
	struct config cfg = {.dedupe = kind, .dedupe_header = header};
	struct dedupe d;
	CHECK(dedupe_init(&d, &cfg));
	dedupe_props(&d, p);
	dedupe_body(&d, body, strlen(body) / 2);
	dedupe_body(&d, body + strlen(body) / 2, strlen(body) - strlen(body) / 2);
	buf_reset(out);
	bool ok = dedupe_write(&d, out);
	const char *why = ok ? NULL : d.why;
	dedupe_free(&d);
	if (ok) { /* as text, after the length word */
		buf_put_u8(out, 0);
		return (const char *)out->data + 4;
	}
	return why ? "" : NULL;
}

static void test_dedupe(void)
{
	struct buf out = {0};
	amqp_table_entry_t h[] = {
		{.key = amqp_cstring_bytes("id"),
		 .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("k-1")}},
		{.key = amqp_cstring_bytes("n"),
		 .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = -42}},
		{.key = amqp_cstring_bytes("f"),
		 .value = {.kind = AMQP_FIELD_KIND_F64, .value.f64 = 1.5}},
	};
	amqp_basic_properties_t p = {
		._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_HEADERS_FLAG,
		.message_id = amqp_cstring_bytes("m-7"),
		.headers = {.num_entries = 3, .entries = h},
	};
	amqp_basic_properties_t none = {0};
	CHECK_STR(dedupe_key(DEDUPE_MESSAGE_ID, NULL, &p, "x", &out), "m-7");
	CHECK_STR(dedupe_key(DEDUPE_MESSAGE_ID, NULL, &none, "x", &out), "");
	CHECK_STR(dedupe_key(DEDUPE_HEADER, "id", &p, "x", &out), "k-1");
	CHECK_STR(dedupe_key(DEDUPE_HEADER, "n", &p, "x", &out), "-42");
	CHECK_STR(dedupe_key(DEDUPE_HEADER, "f", &p, "x", &out), ""); /* not a key */
	CHECK_STR(dedupe_key(DEDUPE_HEADER, "nope", &p, "x", &out), "");
	CHECK_STR(dedupe_key(DEDUPE_HEADER, "id", &none, "x", &out), "");
	/* SHA-256("abc"), FIPS 180-2 appendix B.1, fed in two pieces */
	CHECK_STR(dedupe_key(DEDUPE_BODY, NULL, &none, "abc", &out),
		  "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	buf_free(&out);
}

int main(void)
{
	test_isolate();
	test_classify();
	test_backoff();
	test_dead_letter_row();
	test_too_large_body();
	test_dedupe();
	return check_done("test_failures");
}
