/* Generates the fuzz seeds tests/fuzz/corpus/<target>/: make -f tests/fuzz/fuzz.mk seeds
 * The seeds are committed but never edited by hand: change this program and
 * regenerate. Frames are written the way tests/unit/test_consume.c writes
 * them (src/amqp/frame.c for methods, rabbitmq-c's encoders for content
 * headers and field tables), so every seed is a valid starting point that
 * reaches deep into the code; the fuzzer mutates from there.
 *
 * Usage: gen_seeds DIR            writes DIR/fuzz_amqp_input/, DIR/fuzz_row/,
 *                                 DIR/fuzz_config/ (existing files are replaced)
 *        gen_seeds --crashes DIR  writes the reproducers of findings not fixed
 *                                 yet (tests/fuzz/crashes/; see the README
 *                                 there): run.sh --repro runs them.
 * Reproducers of fixed findings are seeds ("regress-*"). */
#include <amqp.h>
#include <amqp_framing.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "amqp/frame.h"
#include "buf.h"

static const char *outdir;
static int written;

static void die(const char *what)
{
	fprintf(stderr, "gen_seeds: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void need(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "gen_seeds: %s failed\n", what);
		exit(1);
	}
}

static void mkdirs(const char *target)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s", outdir);
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		die(path);
	snprintf(path, sizeof(path), "%s/%s", outdir, target);
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		die(path);
}

static void seed(const char *target, const char *name, const void *p, size_t n)
{
	char path[4096];
	mkdirs(target);
	snprintf(path, sizeof(path), "%s/%s/%s", outdir, target, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
		die(path);
	written++;
}

/* ---- field values and tables --------------------------------------------- */

#define KV(k, v) ((amqp_table_entry_t){.key = amqp_cstring_bytes(k), .value = (v)})

static amqp_field_value_t fv_bytes(char kind, const void *p, size_t n)
{
	amqp_field_value_t v = {.kind = (uint8_t)kind};
	v.value.bytes = (amqp_bytes_t){.len = n, .bytes = (void *)p};
	return v;
}
#define FV_STR(s) fv_bytes(AMQP_FIELD_KIND_UTF8, (s), sizeof(s) - 1)

static amqp_field_value_t fv_int(char kind, uint64_t u)
{
	amqp_field_value_t v = {.kind = (uint8_t)kind};
	switch (kind) {
	case AMQP_FIELD_KIND_BOOLEAN: v.value.boolean = (amqp_boolean_t)u; break;
	case AMQP_FIELD_KIND_I8: v.value.i8 = (int8_t)u; break;
	case AMQP_FIELD_KIND_U8: v.value.u8 = (uint8_t)u; break;
	case AMQP_FIELD_KIND_I16: v.value.i16 = (int16_t)u; break;
	case AMQP_FIELD_KIND_U16: v.value.u16 = (uint16_t)u; break;
	case AMQP_FIELD_KIND_I32: v.value.i32 = (int32_t)u; break;
	case AMQP_FIELD_KIND_U32: v.value.u32 = (uint32_t)u; break;
	case AMQP_FIELD_KIND_I64: v.value.i64 = (int64_t)u; break;
	default: v.value.u64 = u; break; /* U64, TIMESTAMP */
	}
	return v;
}

static amqp_field_value_t fv_f32(float f)
{
	return (amqp_field_value_t){.kind = AMQP_FIELD_KIND_F32, .value.f32 = f};
}

static amqp_field_value_t fv_f64(double d)
{
	return (amqp_field_value_t){.kind = AMQP_FIELD_KIND_F64, .value.f64 = d};
}

static amqp_field_value_t fv_dec(uint8_t scale, uint32_t value)
{
	return (amqp_field_value_t){.kind = AMQP_FIELD_KIND_DECIMAL,
				    .value.decimal = {.decimals = scale, .value = value}};
}

static amqp_field_value_t fv_table(amqp_table_entry_t *e, int n)
{
	return (amqp_field_value_t){.kind = AMQP_FIELD_KIND_TABLE,
				    .value.table = {.num_entries = n, .entries = e}};
}

static amqp_field_value_t fv_array(amqp_field_value_t *e, int n)
{
	return (amqp_field_value_t){.kind = AMQP_FIELD_KIND_ARRAY,
				    .value.array = {.num_entries = n, .entries = e}};
}

/* Tables of every field kind and the string cases json.c has to handle. */
static amqp_table_entry_t t_ints[13];
static amqp_table_entry_t t_floats[8];
static amqp_table_entry_t t_decimals[6];
static amqp_table_entry_t t_strings[14];
static amqp_table_entry_t t_bytes[5];
static amqp_field_value_t a_mixed[6];
static amqp_table_entry_t t_all[8];

static void build_tables(void)
{
	t_ints[0] = KV("t", fv_int(AMQP_FIELD_KIND_BOOLEAN, 1));
	t_ints[1] = KV("b", fv_int(AMQP_FIELD_KIND_I8, (uint64_t)-128));
	t_ints[2] = KV("B", fv_int(AMQP_FIELD_KIND_U8, 255));
	t_ints[3] = KV("s", fv_int(AMQP_FIELD_KIND_I16, (uint64_t)-32768));
	t_ints[4] = KV("u", fv_int(AMQP_FIELD_KIND_U16, 65535));
	t_ints[5] = KV("I", fv_int(AMQP_FIELD_KIND_I32, 2147483647));
	t_ints[6] = KV("i", fv_int(AMQP_FIELD_KIND_U32, 4294967295u));
	t_ints[7] = KV("l", fv_int(AMQP_FIELD_KIND_I64, 9223372036854775807ull));
	t_ints[8] = KV("L", fv_int(AMQP_FIELD_KIND_U64, 18446744073709551615ull));
	t_ints[9] = KV("lmin", fv_int(AMQP_FIELD_KIND_I64, 9223372036854775808ull));
	t_ints[10] = KV("Imin", fv_int(AMQP_FIELD_KIND_I32, 2147483648u));
	t_ints[11] = KV("T", fv_int(AMQP_FIELD_KIND_TIMESTAMP, 1700000000));
	t_ints[12] = KV("Tbig", fv_int(AMQP_FIELD_KIND_TIMESTAMP, 18446744073709551615ull));

	t_floats[0] = KV("nan", fv_f64(NAN));
	t_floats[1] = KV("inf", fv_f64(INFINITY));
	t_floats[2] = KV("-inf", fv_f32(-INFINITY));
	t_floats[3] = KV("-0", fv_f64(-0.0));
	t_floats[4] = KV("big", fv_f64(1.7976931348623157e308));
	t_floats[5] = KV("tiny", fv_f64(4.9406564584124654e-324));
	t_floats[6] = KV("f32", fv_f32(0.1f));
	t_floats[7] = KV("pi", fv_f64(3.141592653589793));

	t_decimals[0] = KV("d0", fv_dec(0, 12345));
	t_decimals[1] = KV("d2", fv_dec(2, 12345));
	t_decimals[2] = KV("d9", fv_dec(9, 5));
	t_decimals[3] = KV("neg", fv_dec(3, (uint32_t)-1500));
	t_decimals[4] = KV("min", fv_dec(255, 0x80000000u));
	t_decimals[5] = KV("zero", fv_dec(4, 0));

	static const char nul[] = "a\0b";
	static const char ctl[] = "\x01\x1f\t\n\r\x7f";
	t_strings[0] = KV("ascii", FV_STR("plain text"));
	t_strings[1] = KV("escapes", FV_STR("quote \" backslash \\ slash /"));
	t_strings[2] = KV("nul", fv_bytes(AMQP_FIELD_KIND_UTF8, nul, 3));
	t_strings[3] = KV("control", fv_bytes(AMQP_FIELD_KIND_UTF8, ctl, sizeof(ctl) - 1));
	t_strings[4] = KV("utf8", FV_STR("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf"));
	t_strings[5] = KV("surrogate", FV_STR("\xed\xa0\x80\xed\xbf\xbf"));
	t_strings[6] = KV("overlong", FV_STR("\xc0\xaf\xe0\x80\xaf\xf0\x80\x80\xaf"));
	t_strings[7] = KV("above-max", FV_STR("\xf4\x90\x80\x80\xf8\x88\x80\x80\x80"));
	t_strings[8] = KV("truncated", FV_STR("ok\xe2\x82"));
	t_strings[9] = KV("lone-cont", FV_STR("\x80\xbf x \xff\xfe"));
	t_strings[10] = KV("", FV_STR("empty key"));
	t_strings[11] = (amqp_table_entry_t){.key = {.len = 4, .bytes = "k\xff\0\""},
					     .value = FV_STR("bad key")};
	t_strings[12] = KV("u2028", FV_STR("\xe2\x80\xa8\xe2\x80\xa9"));
	t_strings[13] = KV("void", ((amqp_field_value_t){.kind = AMQP_FIELD_KIND_VOID}));

	t_bytes[0] = KV("x0", fv_bytes(AMQP_FIELD_KIND_BYTES, "", 0));
	t_bytes[1] = KV("x1", fv_bytes(AMQP_FIELD_KIND_BYTES, "\xff", 1));
	t_bytes[2] = KV("x2", fv_bytes(AMQP_FIELD_KIND_BYTES, "\0\1", 2));
	t_bytes[3] = KV("x3", fv_bytes(AMQP_FIELD_KIND_BYTES, "abc", 3));
	t_bytes[4] = KV("x4", fv_bytes(AMQP_FIELD_KIND_BYTES, "\xfb\xff\xbf\0", 4));

	a_mixed[0] = fv_int(AMQP_FIELD_KIND_I32, 1);
	a_mixed[1] = FV_STR("two");
	a_mixed[2] = fv_array(NULL, 0);
	a_mixed[3] = fv_table(NULL, 0);
	a_mixed[4] = fv_table(t_bytes, 2);
	a_mixed[5] = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_VOID};

	t_all[0] = KV("ints", fv_table(t_ints, 13));
	t_all[1] = KV("floats", fv_table(t_floats, 8));
	t_all[2] = KV("decimals", fv_table(t_decimals, 6));
	t_all[3] = KV("strings", fv_table(t_strings, 14));
	t_all[4] = KV("bytes", fv_table(t_bytes, 5));
	t_all[5] = KV("array", fv_array(a_mixed, 6));
	t_all[6] = KV("dup", FV_STR("first"));
	t_all[7] = KV("dup", FV_STR("second"));
}

/* Tables nested n deep ({"n":{"n":...}}), past json.c's depth limit. */
static amqp_table_t nested(int n)
{
	static amqp_table_entry_t e[100];
	if (n > 100)
		n = 100;
	e[n - 1] = KV("leaf", fv_int(AMQP_FIELD_KIND_I8, 1));
	for (int i = n - 2; i >= 0; i--)
		e[i] = KV("n", fv_table(&e[i + 1], 1));
	return (amqp_table_t){.num_entries = 1, .entries = e};
}

/* ---- AMQP frames ----------------------------------------------------------- */

static void put_header(struct buf *out, uint16_t channel, const amqp_basic_properties_t *p,
		       uint64_t body_size)
{
	static uint8_t props[65536];
	int n = amqp_encode_properties(AMQP_BASIC_CLASS, (void *)p,
				       (amqp_bytes_t){.len = sizeof(props), .bytes = props});
	need(n >= 0, "amqp_encode_properties");
	buf_put_u8(out, AMQP_FRAME_HEADER);
	buf_put_u16(out, channel);
	buf_put_u32(out, 12 + (uint32_t)n);
	buf_put_u16(out, AMQP_BASIC_CLASS);
	buf_put_u16(out, 0);
	buf_put_u64(out, body_size);
	buf_put(out, props, (size_t)n);
	buf_put_u8(out, AMQP_FRAME_END);
}

static void put_body(struct buf *out, uint16_t channel, const void *body, size_t len,
		     size_t frame_max)
{
	for (size_t off = 0; off < len;) {
		size_t chunk = len - off < frame_max - 8 ? len - off : frame_max - 8;
		buf_put_u8(out, AMQP_FRAME_BODY);
		buf_put_u16(out, channel);
		buf_put_u32(out, (uint32_t)chunk);
		buf_put(out, (const uint8_t *)body + off, chunk);
		buf_put_u8(out, AMQP_FRAME_END);
		off += chunk;
	}
}

/* A content header frame and body frames as the broker sends them (AMQP
 * 0-9-1 section 4.2.6); bodies split at frame_max. */
static void put_content(struct buf *out, uint16_t channel, const amqp_basic_properties_t *p,
			const void *body, size_t len, size_t frame_max)
{
	put_header(out, channel, p, len);
	put_body(out, channel, body, len, frame_max);
}

static void put_deliver(struct buf *out, uint64_t tag, const char *exchange, const char *rk)
{
	amqp_basic_deliver_t d = {.consumer_tag = amqp_cstring_bytes("amq.ctag-1"),
				  .delivery_tag = tag,
				  .exchange = amqp_cstring_bytes(exchange),
				  .routing_key = amqp_cstring_bytes(rk)};
	need(mqf_method(out, 1, AMQP_BASIC_DELIVER_METHOD, &d) == 0, "deliver");
}

/* A fuzz_amqp_input seed: body type byte, piece size byte, the stream. */
static void amqp_seed(const char *name, int bt, uint8_t step, const struct buf *s)
{
	struct buf b = {0};
	buf_put_u8(&b, (uint8_t)bt);
	buf_put_u8(&b, step);
	buf_put(&b, s->data, s->len);
	seed("fuzz_amqp_input", name, b.data, b.len);
	buf_free(&b);
}

static void gen_amqp_input(void)
{
	struct buf s = {0};
	amqp_basic_properties_t none = {0};
	amqp_basic_properties_t id = {._flags = AMQP_BASIC_MESSAGE_ID_FLAG,
				      .message_id = amqp_cstring_bytes("m-1")};

	/* One small message. */
	put_deliver(&s, 1, "", "events");
	put_content(&s, 1, &id, "hello", 5, 131072);
	amqp_seed("one-message", 0, 0, &s);

	/* The same, fed a byte at a time, as jsonb. */
	buf_reset(&s);
	put_deliver(&s, 7, "amq.topic", "a.b.c");
	put_content(&s, 1, &id, "{\"k\": [1, 2]}", 13, 131072);
	amqp_seed("jsonb-bytewise", 1, 1, &s);

	/* Several messages: a body in three frames, an empty body, a heartbeat,
	 * a queue depth answer, as text, fed 7 bytes at a time. */
	buf_reset(&s);
	static uint8_t big[3000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7);
	put_deliver(&s, 1, "", "q");
	put_content(&s, 1, &id, big, sizeof(big), 1024);
	put_deliver(&s, 2, "", "q");
	put_content(&s, 1, &none, NULL, 0, 1024);
	mqf_heartbeat(&s);
	put_deliver(&s, 3, "ex", "q");
	put_content(&s, 1, &none, "a\0b", 3, 1024);
	amqp_queue_declare_ok_t ok = {.queue = amqp_cstring_bytes("q"), .message_count = 7};
	need(mqf_method(&s, 1, AMQP_QUEUE_DECLARE_OK_METHOD, &ok) == 0, "declare-ok");
	amqp_seed("stream", 2, 7, &s);

	/* Every basic property, headers of every field kind. */
	buf_reset(&s);
	amqp_basic_properties_t all = {
		._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
			  AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
			  AMQP_BASIC_PRIORITY_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
			  AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_EXPIRATION_FLAG |
			  AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
			  AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_USER_ID_FLAG | AMQP_BASIC_APP_ID_FLAG |
			  AMQP_BASIC_CLUSTER_ID_FLAG,
		.content_type = amqp_cstring_bytes("application/json"),
		.content_encoding = amqp_cstring_bytes("utf-8"),
		.headers = {.num_entries = 8, .entries = t_all},
		.delivery_mode = 2,
		.priority = 9,
		.correlation_id = amqp_cstring_bytes("c"),
		.reply_to = amqp_cstring_bytes("r"),
		.expiration = amqp_cstring_bytes("60000"),
		.message_id = amqp_cstring_bytes("m-all"),
		.timestamp = 1700000000,
		.type = amqp_cstring_bytes("t"),
		.user_id = amqp_cstring_bytes("guest"),
		.app_id = amqp_cstring_bytes("app"),
		.cluster_id = amqp_cstring_bytes("cl"),
	};
	put_deliver(&s, 1, "", "q");
	put_content(&s, 1, &all, "[]", 2, 131072);
	amqp_seed("all-properties", 1, 0, &s);

	/* A timestamp too large for microseconds; nested headers. */
	buf_reset(&s);
	amqp_basic_properties_t odd = {._flags = AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG,
				       .timestamp = UINT64_MAX,
				       .headers = nested(70)};
	put_deliver(&s, 1, "", "q");
	put_content(&s, 1, &odd, "x", 1, 131072);
	amqp_seed("odd-properties", 0, 0, &s);

	/* The broker cancels the consumer, then a delivery still in flight. */
	buf_reset(&s);
	amqp_basic_cancel_t cancel = {.consumer_tag = amqp_cstring_bytes("amq.ctag-1")};
	need(mqf_method(&s, 1, AMQP_BASIC_CANCEL_METHOD, &cancel) == 0, "cancel");
	put_deliver(&s, 2, "", "q");
	put_content(&s, 1, &none, "late", 4, 131072);
	amqp_seed("broker-cancel", 0, 0, &s);

	/* Closes from the broker. */
	buf_reset(&s);
	amqp_channel_close_t cc = {.reply_code = 404,
				   .reply_text = amqp_cstring_bytes("NOT_FOUND - no queue 'q'")};
	need(mqf_method(&s, 1, AMQP_CHANNEL_CLOSE_METHOD, &cc) == 0, "channel.close");
	amqp_seed("channel-close", 0, 0, &s);
	buf_reset(&s);
	amqp_connection_close_t xc = {.reply_code = 320,
				      .reply_text = amqp_cstring_bytes("CONNECTION_FORCED")};
	need(mqf_method(&s, 0, AMQP_CONNECTION_CLOSE_METHOD, &xc) == 0, "connection.close");
	amqp_seed("connection-close", 0, 0, &s);

	/* Blocked/unblocked, then a message. */
	buf_reset(&s);
	amqp_connection_blocked_t bl = {.reason = amqp_cstring_bytes("low on memory")};
	need(mqf_method(&s, 0, AMQP_CONNECTION_BLOCKED_METHOD, &bl) == 0, "blocked");
	amqp_connection_unblocked_t ub = {0};
	need(mqf_method(&s, 0, AMQP_CONNECTION_UNBLOCKED_METHOD, &ub) == 0, "unblocked");
	put_deliver(&s, 5, "", "q");
	put_content(&s, 1, &none, "z", 1, 131072);
	amqp_seed("blocked", 2, 0, &s);

	/* Protocol errors: content without a delivery; body longer than
	 * announced; a delivery inside a message; the broker's protocol header. */
	buf_reset(&s);
	put_content(&s, 1, &none, "x", 1, 131072);
	amqp_seed("content-without-deliver", 0, 0, &s);
	buf_reset(&s);
	put_deliver(&s, 1, "", "q");
	put_header(&s, 1, &none, 3);
	put_body(&s, 1, "abcdef", 6, 131072);
	amqp_seed("body-size-mismatch", 0, 0, &s);
	buf_reset(&s);
	put_deliver(&s, 1, "", "q");
	put_deliver(&s, 2, "", "q");
	amqp_seed("deliver-in-message", 0, 0, &s);
	buf_reset(&s);
	mqf_protocol_header(&s);
	amqp_seed("protocol-header", 0, 0, &s);

	buf_free(&s);
}

/* ---- rows --------------------------------------------------------------------- */

static void row_props_seed(const char *name, uint8_t mode, const amqp_basic_properties_t *p)
{
	static uint8_t out[65536];
	out[0] = mode;
	int n = amqp_encode_properties(AMQP_BASIC_CLASS, (void *)p,
				       (amqp_bytes_t){.len = sizeof(out) - 1, .bytes = out + 1});
	need(n >= 0, "amqp_encode_properties");
	seed("fuzz_row", name, out, (size_t)n + 1);
}

static void row_table_seed(const char *name, amqp_table_t t)
{
	static uint8_t out[65536];
	size_t off = 1;
	out[0] = 1;
	need(amqp_encode_table((amqp_bytes_t){.len = sizeof(out), .bytes = out}, &t, &off) == 0,
	     "amqp_encode_table");
	seed("fuzz_row", name, out, off);
}

static void gen_row(void)
{
	amqp_basic_properties_t p = {0};
	row_props_seed("props-none", 0, &p);

	p._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
		   AMQP_BASIC_TIMESTAMP_FLAG;
	p.message_id = amqp_cstring_bytes("id-\xff");
	p.content_type = amqp_cstring_bytes("text/plain");
	p.timestamp = 1700000000;
	row_props_seed("props-id-type-time", 2, &p);

	p._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
	p.timestamp = 9223372036854775807ull;
	p.headers = (amqp_table_t){.num_entries = 8, .entries = t_all};
	row_props_seed("props-headers-all-kinds", 4, &p);

	p._flags = AMQP_BASIC_HEADERS_FLAG;
	p.headers = nested(70);
	row_props_seed("props-headers-nested", 0, &p);

	row_table_seed("table-ints", (amqp_table_t){13, t_ints});
	row_table_seed("table-floats", (amqp_table_t){8, t_floats});
	row_table_seed("table-decimals", (amqp_table_t){6, t_decimals});
	row_table_seed("table-strings", (amqp_table_t){14, t_strings});
	row_table_seed("table-bytes", (amqp_table_t){5, t_bytes});
	row_table_seed("table-all", (amqp_table_t){8, t_all});
	row_table_seed("table-empty", (amqp_table_t){0, NULL});
	amqp_table_entry_t arr = KV("a", fv_array(a_mixed, 6));
	row_table_seed("table-array", (amqp_table_t){1, &arr});
}

/* ---- configuration -------------------------------------------------------------- */

/* Pieces joined with NULs; "\1" + index byte + value sets env_names[index %
 * 12] (see fuzz_config.c: 1 POSTGRES_DSN, 2 SLUICE_QUEUE, 3 SLUICE_TABLE, 4
 * SLUICE_PREFETCH, 5 SLUICE_BATCH_BYTES, 6 SLUICE_BODY_TYPE, ..., and 12 for
 * 0, RABBITMQ_URL, since a 0 byte would end the piece). */
static void config_seed(const char *name, const char *const *pieces)
{
	struct buf b = {0};
	for (int i = 0; pieces[i]; i++) {
		if (i)
			buf_put_u8(&b, 0);
		buf_put_str(&b, pieces[i]);
	}
	seed("fuzz_config", name, b.data, b.len);
	buf_free(&b);
}

#define CONFIG_SEED(name, ...) config_seed(name, (const char *const[]){__VA_ARGS__, NULL})

static void gen_config(void)
{
	CONFIG_SEED("url-full",
		    "amqp://alice:s3cr%40t@mq.example:5673/prod?heartbeat=5&frame_max=65536"
		    "&channel_max=16",
		    "--queue", "q");
	CONFIG_SEED("url-minimal", "amqp://h");
	CONFIG_SEED("url-ipv6", "amqp://[::1]:5672/%2f", "--queue=q");
	CONFIG_SEED("url-utf8-password", "amqp://guest:1234\xc3\xa9s\xc3\xa9" "cret@localhost:5672/",
		    "--queue", "q");
	CONFIG_SEED("url-bad-port", "amqp://u:p\xc3\xa4ss@h:99999/");
	CONFIG_SEED("url-bad-query", "amqp://u:p\xc3\xa4ss@h/?heartbeat=x&nope=1");
	CONFIG_SEED("url-amqps", "amqps://u:p@h/v");
	CONFIG_SEED("env-all", "sluice", "\1\x0c" "amqp://u:\xc3\xa4\xc3\xa4\xc3\xa4@h:5672/v?heartbeat=0",
		    "\1\x01" "host=localhost password=pa\xc3\x9f\xc3\x9fword dbname=d",
		    "\1\x02" "events", "\1\x03" "schema.table", "\1\x04" "100", "\1\x05" "8MiB",
		    "\1\x06" "jsonb", "\1\x07" "yes", "\1\x08" "2", "\1\x09" "debug",
		    "\1\x0a" "epoll", "\1\x0b" "250");
	CONFIG_SEED("flags-all", "sluice", "--rabbitmq-url", "amqp://guest:guest@localhost:5672/",
		    "--postgres-dsn", "postgresql://u:p\xc3\xa4ss@localhost:5432/db?sslmode=disable",
		    "--queue", "q", "--table", "t", "--shards", "2", "--prefetch", "10",
		    "--batch-rows", "100", "--batch-bytes", "64KiB", "--linger-ms", "0",
		    "--body-type", "text", "--no-create", "--drain-timeout", "5", "--until-empty",
		    "--stats-interval", "0", "--log-level", "error", "--io", "uring");
	CONFIG_SEED("flags-bad-values", "sluice", "--queue", "q", "--prefetch", "0",
		    "--batch-bytes=1G", "--body-type=xml");
	CONFIG_SEED("dsn-bad-uri", "sluice", "\1\x02" "q",
		    "\1\x01" "postgresql://u:Wr0ng\xc3\xa9%ZZ@127.0.0.1:1/db");
	CONFIG_SEED("dsn-bad-keyword", "sluice", "--queue", "q", "--postgres-dsn",
		    "host=h password='p\xc3\xa9ss port=1");
	CONFIG_SEED("help", "sluice", "--help");
	CONFIG_SEED("version", "sluice", "--version");
	CONFIG_SEED("unknown-and-stray", "sluice", "--queue", "q", "-x", "--bogus", "stray");
	CONFIG_SEED("abbreviated", "sluice", "--que", "q", "--batch-b", "1M", "--until");
}

/* ---- findings --------------------------------------------------------------- */

/* Inputs that made a target fail on a sluice bug now fixed: seeds, so that
 * every run checks they stay fixed. */
static void gen_regressions(void)
{
	/* A content header whose class is not basic (60): rabbitmq-c decodes it
	 * into a small amqp_connection_properties_t, conn.c handed it on as
	 * amqp_basic_properties_t, and env_row_props read fields past its end:
	 * stale pool memory, here a previous body's bytes, as lengths and
	 * pointers (SEGV reading address 0x10). */
	struct buf s = {0};
	static uint8_t body[201];
	for (size_t i = 1; i < sizeof(body); i += 8)
		body[i] = 0x10; /* each aligned pool word reads as 0x10 */
	amqp_basic_properties_t none = {0};
	put_deliver(&s, 1, "", "q");
	put_content(&s, 1, &none, body, sizeof(body), 131072);
	put_deliver(&s, 2, "", "q");
	static const uint8_t hdr10[] = {AMQP_FRAME_HEADER, 0, 1, 0, 0, 0, 14, 0, 10, 0, 0,
					0, 0, 0, 0, 0, 0, 0, 5, 0xff, 0xfc, AMQP_FRAME_END};
	buf_put(&s, hdr10, sizeof(hdr10));
	put_body(&s, 1, "hello", 5, 131072);
	amqp_seed("regress-content-header-class-10", 0, 0, &s);
	buf_free(&s);

	/* A raw '?' in the password: mq_url_parse cut the query there, and the
	 * error text quoted the "parameter", the rest of the password. */
	CONFIG_SEED("regress-url-password-with-question-mark",
		    "amqp://guest:2023?pr0d-S\xc3\xa9" "cret@rabbit:5672/");
	/* A '"' in a DSN's password: pg_dsn_check hid libpq's quoted token by
	 * toggling at each '"', and the password's own quote turned it back on. */
	CONFIG_SEED("regress-dsn-password-with-quote", "sluice", "--queue", "q", "--postgres-dsn",
		    "postgresql://u:se\"cr\xc3\xa9" "t%zz@h/db");
	/* An argument "-xy": config_load set optind = 1, glibc kept its pointer
	 * at "y" and the next load read it, from an argv that may be freed:
	 * the same input failed differently the second time. */
	CONFIG_SEED("regress-getopt-state-kept", "sluice", "--queue", "q", "-xy");
	/* A mistyped flag: "--rabbitmq_url=URL: unknown option" quoted the
	 * whole argument, password included. */
	CONFIG_SEED("regress-flag-typo-echoes-url", "sluice", "--queue", "q",
		    "--rabbitmq_url=amqp://u:S\xc3\xa9" "cret@h/");
	/* A URL given without its flag: "unexpected argument 'URL'". */
	CONFIG_SEED("regress-stray-url-echoed", "sluice", "--queue", "q",
		    "amqp://guest:p\xc3\xa4ssw\xc3\xb6rd@h/");
	/* A flag with a secret pasted into the same argument, no '=': the
	 * unknown-option error quoted all of it. */
	CONFIG_SEED("regress-flag-with-pasted-secret", "sluice", "--queue", "q",
		    "--pw S\xc3\xa9" "cretpass");
	/* (A check that was wrong, not sluice.) Password bytes equal to the
	 * user's tail, then '@': the redacted "user@host" matched a window of
	 * the password across the '@'. */
	CONFIG_SEED("regress-redacted-boundary",
		    "amqp://al\xc5\xc5\xc5\xc5\xc5\xc5:56\xc5\xc5\xc5\xc5%40t@");
	/* Password bytes after a raw '?': the "unsupported/valueless query
	 * parameter" errors quoted them. */
	CONFIG_SEED("regress-query-name-echoed",
		    "amqp://u:p\xfe\xff\xff\xff\xff@h/?\xfe\xff\xff\xff\xff");
	/* A URL given as a numeric option's value: the error quoted it. */
	CONFIG_SEED("regress-value-echoed", "sluice", "--queue", "q", "--batch-bytes",
		    "postgresql://u:Wr0ng\xc3\xa9" "pass@h/db");
}

/* Inputs that make a target fail on a sluice bug not fixed yet:
 * tests/fuzz/crashes/, run by run.sh --repro (see the README there). */
static void gen_crashes(void)
{
	/* None open. A new finding's input goes here until it is fixed. */
}

int main(int argc, char **argv)
{
	bool crashes = argc == 3 && strcmp(argv[1], "--crashes") == 0;
	if (argc != 2 && !crashes) {
		fprintf(stderr, "usage: gen_seeds [--crashes] DIR\n");
		return 2;
	}
	outdir = argv[argc - 1];
	if (crashes) {
		gen_crashes();
		printf("gen_seeds: wrote %d reproducers under %s\n", written, outdir);
		return 0;
	}
	build_tables();
	gen_amqp_input();
	gen_row();
	gen_config();
	gen_regressions();
	printf("gen_seeds: wrote %d seeds under %s\n", written, outdir);
	return 0;
}
