/* The envelope mapping: one message becomes one row of fixed columns
 * (exchange, routing key, message id, content type, headers, timestamps,
 * body). Rows are streamed into the COPY batch as the frames arrive: the
 * deliver method, then the content header, then the body fragments. */
#ifndef SLUICE_ROW_ENVELOPE_H
#define SLUICE_ROW_ENVELOPE_H

#include <amqp.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"

#define ENV_NCOLS 8

struct env_column {
	const char *name;
	/* Types PostgreSQL accepts for this column in binary COPY, as
	 * format_type() spells them; the first is what we create. NULL for the
	 * body column, whose type follows --body-type. */
	const char *types[3];
};

extern const struct env_column env_columns[ENV_NCOLS];

/* The SQL type of column i under body type bt. */
const char *env_column_type(int i, enum body_type bt);

/* Deliver method: starts the tuple with exchange and routing key. */
void env_row_begin(struct buf *b, amqp_bytes_t exchange, amqp_bytes_t routing_key);
/* Content header: the remaining columns up to and including the body's
 * length word (and jsonb's version byte); the body bytes follow as they
 * arrive. now_us is the ingest time, Unix microseconds. */
void env_row_props(struct buf *b, const amqp_basic_properties_t *p, uint64_t body_size,
		   enum body_type bt, int64_t now_us);

#endif
