/* Fuzz target: the row encoder from arbitrary message properties. The input
 * is decoded by rabbitmq-c as sluice receives it, then rendered by
 * env_row_props (the envelope columns) and json_table (the headers).
 *
 * Input: byte 0 picks the mode: bit 0 clear = basic properties
 * (amqp_decode_properties(AMQP_BASIC_CLASS), the bytes of a content header
 * frame after its class, weight and body size), bit 0 set = one field table
 * (amqp_decode_table: a 4-byte length, then entries); (byte 0 >> 1) % 3 is
 * the body type. Inputs rabbitmq-c rejects are not sluice's to handle.
 *
 * Checks: the row is one well-formed tuple prefix of the right columns;
 * message id and content type are the decoded bytes; the headers column and
 * every json_table output are one JSON value that PostgreSQL's jsonb
 * accepts: strict JSON syntax, valid UTF-8, no NUL byte, no \u0000, no
 * unpaired surrogate escape; an object with as many members as entries. */
#include <amqp.h>
#include <amqp_framing.h>

#include "fuzz_common.h"
#include "pg/deadletter.h"
#include "row/copybin.h"

/* Members of the top-level JSON object (valid JSON, checked already). */
static int json_members(const uint8_t *p, size_t n)
{
	int depth = 0, members = 0;
	bool in_str = false, empty = true;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = p[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = false;
			continue;
		}
		if (c == '"') {
			in_str = true;
			if (depth == 1)
				empty = false;
		} else if (c == '{' || c == '[') {
			depth++;
			if (depth > 1)
				empty = false;
		} else if (c == '}' || c == ']') {
			depth--;
		} else if (c == ',' && depth == 1) {
			members++;
		} else if (depth == 1 && c != ' ' && c != ':') {
			empty = false;
		}
	}
	return empty ? 0 : members + 1;
}

static void check_table_json(const amqp_table_t *t)
{
	struct buf out = {0};
	json_table(&out, t);
	FUZZ_CHECK_JSON(out.data, out.len);
	FUZZ_CHECK(out.len >= 2 && out.data[0] == '{', "not an object");
	FUZZ_CHECK(json_members(out.data, out.len) == t->num_entries,
		   "object has %d members for %d entries", json_members(out.data, out.len),
		   t->num_entries);
	buf_free(&out);
}

static void check_str_field(const struct fuzz_field *f, const amqp_basic_properties_t *p,
			    amqp_flags_t flag, amqp_bytes_t v, const char *name)
{
	if (!(p->_flags & flag)) {
		FUZZ_CHECK(f->len == -1, "%s: absent but not NULL", name);
		return;
	}
	FUZZ_CHECK(f->len >= 0 && (size_t)f->len == v.len, "%s: length %d for %zu bytes", name,
		   f->len, v.len);
	FUZZ_CHECK(v.len == 0 || memcmp(f->data, v.bytes, v.len) == 0, "%s: bytes differ", name);
}

/* The dead-letter row of that row: PostgreSQL must accept every text field
 * (valid UTF-8, no NUL) and the body must be the message's bytes. */
static void check_dead_letter(const uint8_t *row, size_t n, enum body_type bt)
{
	static const int text_cols[] = {0, 1, 2, 3, 4, 8, 9, 10};
	struct config cfg = {.queue = "q\xff", .table = "t", .body_type = bt};
	struct buf dl = {0};
	dl_row(&dl, &cfg, row, n, "22P02", "why \xc3\x00", 0);
	struct cbin_field f[DL_NCOLS];
	int nf = 0;
	FUZZ_CHECK(cbin_read_tuple(dl.data, dl.len, f, DL_NCOLS, &nf) == dl.len && nf == DL_NCOLS,
		   "dead-letter row is not one tuple of %d fields", DL_NCOLS);
	for (size_t i = 0; i < sizeof(text_cols) / sizeof(text_cols[0]); i++) {
		const struct cbin_field *t = &f[text_cols[i]];
		if (!t->data)
			continue;
		FUZZ_CHECK(json_utf8_valid_prefix(t->data, t->len) == t->len &&
				   !memchr(t->data, 0, t->len),
			   "dead-letter text field %d is not valid UTF-8 without NUL", text_cols[i]);
	}
	FUZZ_CHECK(f[7].len == 2 && memcmp(f[7].data, "{}", 2) == 0, "dead-letter body differs");
	buf_free(&dl);
}

static void fuzz_props(const uint8_t *data, size_t size, enum body_type bt, amqp_pool_t *pool)
{
	amqp_bytes_t in = {.len = size, .bytes = (void *)data};
	void *decoded = NULL;
	if (amqp_decode_properties(AMQP_BASIC_CLASS, pool, in, &decoded) < 0)
		return;
	const amqp_basic_properties_t *p = decoded;

	/* A row as a shard writes it: begin, props, then the body bytes. */
	static const uint8_t body[3] = {'{', '}', 0};
	struct buf b = {0};
	env_row_begin(&b, ENV_NCOLS, amqp_cstring_bytes("ex"), amqp_empty_bytes);
	env_row_props(&b, p, 2, bt, 1700000000000000);
	buf_put(&b, body, 2);

	struct fuzz_field f[ENV_NCOLS];
	const char *why = NULL;
	size_t n = fuzz_tuple(b.data, b.len, f, &why);
	FUZZ_CHECK(n == b.len, "row is not one tuple: %s", why ? why : "trailing bytes");
	fuzz_check_row(f, bt);
	check_str_field(&f[2], p, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id, "message_id");
	check_str_field(&f[3], p, AMQP_BASIC_CONTENT_TYPE_FLAG, p->content_type, "content_type");
	FUZZ_CHECK((f[4].len != -1) == !!(p->_flags & AMQP_BASIC_HEADERS_FLAG), "headers NULL");
	if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
		check_table_json(&p->headers);
	if ((p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) && p->timestamp < (1ull << 40))
		FUZZ_CHECK(f[5].len == 8, "a plausible timestamp stored as NULL");
	FUZZ_CHECK(f[7].len == 2 + (bt == BODY_JSONB), "body length word");
	check_dead_letter(b.data, b.len, bt);
	buf_free(&b);
}

static void fuzz_table(const uint8_t *data, size_t size, amqp_pool_t *pool)
{
	amqp_bytes_t in = {.len = size, .bytes = (void *)data};
	amqp_table_t t;
	size_t offset = 0;
	if (amqp_decode_table(in, pool, &t, &offset) < 0)
		return;
	check_table_json(&t);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	fuzz_save_stderr();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t mode = data[0];
	amqp_pool_t pool;
	init_amqp_pool(&pool, 4096);
	if (mode & 1)
		fuzz_table(data + 1, size - 1, &pool);
	else
		fuzz_props(data + 1, size - 1, (enum body_type)((mode >> 1) % 3), &pool);
	empty_amqp_pool(&pool);
	return 0;
}
