/* The binary COPY writer, the envelope row and the header JSON, checked
 * byte by byte against the format in PostgreSQL's docs (sql-copy.html). */
#include <amqp.h>
#include <amqp_framing.h>
#include <stdlib.h>

#include "check.h"
#include "row/copybin.h"
#include "row/envelope.h"
#include "row/json.h"

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) << 32 | rd32(p + 4); }

static void test_header_trailer(void)
{
	struct buf b = {0};
	cbin_header(&b);
	CHECK(b.len == 19);
	CHECK(memcmp(b.data, "PGCOPY\n\377\r\n\0", 11) == 0);
	CHECK(rd32(b.data + 11) == 0 && rd32(b.data + 15) == 0);
	cbin_trailer(&b);
	CHECK(b.len == 21 && b.data[19] == 0xff && b.data[20] == 0xff);
	buf_free(&b);
}

static void test_fields(void)
{
	struct buf b = {0};
	cbin_tuple(&b, 3);
	cbin_null(&b);
	cbin_bytes(&b, "a\0b", 3);
	cbin_timestamptz(&b, CBIN_PG_EPOCH_US + 1);
	static const uint8_t want[] = {0, 3, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 3, 'a', 0, 'b',
				       0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1};
	CHECK(b.len == sizeof(want));
	CHECK(memcmp(b.data, want, sizeof(want)) == 0);

	buf_reset(&b);
	size_t at = cbin_open(&b);
	buf_put_str(&b, "hello");
	cbin_close(&b, at);
	CHECK(rd32(b.data) == 5);
	buf_free(&b);
}

/* Walk one envelope tuple; returns pointers to each field (NULL = SQL NULL). */
static const uint8_t *walk(const uint8_t *p, const uint8_t *field[ENV_NCOLS],
			   uint32_t len[ENV_NCOLS])
{
	CHECK(p[0] == 0 && p[1] == ENV_NCOLS);
	p += 2;
	for (int i = 0; i < ENV_NCOLS; i++) {
		len[i] = rd32(p);
		p += 4;
		field[i] = len[i] == UINT32_MAX ? NULL : p;
		if (field[i])
			p += len[i];
	}
	return p;
}

static void test_envelope(void)
{
	struct buf b = {0};
	amqp_table_entry_t h[] = {
		{.key = amqp_cstring_bytes("seq"),
		 .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = -42}},
	};
	amqp_basic_properties_t p = {
		._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_HEADERS_FLAG |
			  AMQP_BASIC_TIMESTAMP_FLAG,
		.message_id = amqp_cstring_bytes("m-1"),
		.headers = {.num_entries = 1, .entries = h},
		.timestamp = 946684801, /* 2000-01-01T00:00:01Z */
	};
	env_row_begin(&b, ENV_NCOLS, amqp_cstring_bytes("ex"), amqp_cstring_bytes("rk"));
	env_row_props(&b, &p, 4, BODY_JSONB, CBIN_PG_EPOCH_US + 7);
	buf_put(&b, "[1 ]", 4);

	const uint8_t *f[ENV_NCOLS];
	uint32_t len[ENV_NCOLS];
	const uint8_t *end = walk(b.data, f, len);
	CHECK(end == b.data + b.len);
	CHECK(len[0] == 2 && memcmp(f[0], "ex", 2) == 0);
	CHECK(len[1] == 2 && memcmp(f[1], "rk", 2) == 0);
	CHECK(len[2] == 3 && memcmp(f[2], "m-1", 3) == 0);
	CHECK(f[3] == NULL); /* no content type */
	CHECK(f[4] && f[4][0] == 1 && len[4] == 1 + strlen("{\"seq\":-42}") &&
	      memcmp(f[4] + 1, "{\"seq\":-42}", len[4] - 1) == 0);
	CHECK(len[5] == 8 && rd64(f[5]) == 1000000);
	CHECK(len[6] == 8 && rd64(f[6]) == 7);
	CHECK(len[7] == 5 && f[7][0] == 1 && memcmp(f[7] + 1, "[1 ]", 4) == 0);

	/* No properties at all, bytea body: NULLs and the raw length. */
	buf_reset(&b);
	amqp_basic_properties_t none = {0};
	env_row_begin(&b, ENV_NCOLS, amqp_empty_bytes, amqp_cstring_bytes("q"));
	env_row_props(&b, &none, 0, BODY_BYTEA, CBIN_PG_EPOCH_US);
	end = walk(b.data, f, len);
	CHECK(end == b.data + b.len);
	CHECK(len[0] == 0 && f[0] != NULL); /* default exchange: empty, not NULL */
	CHECK(f[2] == NULL && f[3] == NULL && f[4] == NULL && f[5] == NULL);
	CHECK(len[7] == 0);
	buf_free(&b);
}

static const char *render(const amqp_table_t *t, struct buf *b)
{
	buf_reset(b);
	json_table(b, t);
	buf_put_u8(b, 0);
	return (const char *)b->data;
}

static void test_json(void)
{
	struct buf b = {0};
	amqp_field_value_t arr[] = {
		{.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1},
		{.kind = AMQP_FIELD_KIND_VOID},
	};
	amqp_table_entry_t inner[] = {
		{.key = amqp_cstring_bytes("d"),
		 .value = {.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {2, 12345}}},
	};
	amqp_table_entry_t e[] = {
		{.key = amqp_cstring_bytes("s"),
		 .value = {.kind = AMQP_FIELD_KIND_UTF8,
			   .value.bytes = {.len = 9, .bytes = "a\"\\\n\xc3\xa9\xff" "\0z"}}},
		{.key = amqp_cstring_bytes("x"),
		 .value = {.kind = AMQP_FIELD_KIND_BYTES, .value.bytes = {.len = 4, .bytes = "\0\1\2\3"}}},
		{.key = amqp_cstring_bytes("a"),
		 .value = {.kind = AMQP_FIELD_KIND_ARRAY,
			   .value.array = {.num_entries = 2, .entries = arr}}},
		{.key = amqp_cstring_bytes("t"),
		 .value = {.kind = AMQP_FIELD_KIND_TABLE,
			   .value.table = {.num_entries = 1, .entries = inner}}},
		{.key = amqp_cstring_bytes("ts"),
		 .value = {.kind = AMQP_FIELD_KIND_TIMESTAMP, .value.u64 = 0}},
		{.key = amqp_cstring_bytes("u"),
		 .value = {.kind = AMQP_FIELD_KIND_U32, .value.u32 = 4000000000u}},
		{.key = amqp_cstring_bytes("f"),
		 .value = {.kind = AMQP_FIELD_KIND_F64, .value.f64 = 0.5}},
	};
	amqp_table_t t = {.num_entries = 7, .entries = e};
	CHECK_STR(render(&t, &b),
		  "{\"s\":\"a\\\"\\\\\\u000a\xc3\xa9\\ufffd\\ufffdz\","
		  "\"x\":\"AAECAw==\",\"a\":[true,null],\"t\":{\"d\":123.45},"
		  "\"ts\":\"1970-01-01T00:00:00Z\",\"u\":4000000000,\"f\":0.5}");

	amqp_table_entry_t neg[] = {
		{.key = amqp_cstring_bytes("d"),
		 .value = {.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {3, (uint32_t)-5}}},
	};
	amqp_table_t tn = {.num_entries = 1, .entries = neg};
	CHECK_STR(render(&tn, &b), "{\"d\":-0.005}");
	amqp_table_t empty = {0};
	CHECK_STR(render(&empty, &b), "{}");
	buf_free(&b);
}

static void test_utf8(void)
{
	CHECK(json_utf8_valid_prefix((const uint8_t *)"abc", 3) == 3);
	CHECK(json_utf8_valid_prefix((const uint8_t *)"\xe2\x82\xac", 3) == 3);	/* euro */
	CHECK(json_utf8_valid_prefix((const uint8_t *)"\xf0\x9f\x98\x80", 4) == 4); /* emoji */
	CHECK(json_utf8_valid_prefix((const uint8_t *)"a\xc0\xaf", 3) == 1);	/* overlong */
	CHECK(json_utf8_valid_prefix((const uint8_t *)"\xed\xa0\x80", 3) == 0);	/* surrogate */
	CHECK(json_utf8_valid_prefix((const uint8_t *)"\xf4\x90\x80\x80", 4) == 0); /* > 10FFFF */
	CHECK(json_utf8_valid_prefix((const uint8_t *)"ab\xe2\x82", 4) == 2);	/* truncated */
}

int main(void)
{
	test_header_trailer();
	test_fields();
	test_envelope();
	test_json();
	test_utf8();
	return check_done("test_row");
}
