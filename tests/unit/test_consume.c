/* The AMQP input path as a shard drives it: bytes from the broker, split at
 * arbitrary points, through mq_input to deliveries, content headers and
 * reassembled bodies; out-of-order content is a protocol error. */
#include <amqp.h>
#include <amqp_framing.h>
#include <stdlib.h>

#include "amqp/conn.h"
#include "amqp/frame.h"
#include "check.h"

struct seen {
	int messages;
	uint64_t tags[8];
	char ids[8][16];
	struct buf bodies[8];
	uint64_t sizes[8];
	uint32_t depth;
	int in_message;
};

static void on_deliver(void *ctx, const amqp_basic_deliver_t *d)
{
	struct seen *s = ctx;
	CHECK(!s->in_message);
	s->in_message = 1;
	s->tags[s->messages] = d->delivery_tag;
}

static void on_header(void *ctx, const amqp_basic_properties_t *p, uint64_t size)
{
	struct seen *s = ctx;
	s->sizes[s->messages] = size;
	if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
		snprintf(s->ids[s->messages], 16, "%.*s", (int)p->message_id.len,
			 (const char *)p->message_id.bytes);
}

static void on_body(void *ctx, const void *b, size_t n)
{
	struct seen *s = ctx;
	buf_put(&s->bodies[s->messages], b, n);
}

static void on_end(void *ctx)
{
	struct seen *s = ctx;
	s->in_message = 0;
	s->messages++;
}

static void on_depth(void *ctx, uint32_t ready) { ((struct seen *)ctx)->depth = ready; }

/* A content header frame and body frames as the broker sends them (AMQP
 * 0-9-1 section 4.2.6); bodies split at frame_max. */
static void put_content(struct buf *out, const amqp_basic_properties_t *p, const void *body,
			size_t len, size_t frame_max)
{
	uint8_t props[512];
	int n = amqp_encode_properties(AMQP_BASIC_CLASS, (void *)p,
				       (amqp_bytes_t){.len = sizeof(props), .bytes = props});
	CHECK(n >= 0);
	buf_put_u8(out, AMQP_FRAME_HEADER);
	buf_put_u16(out, 1);
	buf_put_u32(out, 12 + (uint32_t)n);
	buf_put_u16(out, AMQP_BASIC_CLASS);
	buf_put_u16(out, 0);
	buf_put_u64(out, len);
	buf_put(out, props, (size_t)n);
	buf_put_u8(out, AMQP_FRAME_END);
	for (size_t off = 0; off < len;) {
		size_t chunk = len - off < frame_max - 8 ? len - off : frame_max - 8;
		buf_put_u8(out, AMQP_FRAME_BODY);
		buf_put_u16(out, 1);
		buf_put_u32(out, (uint32_t)chunk);
		buf_put(out, (const uint8_t *)body + off, chunk);
		buf_put_u8(out, AMQP_FRAME_END);
		off += chunk;
	}
}

static void put_deliver(struct buf *out, uint64_t tag)
{
	amqp_basic_deliver_t d = {.consumer_tag = amqp_cstring_bytes("ctag"),
				  .delivery_tag = tag,
				  .exchange = amqp_empty_bytes,
				  .routing_key = amqp_cstring_bytes("q")};
	CHECK(mqf_method(out, 1, AMQP_BASIC_DELIVER_METHOD, &d) == 0);
}

static void new_mq(struct mq *m, struct seen *s)
{
	*m = (struct mq){.state = MQ_CONSUMING, .fd = -1};
	m->codec = amqp_new_connection();
	m->p.queue = "q";
	m->h = (struct mq_handler){s, on_deliver, on_header, on_body, on_end, on_depth};
}

static void test_stream(size_t step)
{
	struct buf in = {0};
	static uint8_t big[3000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7);

	amqp_basic_properties_t p1 = {._flags = AMQP_BASIC_MESSAGE_ID_FLAG,
				      .message_id = amqp_cstring_bytes("m1")};
	amqp_basic_properties_t none = {0};
	put_deliver(&in, 1);
	put_content(&in, &p1, big, sizeof(big), 1024); /* three body frames */
	put_deliver(&in, 2);
	put_content(&in, &none, NULL, 0, 1024); /* empty body: no body frame */
	mqf_heartbeat(&in);
	put_deliver(&in, 3);
	put_content(&in, &none, "a\0b", 3, 1024);
	amqp_queue_declare_ok_t ok = {.queue = amqp_cstring_bytes("q"), .message_count = 7};
	CHECK(mqf_method(&in, 1, AMQP_QUEUE_DECLARE_OK_METHOD, &ok) == 0);

	struct seen s = {0};
	struct mq m;
	new_mq(&m, &s);
	for (size_t off = 0; off < in.len; off += step) {
		size_t n = in.len - off < step ? in.len - off : step;
		CHECK(mq_input(&m, in.data + off, n));
	}
	CHECK(s.messages == 3);
	CHECK(s.tags[0] == 1 && s.tags[1] == 2 && s.tags[2] == 3);
	CHECK_STR(s.ids[0], "m1");
	CHECK(s.sizes[0] == sizeof(big) && s.bodies[0].len == sizeof(big));
	CHECK(s.bodies[0].len == sizeof(big) && memcmp(s.bodies[0].data, big, sizeof(big)) == 0);
	CHECK(s.sizes[1] == 0 && s.bodies[1].len == 0);
	CHECK(s.bodies[2].len == 3 && memcmp(s.bodies[2].data, "a\0b", 3) == 0);
	CHECK(s.depth == 7);
	CHECK(m.state == MQ_CONSUMING);
	for (int i = 0; i < 8; i++)
		buf_free(&s.bodies[i]);
	amqp_destroy_connection(m.codec);
	buf_free(&in);
}

static void test_errors(void)
{
	struct seen s = {0};
	struct mq m;
	struct buf in = {0};

	/* Content without a delivery. */
	amqp_basic_properties_t none = {0};
	put_content(&in, &none, "x", 1, 1024);
	new_mq(&m, &s);
	CHECK(!mq_input(&m, in.data, in.len));
	CHECK(m.state == MQ_FAILED);
	amqp_destroy_connection(m.codec);

	/* A content header of another class than basic (found by fuzzing:
	 * its properties are not an amqp_basic_properties_t). */
	buf_reset(&in);
	put_deliver(&in, 1);
	buf_put_u8(&in, AMQP_FRAME_HEADER);
	buf_put_u16(&in, 1);
	buf_put_u32(&in, 14);
	buf_put_u16(&in, 10); /* connection class */
	buf_put_u16(&in, 0);
	buf_put_u64(&in, 0);
	buf_put_u16(&in, 0); /* no property flags */
	buf_put_u8(&in, AMQP_FRAME_END);
	new_mq(&m, &s);
	CHECK(!mq_input(&m, in.data, in.len));
	CHECK(m.state == MQ_FAILED && strstr(m.reason, "class 10"));
	amqp_destroy_connection(m.codec);

	/* Garbage: a frame without its frame-end octet. */
	static const uint8_t junk[] = {1, 0, 1, 0, 0, 0, 4, 0, 60, 0, 80, 0x00};
	new_mq(&m, &s);
	CHECK(!mq_input(&m, junk, sizeof(junk)));
	CHECK(m.state == MQ_FAILED);
	amqp_destroy_connection(m.codec);

	/* A broker's channel.close names the cause in the reason. */
	buf_reset(&in);
	amqp_channel_close_t c = {.reply_code = 404,
				  .reply_text = amqp_cstring_bytes("NOT_FOUND - no queue 'q'")};
	CHECK(mqf_method(&in, 1, AMQP_CHANNEL_CLOSE_METHOD, &c) == 0);
	new_mq(&m, &s);
	CHECK(!mq_input(&m, in.data, in.len));
	CHECK(strstr(m.reason, "no queue 'q'") && strstr(m.reason, "SLUICE_QUEUE"));
	CHECK(m.out.len > 0); /* channel.close-ok queued */
	buf_free(&m.out);
	amqp_destroy_connection(m.codec);
	buf_free(&in);
}

int main(void)
{
	static const size_t steps[] = {1, 3, 7, 64, 1000, 1 << 20};
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
		test_stream(steps[i]);
	test_errors();
	return check_done("test_consume");
}
