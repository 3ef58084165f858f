/* The frame writer against rabbitmq-c's decoder: every method sluice sends
 * must decode to the same fields, and frames split at any byte boundary
 * must decode the same as whole ones. */
#include <amqp.h>
#include <amqp_framing.h>
#include <stdlib.h>

#include "amqp/frame.h"
#include "check.h"

/* Decode exactly one frame from p[0..n), feeding `step` bytes at a time. */
static int decode_one(amqp_connection_state_t codec, const uint8_t *p, size_t n, size_t step,
		      amqp_frame_t *f)
{
	size_t off = 0;
	int frames = 0;
	while (off < n) {
		size_t len = n - off < step ? n - off : step;
		amqp_bytes_t in = {.len = len, .bytes = (void *)(p + off)};
		int rc = amqp_handle_input(codec, in, f);
		if (rc < 0)
			return rc;
		off += (size_t)rc;
		if (f->frame_type != 0)
			frames++;
	}
	return frames;
}

static void test_ack(size_t step)
{
	struct buf out = {0};
	amqp_basic_ack_t ack = {.delivery_tag = 0x0102030405060708ULL, .multiple = 1};
	CHECK(mqf_method(&out, 1, AMQP_BASIC_ACK_METHOD, &ack) == 0);
	CHECK(out.len == 7 + 4 + 9 + 1);
	CHECK(out.data[0] == AMQP_FRAME_METHOD && out.data[out.len - 1] == AMQP_FRAME_END);

	amqp_connection_state_t codec = amqp_new_connection();
	amqp_frame_t f;
	CHECK(decode_one(codec, out.data, out.len, step, &f) == 1);
	CHECK(f.frame_type == AMQP_FRAME_METHOD);
	CHECK(f.channel == 1);
	CHECK(f.payload.method.id == AMQP_BASIC_ACK_METHOD);
	amqp_basic_ack_t *got = f.payload.method.decoded;
	CHECK(got->delivery_tag == ack.delivery_tag);
	CHECK(got->multiple == 1);
	amqp_destroy_connection(codec);
	buf_free(&out);
}

static void test_sequence(void)
{
	/* Several frames back to back, as one send would carry them. */
	struct buf out = {0};
	amqp_basic_qos_t qos = {.prefetch_count = 4000};
	amqp_basic_consume_t consume = {.queue = amqp_cstring_bytes("events.v1"),
					.consumer_tag = amqp_empty_bytes};
	amqp_table_entry_t e = {.key = amqp_cstring_bytes("product"),
				.value = {.kind = AMQP_FIELD_KIND_UTF8,
					  .value.bytes = amqp_cstring_bytes("sluice")}};
	amqp_connection_start_ok_t start_ok = {
		.client_properties = {.num_entries = 1, .entries = &e},
		.mechanism = amqp_cstring_bytes("PLAIN"),
		.response = {.len = 11, .bytes = "\0guest\0pass"},
		.locale = amqp_cstring_bytes("en_US"),
	};
	CHECK(mqf_method(&out, 0, AMQP_CONNECTION_START_OK_METHOD, &start_ok) == 0);
	CHECK(mqf_method(&out, 1, AMQP_BASIC_QOS_METHOD, &qos) == 0);
	CHECK(mqf_method(&out, 1, AMQP_BASIC_CONSUME_METHOD, &consume) == 0);
	mqf_heartbeat(&out);

	amqp_connection_state_t codec = amqp_new_connection();
	amqp_bytes_t in = {.len = out.len, .bytes = out.data};
	amqp_method_number_t ids[4] = {0};
	int types[4] = {0}, n = 0;
	while (in.len > 0 && n < 4) {
		amqp_frame_t f;
		int rc = amqp_handle_input(codec, in, &f);
		CHECK(rc > 0);
		if (rc <= 0)
			break;
		in.bytes = (uint8_t *)in.bytes + rc;
		in.len -= (size_t)rc;
		if (f.frame_type == 0)
			continue;
		types[n] = f.frame_type;
		if (f.frame_type == AMQP_FRAME_METHOD) {
			ids[n] = f.payload.method.id;
			if (ids[n] == AMQP_CONNECTION_START_OK_METHOD) {
				amqp_connection_start_ok_t *s = f.payload.method.decoded;
				CHECK(s->response.len == 11);
				CHECK(memcmp(s->response.bytes, "\0guest\0pass", 11) == 0);
				CHECK(s->client_properties.num_entries == 1);
			}
			if (ids[n] == AMQP_BASIC_QOS_METHOD)
				CHECK(((amqp_basic_qos_t *)f.payload.method.decoded)->prefetch_count ==
				      4000);
			if (ids[n] == AMQP_BASIC_CONSUME_METHOD) {
				amqp_basic_consume_t *c = f.payload.method.decoded;
				CHECK(c->queue.len == 9 && memcmp(c->queue.bytes, "events.v1", 9) == 0);
				CHECK(c->no_ack == 0);
			}
		}
		n++;
	}
	CHECK(n == 4);
	CHECK(ids[0] == AMQP_CONNECTION_START_OK_METHOD);
	CHECK(ids[1] == AMQP_BASIC_QOS_METHOD);
	CHECK(ids[2] == AMQP_BASIC_CONSUME_METHOD);
	CHECK(types[3] == AMQP_FRAME_HEARTBEAT);
	amqp_destroy_connection(codec);
	buf_free(&out);
}

static void test_protocol_header(void)
{
	struct buf out = {0};
	mqf_protocol_header(&out);
	CHECK(out.len == 8);
	CHECK(memcmp(out.data, "AMQP\0\0\x09\x01", 8) == 0);
	buf_free(&out);
}

int main(void)
{
	for (size_t step = 1; step <= 64; step *= 2)
		test_ack(step);
	test_sequence();
	test_protocol_header();
	return check_done("test_frame");
}
