/* Envelope rows in binary COPY form; see envelope.h. The column list here
 * is the single definition used by table creation, introspection and the
 * COPY statement. */
#include "row/envelope.h"

#include "row/copybin.h"
#include "row/json.h"

const struct column_def env_columns[ENV_NCOLS] = {
	{"exchange", {"text", "character varying"}, NULL},
	{"routing_key", {"text", "character varying"}, NULL},
	{"message_id", {"text", "character varying"}, NULL},
	{"content_type", {"text", "character varying"}, NULL},
	{"headers", {"jsonb"}, NULL},
	{"published_at", {"timestamp with time zone"}, NULL},
	{"ingested_at", {"timestamp with time zone"}, "NOT NULL DEFAULT now()"},
	{"body", {NULL}, NULL},
};

const struct column_def env_dedupe_column = {
	"dedupe_key", {"text", "character varying"}, "UNIQUE"};


void env_row_begin(struct buf *b, uint16_t ncols, amqp_bytes_t exchange,
		   amqp_bytes_t routing_key)
{
	cbin_tuple(b, ncols);
	cbin_bytes(b, exchange.bytes, exchange.len);
	cbin_bytes(b, routing_key.bytes, routing_key.len);
}

static void env_optional_str(struct buf *b, const amqp_basic_properties_t *p,
			     amqp_flags_t flag, amqp_bytes_t v)
{
	if (p->_flags & flag)
		cbin_bytes(b, v.bytes, v.len);
	else
		cbin_null(b);
}

bool env_row_props(struct buf *b, const amqp_basic_properties_t *p, uint64_t body_size,
		   enum body_type bt, int64_t now_us)
{
	env_optional_str(b, p, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id);
	env_optional_str(b, p, AMQP_BASIC_CONTENT_TYPE_FLAG, p->content_type);

	if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
		/* jsonb binary input: a version byte (1), then JSON text. */
		size_t at = cbin_open(b);
		buf_put_u8(b, 1);
		json_table(b, &p->headers);
		cbin_close(b, at);
	} else {
		cbin_null(b);
	}

	/* A timestamp too large to express in microseconds is garbage, not a
	 * time: store it as unknown rather than overflow. */
	if ((p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) && p->timestamp <= INT64_MAX / 1000000)
		cbin_timestamptz(b, (int64_t)p->timestamp * 1000000);
	else
		cbin_null(b);
	cbin_timestamptz(b, now_us);

	if (body_size > ENV_BODY_MAX) {
		cbin_null(b);
		return false;
	}
	if (bt == BODY_JSONB) {
		buf_put_u32(b, (uint32_t)body_size + 1);
		buf_put_u8(b, 1);
	} else {
		buf_put_u32(b, (uint32_t)body_size);
	}
	return true;
}
