/* Fuzz target: the AMQP input path as a shard drives it. Bytes from "the
 * broker" go through mq_input() on a connection in state MQ_CONSUMING (set
 * up as tests/unit/test_consume.c does), with handlers that stream each
 * message into a COPY buffer exactly as src/shard.c does: env_row_begin on
 * the deliver, env_row_props on the content header, buf_put per body frame.
 *
 * Input: byte 0 picks the body type (value % 3: bytea, jsonb, text) and
 * byte 1 the size of the pieces the rest is fed in (0 = all at once, as a
 * recv can split frames anywhere); the rest is the byte stream.
 *
 * Checks: the handler call order (deliver, header, body..., end), body
 * bytes add up to the header's body size, and after every message_end the
 * buffer ends in whole tuples: each one walked field by field, the headers
 * column valid JSON, the body column as long as the body. No crash, leak or
 * undefined behaviour (ASan, UBSan). */
#include <amqp.h>
#include <amqp_framing.h>

#include "amqp/conn.h"
#include "fuzz_common.h"

#define FUZZ_BUF_RESET (4u << 20) /* start over when the batch grows past this */

struct sink {
	struct buf rows;     /* the batch being filled; whole tuples + the open one */
	size_t done;	     /* rows[0..done) are complete tuples */
	enum body_type bt;
	bool in_row, have_header;
	uint64_t body_size, body_got;
	size_t exchange_len, routing_key_len;
	uint64_t messages;
};

static void on_deliver(void *ctx, const amqp_basic_deliver_t *d)
{
	struct sink *s = ctx;
	FUZZ_CHECK(!s->in_row, "deliver inside a message");
	FUZZ_CHECK(s->rows.len == s->done, "bytes after the last whole tuple");
	s->in_row = true;
	s->have_header = false;
	s->exchange_len = d->exchange.len;
	s->routing_key_len = d->routing_key.len;
	env_row_begin(&s->rows, ENV_NCOLS, d->exchange, d->routing_key);
}

static void on_header(void *ctx, const amqp_basic_properties_t *p, uint64_t body_size)
{
	struct sink *s = ctx;
	FUZZ_CHECK(s->in_row && !s->have_header, "content header outside a delivery");
	s->have_header = true;
	s->body_size = body_size;
	s->body_got = 0;
	env_row_props(&s->rows, p, body_size, s->bt, 1700000000000000);
}

static void on_body(void *ctx, const void *bytes, size_t len)
{
	struct sink *s = ctx;
	FUZZ_CHECK(s->in_row && s->have_header, "body outside a message");
	FUZZ_CHECK(len <= s->body_size - s->body_got, "more body than the header said");
	s->body_got += len;
	buf_put(&s->rows, bytes, len);
}

static void on_end(void *ctx)
{
	struct sink *s = ctx;
	FUZZ_CHECK(s->in_row && s->have_header, "message end outside a message");
	FUZZ_CHECK(s->body_got == s->body_size, "body %llu bytes, header said %llu",
		   (unsigned long long)s->body_got, (unsigned long long)s->body_size);

	/* The new tuple, walked: exactly the bytes since the last one. */
	struct fuzz_field f[ENV_NCOLS];
	const char *why = NULL;
	size_t n = fuzz_tuple(s->rows.data + s->done, s->rows.len - s->done, f, &why);
	FUZZ_CHECK(n != 0, "row is not a tuple: %s", why);
	FUZZ_CHECK(n == s->rows.len - s->done, "row has %zu bytes, the tuple %zu",
		   s->rows.len - s->done, n);
	FUZZ_CHECK((size_t)f[0].len == s->exchange_len, "exchange length");
	FUZZ_CHECK((size_t)f[1].len == s->routing_key_len, "routing key length");
	fuzz_check_row(f, s->bt);
	FUZZ_CHECK((uint64_t)f[7].len == s->body_size + (s->bt == BODY_JSONB),
		   "body column %d bytes for a %llu-byte body", f[7].len,
		   (unsigned long long)s->body_size);

	s->done = s->rows.len;
	s->in_row = false;
	s->messages++;
	if (s->rows.len > FUZZ_BUF_RESET) { /* the shard would flush here */
		buf_reset(&s->rows);
		s->done = 0;
	}
}

static void on_depth(void *ctx, uint32_t ready) { (void)ctx, (void)ready; }

/* Every complete tuple in rows[0..done), walked from the start. */
static void check_batch(const struct sink *s)
{
	size_t off = 0;
	while (off < s->done) {
		struct fuzz_field f[ENV_NCOLS];
		const char *why = NULL;
		size_t n = fuzz_tuple(s->rows.data + off, s->done - off, f, &why);
		FUZZ_CHECK(n != 0, "batch tuple at %zu: %s", off, why);
		off += n;
	}
	FUZZ_CHECK(off == s->done, "batch walk ends at %zu, not %zu", off, s->done);
}

static struct sink sink;

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
	if (size < 2)
		return 0;
	struct sink *s = &sink;
	buf_reset(&s->rows);
	s->done = 0;
	s->in_row = s->have_header = false;
	s->bt = (enum body_type)(data[0] % 3);
	size_t step = data[1] ? data[1] : SIZE_MAX;
	data += 2, size -= 2;

	struct mq m = {.state = MQ_CONSUMING, .fd = -1};
	m.codec = amqp_new_connection();
	FUZZ_CHECK(m.codec, "amqp_new_connection");
	m.p.queue = "q";
	m.h = (struct mq_handler){s, on_deliver, on_header, on_body, on_end, on_depth};

	bool ok = true;
	for (size_t off = 0; ok && off < size;) {
		size_t n = size - off < step ? size - off : step;
		ok = mq_input(&m, data + off, n);
		off += n;
	}
	FUZZ_CHECK(ok == (m.state != MQ_FAILED), "mq_input result %d in state %s", ok,
		   mq_state_name(m.state));
	FUZZ_CHECK(m.state == MQ_CONSUMING || m.state == MQ_CANCELLED || m.state == MQ_FAILED,
		   "state %s after input in consuming", mq_state_name(m.state));
	FUZZ_CHECK(!ok || s->in_row == (m.content != MQ_CONTENT_NONE),
		   "sink and connection disagree on an open message");
	check_batch(s);

	mq_free(&m); /* the codec, the out buffer (acks, close-oks) */
	return 0;
}
